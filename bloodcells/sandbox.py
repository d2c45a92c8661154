"""Run a submission's `model.py` the way the competition server does, and hand results back.

One runner for every job that must run a submission in isolation: local evaluation
(bloodcells.ingestion), build validation (bloodcells.preflight), --fit-budget timing
(bloodcells.budget) and --select's candidates (bloodcells.ensemble_select). Each run gets a fresh temporary folder, a fresh interpreter (any
Python, e.g. the server-pinned .venv-server), a working directory that is not the
submission folder, `sys.path` with the submission folder first (as Codabench's ingestion
sets it), no PYTHONPATH / PYTHONSTARTUP / user site-packages, and a time limit after which
the process group is killed. Its output goes to a log; its status (a JSON dict) and named
numpy arrays come back through files written atomically (temporary file + os.replace), so
a killed process never leaves a half-written result.

Nothing outlives the caller: the job runs under a small launcher (LAUNCHER) that is the
leader of the job's process group and watches a pipe from the caller. When the caller
dies, however it dies (SIGKILL included), the pipe closes and the launcher kills the whole
group; on Linux the kernel also signals the launcher (PR_SET_PDEATHSIG). Temporary folders
live under one folder per user (temp_root()), named after the process that owns them, and
every run first removes the folders whose owner is gone.

A job is the body of a function (a string) run after PRELUDE, which gives it:
  SUBMISSION          the submission folder (first on sys.path)
  PARAMS              the caller's JSON parameters
  status              a dict; save_status() hands it back (the "stage" names where it is)
  save_array(n, a)    hands back array `a` as `n`
  load_input(n)       the caller's input array `n`
  required_done()     what the time limit is for is finished; the rest gets the overtime
  Stop(code)          raise it to end with an exit code without an error
An exception ends the job with status["error"] ("Type: message") and status["traceback"];
a normal end sets status["stage"] = "done". The job must not import this project: the
interpreter may have only the server's libraries (TF 2.17 / Keras 3.4.1 / numpy<2).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


PRELUDE = r'''
import json, os, sys, time, traceback
SUBMISSION, IO = sys.argv[1], sys.argv[2]
sys.path.insert(0, SUBMISSION)  # as Codabench's ingestion does
with open(os.path.join(IO, "params.json")) as _fh:
    PARAMS = json.load(_fh)
status = {"stage": "start"}


def save_status():
    tmp = os.path.join(IO, ".status.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(status, fh)
    os.replace(tmp, os.path.join(IO, "status.json"))


def save_array(name, array):
    import numpy as np
    tmp = os.path.join(IO, ".out." + name + ".tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, os.path.join(IO, "out." + name + ".npy"))


def load_input(name):
    import numpy as np
    return np.load(os.path.join(IO, "in." + name + ".npy"), allow_pickle=False)


def required_done():
    save_status()
    open(os.path.join(IO, "required_done"), "w").close()


class Stop(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def job():
'''

EPILOGUE = r'''

try:
    save_status()
    job()
    status["stage"] = "done"
    save_status()
except Stop as stop:
    save_status()
    sys.exit(stop.code)
except BaseException as exc:
    status["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
    status["traceback"] = traceback.format_exc()
    save_status()
    traceback.print_exc()
    sys.exit(1)
'''

# The job's parent: the leader of the job's process group, standard library only. It
# starts the job, waits for it and exits with its status; when the pipe from the caller
# closes (the caller died) or the kernel reports the caller's death, it kills the group.
LAUNCHER = r'''
import os, select, signal, subprocess, sys
caller, watch_fd, start_error_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
command = sys.argv[4:]


def kill_group(*_):
    os.killpg(0, signal.SIGKILL)


for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, kill_group)
if sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass  # the pipe still watches the caller
if os.getppid() != caller:  # the caller died before the watch was set up
    kill_group()
try:
    job = subprocess.Popen(command, stdin=subprocess.DEVNULL)
except OSError as exc:
    with open(start_error_file, "w") as fh:
        fh.write(str(exc))
    sys.exit(127)
while job.poll() is None:
    readable, _, _ = select.select([watch_fd], [], [], 0.05)
    if readable and not os.read(watch_fd, 1):  # end of file: the caller is gone
        kill_group()
code = job.returncode
if code < 0:  # killed by a signal: end the same way, so the caller sees it
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
'''

WATCHED = ("submission folder", "working directory")


@dataclass
class SandboxResult:
    status: dict  # the job's last saved status
    arrays: dict = field(default_factory=dict)  # name -> np.ndarray the job handed back
    returncode: int | None = None
    timed_out: bool = False  # killed at the time limit (or after the overtime)
    required_done: bool = False  # the job called required_done() before it ended
    start_error: str | None = None  # the interpreter could not be started
    log: str = ""
    changed: dict = field(default_factory=dict)  # watched place -> files written there
    wall_seconds: float = 0.0

    @property
    def stage(self) -> str:
        return self.status.get("stage", "start-up")

    def error(self) -> str:
        """What went wrong, in one line: the job's error, else the log's last line, else the exit status."""
        return self.status.get("error") or last_line(self.log) or f"exit status {self.returncode}"


def run(submission_folder, job: str, inputs: dict | None = None, *, python: str | None = None,
        time_limit: float, params: dict | None = None, log_path=None, on_wait=None, wait_every: float = 15.0,
        overtime=None, started_at: float | None = None, workdir=None) -> SandboxResult:
    """Run `job` (see the module docstring) on the submission in `submission_folder`.

    `inputs` ({name: array}) are what load_input() reads; `python` is the interpreter
    (default this one); the process group is killed `time_limit` seconds after
    `started_at` (a time.monotonic() value, default now). `overtime(elapsed)` gives the
    extra seconds allowed once the job calls required_done(), `elapsed` seconds in; the
    log goes to `log_path` (else a temporary file); `on_wait(elapsed, stage)` is called
    every `wait_every` seconds while the job runs."""
    start = time.monotonic() if started_at is None else started_at
    folder = Path(submission_folder).resolve()
    with temporary_folder("sandbox", parent=workdir) as root:
        cwd, io = root / "program", root / "io"
        cwd.mkdir()
        io.mkdir()
        script = io / "job.py"
        script.write_text(PRELUDE + textwrap.indent(textwrap.dedent(job).strip("\n"), "    ") + EPILOGUE)
        (io / "params.json").write_text(json.dumps(params or {}))
        for name, array in (inputs or {}).items():
            np.save(io / f"in.{name}.npy", np.asarray(array), allow_pickle=False)
        log_file = Path(log_path) if log_path else root / "log.txt"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        before = snapshot(folder)
        result = _wait(
            [os.path.abspath(python or sys.executable), str(script), str(folder), str(io)], cwd, io, log_file,
            start, time_limit, overtime, on_wait, wait_every)
        result.log = log_file.read_text(errors="replace") if log_file.exists() else ""
        result.status = _read_json(io / "status.json")
        for path in sorted(io.glob("out.*.npy")):
            result.arrays[path.name[len("out."):-len(".npy")]] = np.load(path, allow_pickle=False)
        after = snapshot(folder)
        result.changed = dict(zip(WATCHED, (
            sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)), sorted(snapshot(cwd)))))
        return result


def _wait(command, cwd, io, log_file, start, time_limit, overtime, on_wait, wait_every) -> SandboxResult:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    result = SandboxResult({})
    launcher, start_error = io / "launcher.py", io / "start_error.txt"
    launcher.write_text(LAUNCHER)
    # the caller holds the write end of this pipe until the job ends: if the caller dies,
    # the kernel closes it and the launcher kills the job's process group
    watch_read, watch_write = os.pipe()
    try:
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-I", str(launcher), str(os.getpid()), str(watch_read), str(start_error), *command],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, pass_fds=(watch_read,))
            os.close(watch_read)
            watch_read = None
            try:
                deadline = start + time_limit
                next_notice = start + wait_every
                while not _ended(process):
                    now = time.monotonic()
                    if on_wait and now >= next_notice:
                        next_notice = now + wait_every
                        on_wait(now - start, _read_json(io / "status.json").get("stage"))
                    if not result.required_done and (io / "required_done").exists():
                        result.required_done = True
                        if overtime is not None:
                            deadline = max(deadline, now + overtime(now - start))
                    if now > deadline:
                        result.timed_out = True
                        break
                    time.sleep(0.05)
            finally:
                _kill(process)  # the job, and anything it started and left running
    finally:
        for fd in (watch_read, watch_write):
            if fd is not None:
                os.close(fd)
    if start_error.exists():
        result.start_error = start_error.read_text()
        return result
    result.wall_seconds = time.monotonic() - start
    result.returncode = process.returncode
    result.required_done = result.required_done or (io / "required_done").exists()
    return result


def _ended(process) -> bool:
    """Whether the launcher has exited, without reaping it: while it is a zombie its
    process group id cannot be reused, so _kill can still end what the job left behind."""
    if not hasattr(os, "waitid"):
        return process.poll() is not None
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill(process) -> None:
    """Stop the job's process group (its own session: only what it started)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


# -- temporary folders -------------------------------------------------------------------

OWNED = re.compile(r"^(?P<kind>[a-z_]+)_(?P<pid>\d+)_")


def temp_root() -> Path:
    """The one folder every temporary folder of this kit lives in (per user)."""
    return Path(tempfile.gettempdir()) / f"bloodcells-{os.getuid()}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(root=None) -> list:
    """Remove the temporary folders whose owning process is gone (a killed run's).
    Returns what was removed."""
    root = Path(root) if root is not None else temp_root()
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = OWNED.match(entry.name)
        if match and int(match["pid"]) != os.getpid() and not alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def temporary_folder(kind: str, parent=None):
    """A fresh folder `<kind>_<pid>_<random>` under temp_root() (or `parent`), removed on
    exit; folders under temp_root() left by runs that were killed are removed first."""
    if parent is None:
        root = temp_root()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        clean_stale(root)
    else:
        root = Path(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}_{os.getpid()}_", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- output paths: checked before the long work starts ----------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def snapshot(folder: Path) -> dict:
    """{relative path: (size, mtime_ns)} of the files under `folder`: to see what a run wrote."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def last_line(text: str) -> str:
    """The last non-blank line of `text` (at most 300 characters), "" if none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
