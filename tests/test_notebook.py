"""notebooks/train_submit.ipynb runs top to bottom, headless, in demo mode: synthetic
data, configs/demo.toml, one epoch, offline; every make step of the README's workflow
runs and the zip it ends with is a valid submission."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "train_submit.ipynb"
# what the notebook's make targets need: the repository without environments or outputs
COPY = ("bloodcells", "configs", "notebooks", "model.py", "build_submission.py", "local_eval.py", "Makefile",
        "requirements.txt", "requirements-gpu.txt", "requirements-server.txt")


def test_notebook_runs_headless_in_demo_mode(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="test dependency: pip install -r requirements-test.txt")
    import nbformat

    repo = tmp_path / "repo"
    for name in COPY:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy2(source, repo / name)
    monkeypatch.setenv("BLOODCELLS_NOTEBOOK_DEMO", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(repo / "notebooks" / "train_submit.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo / "notebooks")}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    outputs = "\n".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                        for o in cell.get("outputs", []))
    for target in ("clean-data", "split", "train", "submission", "eval"):
        assert f"$ make {target} " in outputs, target
    images = sum(1 for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 3  # cleaning report, curves and confusion, evaluation figures shown inline
    zips = list((repo / "build" / "notebook" / "submission").glob("*.zip"))
    assert len(zips) == 1 and f"zip ready: {zips[0]}" in outputs
    with zipfile.ZipFile(zips[0]) as archive:
        names = archive.namelist()
    assert "model.py" in names and any(n.endswith(".weights.h5") for n in names)
    assert not (repo / "submission").exists() or not any((repo / "submission").glob("*.zip"))
    assert os.environ["BLOODCELLS_NOTEBOOK_DEMO"] == "1"
