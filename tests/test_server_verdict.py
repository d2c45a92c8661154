"""What the server accepts, defined once (bloodcells.ingestion): local_eval.py (ingestion)
and build_submission.py --check (validation) give the same verdict on the same zip."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from bloodcells.build import build_main
from bloodcells.cli import UserError
from bloodcells.ingestion import check_zip, validate_predictions
from bloodcells.submission import MODEL_PY, stage, zip_folder
from bloodcells.untrained import export_tiny
from bloodcells.preflight import MANIFEST_NAME, Limits, validate
from tests.conftest import REPO

# appended to the shipped model.py: predict returns the same labels in another form
RETURN_FLOATS = "\nModel.predict = (lambda labels: lambda self, X: labels(self, X).astype(np.float32))(Model.predict)\n"
RETURN_COLUMN = "\nModel.predict = (lambda labels: lambda self, X: labels(self, X)[:, None])(Model.predict)\n"
NOTES = "notes/readme.txt"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("export") / "tiny", name="tiny")


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
