"""Run a submission zip the way the competition server's ingestion program does.

The zip is extracted into a temporary folder and run in the sandbox (bloodcells.sandbox:
a fresh interpreter whose working directory is a different (program) folder, the
submission folder first on `sys.path`, no PYTHONPATH, like the server, where `bloodcells`
is not installed); it does `from model import Model`, times `Model()` and `predict(X)`,
and hands the predictions back - so a model that opens files relative to the working
directory, imports this project's package, prints to stdout, returns the wrong shape,
crashes or runs past the time limit fails here as it would on the server.

`run_submission(zip, {set name: images}, time_limit)` -> `IngestionResult`.
`zip_layout` and `label_problems` define what the server accepts, once: build_submission.py's
checks (bloodcells.preflight) apply the same two.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import NUM_CLASSES, sandbox
from .cli import UserError

# The one default time limit (seconds) of the kit: Codabench's default. local_eval.py,
# build_submission.py's checks and --fit-budget all use it unless --time-limit is given.
DEFAULT_TIME_LIMIT = 600.0


def time_limit_text(seconds: float) -> str:
    """The limit and where it came from, for every place that prints it."""
    if seconds == DEFAULT_TIME_LIMIT:
        return f"{seconds:g} s: Codabench's default, --time-limit sets your phase's"
    return f"{seconds:g} s: set by --time-limit"


# The job run in the sandbox (bloodcells.sandbox): Model() and predict() on each set, as
# the server's ingestion program does, then the optional predict_proba pass.
JOB = r'''
print(f"ingestion: cwd {os.getcwd()}, submission {SUBMISSION}", flush=True)
status.update(stage="import", init_seconds=None, predict_seconds={}, proba_seconds={})
save_status()
import numpy as np
from model import Model
status["stage"] = "Model()"
save_status()
start = time.perf_counter()
model = Model()
status["init_seconds"] = time.perf_counter() - start
for name in PARAMS["sets"]:
    X = load_input(name)
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
        raise Stop(3)
    save_array("predictions." + name, y)
    save_status()
status["stage"] = "predictions done"
required_done()
if PARAMS["want_proba"] and hasattr(model, "predict_proba"):
    for name in PARAMS["sets"]:
        X = load_input(name)
        status["stage"] = f"predict_proba({name})"
        start = time.perf_counter()
        save_array("proba." + name, np.asarray(model.predict_proba(X), dtype=np.float32))
        status["proba_seconds"][name] = time.perf_counter() - start
        save_status()
print("ingestion: done", flush=True)
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


def zip_layout(zip_path) -> tuple[list, str | None]:
    """(file names, None) or (file names, [] when unreadable, and what stops the server
    from running it: "field: problem; expected ..."). The one layout rule of local_eval.py
    and build_submission.py: a readable, intact zip, every name inside it, model.py at its
    root. Files in folders are allowed: the server extracts the zip as it is."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        return [], "file not found; expected a submission .zip"
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        return [], f"zip: unreadable ({exc}); expected a zip made by build_submission.py"
    if bad is not None:  # no names: nothing in it can be read safely
        return [], f"{bad}: corrupt member (CRC error); expected an intact zip"
    unsafe = [n for n in names if n.startswith("/") or ".." in Path(n).parts]
    if unsafe:
        return names, f"{unsafe[0]}: path outside the zip root; expected relative names"
    if "model.py" not in names:
        nested = [n for n in names if n.endswith("/model.py")]
        where = f" (found {nested[0]}: files must be at the root, not in a folder)" if nested else ""
        return names, f"model.py: missing at the zip root{where}; expected model.py defining class Model"
    return names, None


def check_zip(zip_path) -> list[str]:
    """Names in the zip; raises UserError when the server could not run it (zip_layout)."""
    names, problem = zip_layout(zip_path)
    if problem:
        raise UserError(f"{zip_path}: {problem}")
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
    with sandbox.temporary_folder("ingestion", parent=workdir) as tmp:
        folder = tmp / "submission"
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(folder)
        # predict_proba is extra work the server never does: it gets as long as predict
        # took, plus a margin, and then it is abandoned
        run = sandbox.run(folder, JOB, {name: np.asarray(images) for name, images in sets.items()},
                          python=python, time_limit=time_limit, params={"sets": sorted(sets), "want_proba": want_proba},
                          log_path=log_path, on_wait=on_wait, wait_every=wait_every,
                          overtime=lambda elapsed: elapsed + 30.0, started_at=start, workdir=workdir)
    return _result(run, sets, time_limit)


def _result(run: sandbox.SandboxResult, sets: dict, time_limit: float) -> IngestionResult:
    status = run.status
    result = IngestionResult("ok", returncode=run.returncode, log=run.log, wall_seconds=run.wall_seconds,
                             init_seconds=status.get("init_seconds"),
                             predict_seconds=status.get("predict_seconds", {}))
    if run.start_error:
        result.status, result.message = "crashed", f"crashed in start-up: {run.start_error}"
        return result
    if run.timed_out and not run.required_done:
        result.status = "timeout"
        result.message = (f"time limit of {time_limit:g} s reached during {run.stage} "
                          f"(Model() took {_fmt_seconds(status.get('init_seconds'))})")
        return result
    if status.get("bad_output"):
        result.status, result.message = "bad_output", status["bad_output"]
        return result
    if not all(f"predictions.{name}" in run.arrays for name in sets):
        result.status, result.message = "crashed", f"crashed in {run.stage}: {run.error()}"
        return result
    for name, images in sets.items():
        labels, problem = validate_predictions(run.arrays[f"predictions.{name}"], len(images))
        if problem:
            result.status, result.message = "bad_output", f"predict() on {len(images)} images returned {problem}"
            return result
        result.predictions[name] = labels
        proba = run.arrays.get(f"proba.{name}")
        if proba is not None and proba.shape == (len(images), NUM_CLASSES) and np.isfinite(proba).all():
            result.probabilities[name] = proba
    if status.get("error"):  # after every prediction was saved: only the optional predict_proba failed
        result.message = f"predict_proba failed (no confidence figures): {status['error']}"
    return result


# What the server accepts from predict(): the one rule of local_eval.py (ingestion) and
# build_submission.py (validation). Codabench's example ingestion programs store
# np.asarray(predict(X)) (np.save / np.savetxt) and their scoring programs call sklearn's
# accuracy_score, which takes floats with integer values as labels and rejects NaN and
# fractions: so float labels pass. A column (n, 1) does not: the AN2DL template asks for
# shape (n_samples,), and a scorer comparing with `==` broadcasts a column to (n, n), a
# wrong score without an error. Nor do labels outside 0-7: scored wrong, silently.
LABEL_ASPECTS = ("shape", "dtype", "values")


def label_problems(predictions, n: int) -> dict:
    """{aspect: what is wrong} for what predict() returned on n images, aspects in
    LABEL_ASPECTS ("values" only judged once shape and dtype are right); {} when the
    server would score it as n labels."""
    predictions = np.asarray(predictions)
    expected = f"expected shape ({n},) of integer labels 0-{NUM_CLASSES - 1}"
    problems = {}
    if predictions.shape != (n,):
        problems["shape"] = f"shape {predictions.shape}; {expected}"
    if predictions.dtype.kind not in "iuf":
        problems["dtype"] = f"dtype {predictions.dtype}; {expected} (integer or integer-valued float dtype)"
    if problems:
        return problems
    if predictions.dtype.kind == "f":
        if not np.isfinite(predictions).all():
            return {"values": f"{int((~np.isfinite(predictions)).sum())} NaN or infinite values; {expected}"}
        if not np.all(predictions == np.round(predictions)):
            return {"values": f"non-integer values (dtype {predictions.dtype}, e.g. "
                              f"{predictions[predictions != np.round(predictions)][0]:g}); {expected}"}
    bad = (predictions < 0) | (predictions >= NUM_CLASSES)
    if bad.any():
        return {"values": f"{int(bad.sum())} values outside 0-{NUM_CLASSES - 1} (e.g. {predictions[bad][0]:g}); "
                          f"{expected}"}
    return {}


def validate_predictions(predictions, n: int):
    """(labels (n,) int64, None) or (None, what is wrong) by label_problems."""
    problems = label_problems(predictions, n)
    if problems:
        return None, next(problems[a] for a in LABEL_ASPECTS if a in problems)
    return np.asarray(predictions).astype(np.int64), None


def _fmt_seconds(value) -> str:
    return "?" if value is None else f"{value:.1f} s"


__all__ = ["DEFAULT_TIME_LIMIT", "time_limit_text", "IngestionResult", "zip_layout", "check_zip", "run_submission",
           "LABEL_ASPECTS", "label_problems", "validate_predictions"]
