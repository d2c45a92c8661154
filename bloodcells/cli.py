"""Command-line plumbing shared by every entry point: one-line errors with exit
status 2, and progress lines for anything that takes more than a few seconds."""

from __future__ import annotations

import functools
import sys
import time


class UserError(Exception):
    """A problem with the user's input or options. Its message is one line that
    names the file, the field and what was expected."""


def run_cli(main):
    """Wrap a `main(argv) -> int|None`: a UserError becomes `error: <message>` on
    stderr and exit status 2, never a traceback."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            code = main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(code or 0)

    return wrapper


class Progress:
    """Prints `label: done/total (pct) elapsed, eta` at most every `every` seconds,
    to stderr so stdout stays clean for results."""

    def __init__(self, total: int, label: str, every: float = 2.0, stream=None):
        self.total = max(int(total), 0)
        self.label = label
        self.every = every
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.last = 0.0
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        if self.total:
            frac = min(self.done / self.total, 1.0)
            eta = elapsed / frac - elapsed if frac > 0 else float("nan")
            print(f"{self.label}: {self.done}/{self.total} ({frac:.0%}) "
                  f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left", file=self.stream, flush=True)
        else:
            print(f"{self.label}: {self.done} {elapsed:.0f}s", file=self.stream, flush=True)
