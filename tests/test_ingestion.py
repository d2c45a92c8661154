"""bloodcells.ingestion, what the server does with a zip, defined once: the model runs from
another working directory, failures come back with their log, the time limit stops it, bad
zips fail before running, and the label rule. One test checks that rule across modules:
local_eval.py (ingestion) and build_submission.py --check (validation, bloodcells.preflight)
give the same verdict on the same zip. Tiny handmade zips (tests/pixel_zips.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from bloodcells.build import build_main
from bloodcells.cli import UserError
from bloodcells.ingestion import check_zip, run_submission, validate_predictions
from bloodcells.preflight import MANIFEST_NAME, Limits, validate
from bloodcells.submission import MODEL_PY, stage, zip_folder
from pixel_zips import BROKEN_MODELS, PIXEL_MODEL, encoded_images, make_zip
from tests.conftest import REPO


def test_ingestion_runs_the_model_from_another_working_directory(pixel_zip, tmp_path):
    wanted = np.array([0, 1, 2, 3, 4, 5, 6, 7, 7, 0])
    log = tmp_path / "log.txt"
    result = run_submission(pixel_zip, {"test": encoded_images(wanted)}, time_limit=60, log_path=log)
    assert result.status == "ok", result.message + result.log
    assert np.array_equal(result.predictions["test"], wanted)
    assert result.probabilities["test"].shape == (10, 8)
    assert result.init_seconds is not None and result.init_seconds >= 0
    cwd = next(line for line in log.read_text().splitlines() if line.startswith("MODEL CWD")).split(" ", 2)[2]
    here = next(line for line in log.read_text().splitlines() if line.startswith("MODEL HERE")).split(" ", 2)[2]
    assert cwd != here and cwd.endswith("program") and here.endswith("submission")
    assert str(REPO) not in cwd


@pytest.mark.parametrize("name, status, words", [
    ("crash", "crashed", ["predict", "RuntimeError", "weights went missing"]),
    ("crash_init", "crashed", ["Model()", "no module named keras_cv"]),
    ("cwd_relative", "crashed", ["FileNotFoundError", "settings.json"]),
    ("imports_project", "crashed", ["import", "bloodcells"]),
    ("wrong_shape", "bad_output", ["shape (5, 8)", "expected shape (5,)"]),
    ("too_few", "bad_output", ["shape (4,)"]),
    ("out_of_range", "bad_output", ["outside 0-7"]),
    ("ragged", "bad_output", ["not a numeric array"]),
])
def test_failing_submissions_are_reported_with_their_log(tmp_path, name, status, words):
    zip_path = make_zip(tmp_path / f"{name}.zip", BROKEN_MODELS[name], {"settings.json": "{}"})
    log = tmp_path / "ingestion.log"
    result = run_submission(zip_path, {"test": encoded_images(np.zeros(5, int))}, time_limit=60, log_path=log)
    assert result.status == status, (result.status, result.message)
    for word in words:
        assert word in result.message, (word, result.message)
    assert not result.predictions
    if status == "crashed":
        assert "Traceback" in log.read_text()


@pytest.mark.parametrize("name, stage", [("sleep", "Model()"), ("sleep_predict", "predict")])
def test_a_submission_past_the_time_limit_is_stopped(tmp_path, name, stage):
    zip_path = make_zip(tmp_path / f"{name}.zip", BROKEN_MODELS[name])
    start = time.monotonic()
    result = run_submission(zip_path, {"test": encoded_images(np.zeros(3, int))}, time_limit=2.0)
    assert result.status == "timeout"
    assert "time limit of 2 s" in result.message and stage in result.message
    assert time.monotonic() - start < 30  # killed, not waited for


def test_bad_zips_fail_before_running(tmp_path):
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive:
        archive.writestr("sub/model.py", PIXEL_MODEL)
    result = run_submission(nested, {"test": encoded_images([0])}, time_limit=10)
    assert result.status == "bad_zip" and "sub/model.py" in result.message
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    assert run_submission(junk, {"test": encoded_images([0])}, time_limit=10).status == "bad_zip"


# -- the same verdict from local_eval.py and build_submission.py --check ---------------------

# appended to the shipped model.py: predict returns the same labels in another form
RETURN_FLOATS = "\nModel.predict = (lambda labels: lambda self, X: labels(self, X).astype(np.float32))(Model.predict)\n"
RETURN_COLUMN = "\nModel.predict = (lambda labels: lambda self, X: labels(self, X)[:, None])(Model.predict)\n"
NOTES = "notes/readme.txt"


def kit_zip(export, folder, model_py_tail="", nested=False):
    """A zip as build_submission.py builds it (manifest included), model.py with
    `model_py_tail` appended; `nested`: also a file in a folder, listed in the manifest,
    or (nested="model.py") every file inside a folder."""
    model_py = folder / "model.py"
    model_py.write_text(MODEL_PY.read_text() + model_py_tail)
    staged = folder / "staged"
    stage([export], staged, tta=1, model_py=model_py)
    zip_path = folder / "submission.zip"
    if not nested:
        zip_folder(staged, zip_path)
        return zip_path
    manifest = json.loads((staged / MANIFEST_NAME).read_text())
    manifest["files"].append({"name": NOTES, "bytes": 5, "sha256": hashlib.sha256(b"notes").hexdigest()})
    with zipfile.ZipFile(zip_path, "w") as zf:
        prefix = "submission/" if nested == "model.py" else ""
        for f in sorted(staged.iterdir()):
            zf.writestr(prefix + f.name, json.dumps(manifest) if f.name == MANIFEST_NAME else f.read_bytes())
        zf.writestr(NOTES, b"notes")
    return zip_path


ZIPS = {  # name: (kit_zip arguments, the server runs it, the words both give when it does not)
    "predict returns float labels": ({"model_py_tail": RETURN_FLOATS}, True, None),
    "predict returns a column (n, 1)": ({"model_py_tail": RETURN_COLUMN}, False, "shape (8, 1); expected shape (8,)"),
    "a file in a folder": ({"nested": True}, True, None),
    "model.py in a folder": ({"nested": "model.py"}, False,
                             "model.py: missing at the zip root (found submission/model.py"),
}


def local_eval(tmp_path, zip_path):
    data = tmp_path / "test.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (8, 96, 96, 3), dtype=np.uint8), labels=np.arange(8))
    return subprocess.run([sys.executable, str(REPO / "local_eval.py"), str(zip_path), "--data", str(data),
                           "--profile", "none", "--eval-dir", str(tmp_path / "eval"),
                           "--leaderboard-file", str(tmp_path / "board.csv"), "--cache-dir", str(tmp_path / "cache")],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})


def build_check(zip_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_main(["--check", str(zip_path), "--probe-images", "8"])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("name", ZIPS)
def test_local_eval_and_build_submission_give_the_same_verdict(export, tmp_path, capsys, name):
    """Across modules: ingestion's rule as local_eval.py (ingestion) and build_submission.py
    --check (validation, bloodcells.preflight) apply it."""
    kwargs, runs, words = ZIPS[name]
    zip_path = kit_zip(export, tmp_path, **kwargs)
    evaluated = local_eval(tmp_path, zip_path)
    code, out, err = build_check(zip_path, capsys)
    assert (evaluated.returncode == 0) == runs, evaluated.stdout + evaluated.stderr
    assert (code == 0) == runs, out + err
    if not runs:
        assert words in evaluated.stdout + evaluated.stderr and words in out


def test_a_corrupt_zip_is_refused_by_both_without_a_traceback(tmp_path):
    zip_path = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("model.py", "class Model: pass\n")
        zf.writestr("tiny.json", json.dumps({"format": "bloodcells-model/2", "weights_file": "tiny.weights.h5"}))
    data = zip_path.read_bytes()
    zip_path.write_bytes(data.replace(b'"format"', b'"formXt"', 1))  # the stored bytes no longer match their CRC
    with pytest.raises(UserError, match=r"corrupt\.zip: tiny\.json: corrupt member \(CRC error\)"):
        check_zip(zip_path)  # local_eval.py's check
    layout = {c.name: c for c in validate(zip_path, limits=Limits(probe_images=8)).checks}["layout"]
    assert not layout.ok and layout.detail == "tiny.json: corrupt member (CRC error); expected an intact zip"


@pytest.mark.parametrize("returned, problem", [
    (np.array([1, 7], np.uint8), None),
    (np.array([1.0, 7.0], np.float32), None),  # integer values: scored as labels
    ([1, 7], None),  # the server saves np.asarray of it
    (np.array([[1], [7]]), "shape (2, 1); expected shape (2,)"),
    (np.eye(8)[[1, 7]], "shape (2, 8)"),
    (np.array([0.5, 1.0]), "non-integer values (dtype float64, e.g. 0.5)"),
    (np.array([np.nan, 1.0]), "1 NaN or infinite values"),
    (np.array([1, 8]), "1 values outside 0-7 (e.g. 8)"),
    (np.array([-1, 0]), "1 values outside 0-7 (e.g. -1)"),
    (np.array([True, False]), "dtype bool"),
    (np.array(["1", "7"]), "dtype <U1"),
])
def test_the_label_rule(returned, problem):
    labels, found = validate_predictions(returned, 2)
    if problem is None:
        assert found is None and labels.dtype == np.int64 and list(labels) == [1, 7]
    else:
        assert labels is None and found.startswith(problem), found
        assert "expected shape (2,) of integer labels 0-7" in found
