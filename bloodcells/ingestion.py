"""Run a submission zip the way the competition server's ingestion program does.

The zip is extracted into a temporary folder; a separate Python process is started whose
working directory is a different (program) folder and whose `sys.path` has the
submission folder; it does `from model import Model`, times `Model()` and `predict(X)`,
and writes the predictions to files, which are then read back here - so a model that
opens files relative to the working directory, imports this project's package, prints
to stdout, returns the wrong shape, crashes or runs past the time limit fails here as
it would on the server. The process runs without PYTHONPATH, like the server, where
`bloodcells` is not installed.

`run_submission(zip, {set name: images}, time_limit)` -> `IngestionResult`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import NUM_CLASSES
from .cli import UserError

DEFAULT_TIME_LIMIT = 600.0

# The program folder's script. It must not import this project: the server has only
# the submission's files and the competition's libraries.
RUNNER = r'''
import json, os, sys, time, traceback
import numpy as np

input_dir, output_dir, submission_dir, want_proba = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
sys.path.insert(0, submission_dir)
status = {"stage": "import", "init_seconds": None, "predict_seconds": {}, "proba_seconds": {}}


def save_status():
    tmp = os.path.join(output_dir, ".status.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(status, fh)
    os.replace(tmp, os.path.join(output_dir, "status.json"))


def save_array(name, array):
    tmp = os.path.join(output_dir, "." + name + ".tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, os.path.join(output_dir, name + ".npy"))


try:
    print(f"ingestion: cwd {os.getcwd()}, submission {submission_dir}", flush=True)
    save_status()
    from model import Model
    status["stage"] = "Model()"
    save_status()
    start = time.perf_counter()
    model = Model()
    status["init_seconds"] = time.perf_counter() - start
    sets = sorted(f[:-4] for f in os.listdir(input_dir) if f.endswith(".npz"))
    for name in sets:
        with np.load(os.path.join(input_dir, name + ".npz")) as archive:
            X = archive["images"]
        status["stage"] = f"predict({name})"
        save_status()
        start = time.perf_counter()
        y = model.predict(X)
        status["predict_seconds"][name] = time.perf_counter() - start
        status["stage"] = f"saving predictions({name})"
        try:
            y = np.asarray(y)
            if y.dtype == object:
                raise TypeError(f"object array of shape {y.shape}")
        except Exception as exc:
            status["bad_output"] = f"predict returned {type(y).__name__} that is not a numeric array ({exc})"
            save_status()
            sys.exit(3)
        save_array("predictions." + name, y)
        save_status()
    status["stage"] = "predictions done"
    save_status()
    if want_proba and hasattr(model, "predict_proba"):
        for name in sets:
            with np.load(os.path.join(input_dir, name + ".npz")) as archive:
                X = archive["images"]
            status["stage"] = f"predict_proba({name})"
            start = time.perf_counter()
            save_array("proba." + name, np.asarray(model.predict_proba(X), dtype=np.float32))
            status["proba_seconds"][name] = time.perf_counter() - start
            save_status()
    status["stage"] = "done"
    save_status()
    print("ingestion: done", flush=True)
except SystemExit:
    raise
except BaseException as exc:
    status["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
    save_status()
    traceback.print_exc()
    sys.exit(1)
'''


@dataclass
class IngestionResult:
    status: str  # "ok", "crashed", "timeout", "bad_output", "bad_zip"
    message: str = ""
    predictions: dict = field(default_factory=dict)  # set name -> (N,) int64
    probabilities: dict = field(default_factory=dict)  # set name -> (N, 8) float32 (if the model has predict_proba)
    init_seconds: float | None = None
    predict_seconds: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    returncode: int | None = None
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_zip(zip_path) -> list[str]:
    """Names in the zip; raises UserError when it cannot be a submission."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise UserError(f"{zip_path}: file not found; expected a submission .zip")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{zip_path}: zip: unreadable ({exc}); expected a zip made by build_submission.py") from None
    if bad is not None:
        raise UserError(f"{zip_path}: {bad}: corrupt member (CRC error); expected an intact zip")
    unsafe = [n for n in names if n.startswith("/") or ".." in Path(n).parts]
    if unsafe:
        raise UserError(f"{zip_path}: {unsafe[0]}: path outside the zip root; expected relative names")
    if "model.py" not in names:
        nested = [n for n in names if n.endswith("/model.py") or n == "model.py"]
        where = f" (found {nested[0]}: files must be at the root, not in a folder)" if nested else ""
        raise UserError(f"{zip_path}: model.py: missing at the zip root{where}; expected model.py "
                        f"defining class Model")
    return names


def run_submission(zip_path, sets: dict, time_limit: float = DEFAULT_TIME_LIMIT, *,
                   want_proba: bool = True, python: str | None = None, log_path=None,
                   workdir=None, on_wait=None, wait_every: float = 15.0) -> IngestionResult:
    """Run Model() and predict() on each set of images ({name: uint8 (N, 96, 96, 3)}).

    `time_limit` bounds Model() plus all predict() calls, as the server's limit does;
    the optional predict_proba pass (for confidence figures only) gets extra time and
    is abandoned, not failed, if it runs long. `python` picks the interpreter (e.g. a
    virtualenv with the server's TensorFlow). The process log goes to `log_path`.
    `on_wait(elapsed seconds, stage)` is called every `wait_every` seconds meanwhile."""
    start = time.monotonic()
    try:
        check_zip(zip_path)
    except UserError as exc:
        return IngestionResult("bad_zip", str(exc), wall_seconds=time.monotonic() - start)
    for name in sets:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"set name '{name}' must be letters, digits, '-' or '_'")
    tmp_root = Path(tempfile.mkdtemp(prefix="ingestion_", dir=workdir))
    try:
        folders = {k: tmp_root / k for k in ("submission", "program", "input", "output")}
        for folder in folders.values():
            folder.mkdir()
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(folders["submission"])
        (folders["program"] / "ingestion.py").write_text(RUNNER)
        for name, images in sets.items():
            np.savez(folders["input"] / f"{name}.npz", images=np.asarray(images))
        log_file = Path(log_path) if log_path else tmp_root / "ingestion.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        return _run(folders, sets, time_limit, want_proba, python or sys.executable, log_file, start,
                    on_wait, wait_every)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def _run(folders, sets, time_limit, want_proba, python, log_file, start, on_wait, wait_every):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [python, "-u", str(folders["program"] / "ingestion.py"), str(folders["input"]),
               str(folders["output"]), str(folders["submission"]), "1" if want_proba else "0"]
    output = folders["output"]
    expected = [output / f"predictions.{name}.npy" for name in sets]
    timed_out = False
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, cwd=folders["program"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            deadline = start + time_limit
            predictions_done_at = None
            next_notice = start + wait_every
            while process.poll() is None:
                now = time.monotonic()
                if on_wait and now >= next_notice:
                    next_notice = now + wait_every
                    on_wait(now - start, _read_json(output / "status.json").get("stage"))
                if predictions_done_at is None and all(p.exists() for p in expected):
                    predictions_done_at = now
                    # predict_proba is extra work the server never does: give it as long as
                    # predict took, plus a margin, and then stop waiting.
                    deadline = max(deadline, now + (now - start) + 30.0)
                if now > deadline:
                    timed_out = predictions_done_at is None
                    _kill(process)
                    break
                time.sleep(0.05)
        except BaseException:
            _kill(process)
            raise
    wall = time.monotonic() - start
    log_text = log_file.read_text(errors="replace")
    status = _read_json(output / "status.json")
    result = IngestionResult("ok", returncode=process.returncode, log=log_text, wall_seconds=wall,
                             init_seconds=status.get("init_seconds"),
                             predict_seconds=status.get("predict_seconds", {}))
    if timed_out:
        result.status = "timeout"
        result.message = (f"time limit of {time_limit:g} s reached during {status.get('stage', 'start-up')} "
                          f"(Model() took {_fmt_seconds(status.get('init_seconds'))})")
        return result
    if status.get("bad_output"):
        result.status, result.message = "bad_output", status["bad_output"]
        return result
    if not all(p.exists() for p in expected):
        result.status = "crashed"
        stage = status.get("stage", "start-up")
        error = status.get("error") or _last_line(log_text) or f"exit status {process.returncode}"
        result.message = f"crashed in {stage}: {error}"
        return result
    for name, images in sets.items():
        predictions = np.load(output / f"predictions.{name}.npy", allow_pickle=False)
        labels, problem = validate_predictions(predictions, len(images))
        if problem:
            result.status, result.message = "bad_output", f"predict() on {len(images)} images returned {problem}"
            return result
        result.predictions[name] = labels
        proba_file = output / f"proba.{name}.npy"
        if proba_file.exists():
            proba = np.load(proba_file, allow_pickle=False)
            if proba.shape == (len(images), NUM_CLASSES) and np.isfinite(proba).all():
                result.probabilities[name] = proba
    if status.get("error"):  # after every prediction was saved: only the optional predict_proba failed
        result.message = f"predict_proba failed (no confidence figures): {status['error']}"
    return result


def validate_predictions(predictions: np.ndarray, n: int):
    """(labels (n,) int64, None) or (None, what is wrong)."""
    shape = predictions.shape
    expected = f"expected shape ({n},) of integer labels 0-{NUM_CLASSES - 1}"
    if predictions.ndim == 2 and shape[1] == 1:
        predictions = predictions[:, 0]
    if predictions.ndim != 1 or len(predictions) != n:
        return None, f"shape {shape}; {expected}"
    if predictions.dtype.kind not in "iuf":
        return None, f"dtype {predictions.dtype}; {expected}"
    if predictions.dtype.kind == "f":
        if not np.isfinite(predictions).all() or not np.all(predictions == np.round(predictions)):
            return None, f"non-integer values (dtype {predictions.dtype}); {expected}"
    labels = predictions.astype(np.int64)
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        return None, f"{int(bad.sum())} values outside 0-{NUM_CLASSES - 1} (e.g. {labels[bad][0]}); {expected}"
    return labels, None


def _kill(process) -> None:
    """Stop the submission's process group (its own session: only what it started)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _fmt_seconds(value) -> str:
    return "?" if value is None else f"{value:.1f} s"


__all__ = ["DEFAULT_TIME_LIMIT", "IngestionResult", "check_zip", "run_submission", "validate_predictions"]
