"""What the server accepts, defined once (bloodcells.ingestion): local_eval.py (ingestion)
and build_submission.py --check (validation) give the same verdict on the same zip."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bloodcells import submission
from bloodcells.ingestion import validate_predictions
from bloodcells.submission import MODEL_PY, stage, zip_folder
from bloodcells.untrained import export_tiny
from tests.conftest import REPO

# appended to the shipped model.py: predict returns the same labels in another form
PREDICT_RETURNS = {
    "float labels": "np.float32",  # integer values in a float array: the server scores them
    "column (n, 1)": "column",  # refused: a scorer comparing with == would broadcast it to (n, n)
}
OVERRIDE = '''
_labels = Model.predict
def _predict(self, X):
    labels = _labels(self, X)
    return labels[:, None] if "{form}" == "column" else labels.astype({form})
Model.predict = _predict
'''


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("export") / "tiny", name="tiny")


def zip_returning(form: str, export, folder):
    """A zip built as build_submission.py builds it (manifest included) whose predict returns `form`."""
    model_py = folder / "model.py"
    model_py.write_text(MODEL_PY.read_text() + OVERRIDE.format(form=form))
    stage([export], folder / "staged", tta=1, model_py=model_py)
    zip_folder(folder / "staged", folder / "submission.zip")
    return folder / "submission.zip"


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
        submission.build_main(["--check", str(zip_path), "--probe-images", "8"])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("name, accepted", [("float labels", True), ("column (n, 1)", False)])
def test_local_eval_and_build_submission_agree_on_what_predict_returns(export, tmp_path, capsys, name, accepted):
    zip_path = zip_returning(PREDICT_RETURNS[name], export, tmp_path)
    evaluated = local_eval(tmp_path, zip_path)
    code, out, err = build_check(zip_path, capsys)
    assert (evaluated.returncode == 0) == accepted, evaluated.stdout + evaluated.stderr
    assert (code == 0) == accepted, out + err
    if not accepted:  # the same words from both
        assert "FAILED (bad_output)" in evaluated.stdout and "shape (8, 1); expected shape (8,)" in evaluated.stdout
        assert "FAIL  output shape: shape (8, 1); expected shape (8,)" in out


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
