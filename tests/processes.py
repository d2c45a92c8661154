"""Processes a killed run may leave (test_sandbox, test_local_eval, test_build): find them
by what their command line mentions, wait for a sandbox job's status, SIGKILL a run and
require that nothing of it is left."""

from __future__ import annotations

import os
import signal
import time


def kill_and_expect_no_process(run, temp) -> None:
    """SIGKILL `run` (a Popen) and require that, within 5 s, no process mentioning `temp`
    (the run's temporary folder) is left."""
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 5
    while processes_mentioning(str(temp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(temp)) == []


def wait_for_job_status(run, temp, word: str, seconds: float) -> None:
    """Wait until a sandbox job under `temp` writes a status naming `word` (or `run`, a
    Popen, ends, or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and run.poll() is None:
        if any(f'"{word}"' in p.read_text() for p in temp.glob("bloodcells-*/sandbox_*/io/status.json")):
            return
        time.sleep(0.05)


def processes_mentioning(text: str) -> list:
    """(pid, command line) of the running processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry), cmdline))
    return found
