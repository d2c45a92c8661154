"""Command-line plumbing shared by every entry point: one-line errors with exit
status 2, output paths checked before the long work, TensorFlow's start-up noise kept
off stderr, and progress lines for anything that takes more than a few seconds."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import time
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or options. Its message is one line that
    names the file, the field and what was expected."""


def run_cli(main):
    """Wrap a `main(argv) -> int|None`: a UserError becomes `error: <message>` on
    stderr and exit status 2, never a traceback; a reader that stops early (`| head`)
    ends the program quietly."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            code = main(argv)
            sys.stdout.flush()  # here, so a closed pipe is caught below rather than at exit
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except BrokenPipeError:
            if not _stdout_reader_gone():  # another pipe (a child process): a real failure
                raise
            # nothing more can be shown; stdout to /dev/null, so that the interpreter's
            # final flush does not complain either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        raise SystemExit(code or 0)

    return wrapper


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


# -- output paths -----------------------------------------------------------------------

def check_output_file(path, option: str) -> None:
    """Refuse, before any long work, an output file that could not be written: a folder
    in its place, a file where a folder above it should be, or a folder that is not
    writable (read-only, or a read-only file system)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: {option}: is a folder; expected a file name")
    _check_writable_folder(path.parent, path, option)


def check_output_folder(path, option: str, *, replaced: bool = False) -> None:
    """Refuse, before any long work, an output folder that could not be written: a file
    in its place, a file where a folder above it should be, or a folder that is not
    writable. `replaced`: the folder is written beside itself and renamed into place
    (so its parent must be writable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: {option}: is a file, not a folder; expected a folder")
    _check_writable_folder(path if path.is_dir() and not replaced else path.parent, path, option)


def check_distinct_outputs(option_paths: dict) -> None:
    """Refuse two outputs naming the same file ({option: path}): the second would
    silently overwrite the first."""
    seen = {}
    for option, path in option_paths.items():
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise UserError(f"{path}: {option}: the same file as {seen[key]}; expected two different paths")
        seen[key] = option


def _check_writable_folder(folder: Path, path: Path, option: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:  # created when written
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{path}: {option}: {existing} is a file, not a folder; expected a path whose "
                        f"folders are folders")
    try:  # a real write: permission bits do not tell root about a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".bloodcells_write_check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{path}: {option}: cannot write in {existing} ({exc.strerror or exc}); "
                        f"expected a writable folder") from None


# -- TensorFlow's start-up lines ---------------------------------------------------------

# What TensorFlow's native libraries print while they load (absl INFO/WARNING lines,
# which TF_CPP_MIN_LOG_LEVEL does not reach there, and CUDA plugin registrations).
_STARTUP_NOISE = re.compile(r"^(?:[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] |"
                            r"WARNING: All log messages before absl::InitializeLog\(\) is called|"
                            r"To enable the following instructions: |"
                            r"E\d{4} .*Unable to register cu\w+ factory)")


def quiet_tensorflow_startup() -> None:
    """Keep TensorFlow's start-up log lines (oneDNN, CPU features, CUDA plugins) off
    stderr, so a program's first line is its own: TF_CPP_MIN_LOG_LEVEL for what
    TensorFlow logs later, and a filter on the native stderr while `import tensorflow`
    runs, for what its libraries print while they load (anything else printed then is
    passed on). A TF_CPP_MIN_LOG_LEVEL the user set below 2 turns both off."""
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2") not in ("2", "3"):
        return
    if any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())


class _QuietTensorFlowImport:
    """A meta-path finder that only wraps the loading of the `tensorflow` package."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        import importlib.util

        sys.meta_path.remove(self)  # once: the real finders resolve it
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            with _native_stderr_filtered():
                load(module)

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def _native_stderr_filtered():
    """File descriptor 2 (where native libraries print) captured while the block runs,
    then replayed without the start-up noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _STARTUP_NOISE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


# -- progress ------------------------------------------------------------------------------

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
