"""bloodcells.preflight, the checks before upload: every validation failure names what is
wrong and how to fix it (missing weights, files in folders and .keras files, static
problems in model.py, wrong output, nondeterminism, files written, a crash, size, time and
parity with another interpreter). One tiny untrained export staged once, 8 probe images."""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import pytest

from bloodcells import preflight, submission
from bloodcells.preflight import Limits, validate
from bloodcells.submission import stage, zip_folder
from build_command import FAST, build

LIMITS = Limits(probe_images=8)


@pytest.fixture(scope="module")
def good_folder(export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    stage([export], folder, tta=2)
    return folder


def make_zip(folder: Path, path: Path, edit=None) -> Path:
    """Zip a copy of a staged folder after `edit(copy_folder)`."""
    copy = path.with_suffix("")
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    if edit:
        edit(copy)
    zip_folder(copy, path)
    return path


def failed(report) -> dict:
    return {c.name: c for c in report.checks if not c.ok}


def test_missing_weights_in_zip(good_folder, tmp_path):
    z = make_zip(good_folder, tmp_path / "s.zip", lambda f: (f / "tiny.weights.h5").unlink())
    bad = failed(validate(z, limits=LIMITS))
    assert "tiny.json -> tiny.weights.h5" in bad["weights"].detail and "re-export" in bad["weights"].fix
    assert "fix the problems above" in bad["runs"].fix  # not run when the zip cannot work
    assert "changed or missing since built: tiny.weights.h5" in bad["manifest"].detail


def test_files_in_folders_and_whole_keras_files(good_folder, tmp_path):
    z = make_zip(good_folder, tmp_path / "s.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("extra/notes.txt", "x")
        zf.writestr("old.keras", "x")
    bad = failed(validate(z, limits=LIMITS))
    assert "layout" not in bad  # the server runs files in folders (ingestion.zip_layout) ...
    assert "old.keras" in bad["no .keras files"].detail and "save_weights" in bad["no .keras files"].fix
    # ... but this zip was edited after it was built
    assert "not in the manifest: extra/notes.txt, old.keras" in bad["manifest"].detail
    assert "rebuild" in bad["manifest"].fix


def test_no_model_py_or_spec(good_folder, tmp_path):
    def strip(f):
        (f / "model.py").unlink()
        (f / "tiny.json").unlink()
    bad = failed(validate(make_zip(good_folder, tmp_path / "s.zip", strip), limits=LIMITS))
    assert "model.py: missing at the zip root" in bad["layout"].detail
    assert "--weights" in bad["model specs"].fix


@pytest.mark.parametrize("line, check, detail, fix", [
    ('WEIGHTS = "/home/me/weights/b7.weights.h5"\n', "paths", "'/home/me/weights/b7.weights.h5' (line",
     "os.path.dirname(os.path.abspath(__file__))"),
    ("import keras_cv\n", "imports", "keras_cv (line", "self-contained"),
    ("from bloodcells.augment import x\n", "imports", "bloodcells (line", "self-contained"),
    ("def broken(:\n", "model.py syntax", "line", "syntax"),
])
def test_static_problems_in_model_py(good_folder, tmp_path, line, check, detail, fix):
    def edit(f):
        (f / "model.py").write_text((f / "model.py").read_text() + line)
    bad = failed(validate(make_zip(good_folder, tmp_path / "s.zip", edit), limits=LIMITS))
    assert detail in bad[check].detail and fix in bad[check].fix


def test_repository_model_py_passes_the_static_checks():
    report = preflight.Report(Path("x"))
    preflight.check_code(submission.MODEL_PY.read_text(), report)
    assert report.ok and len(report.checks) == 2


BAD_MODEL = '''
_original_init = Model.__init__
def _init_that_writes(self):
    _original_init(self)
    open("cache.txt", "w").write("written in the working directory")
    open(os.path.join(HERE, "log.txt"), "w").write("written next to model.py")
Model.__init__ = _init_that_writes
Model.predict = lambda self, X: np.random.default_rng().random((len(X), 8))
'''


def test_wrong_output_nondeterminism_and_written_files(good_folder, tmp_path):
    def edit(f):
        (f / "model.py").write_text((f / "model.py").read_text() + BAD_MODEL)
    report = validate(make_zip(good_folder, tmp_path / "s.zip", edit), limits=LIMITS)
    bad = failed(report)
    assert "shape (8, 8); expected shape (8,)" in bad["output shape"].detail and "shape (n,)" in bad["output shape"].fix
    assert "fixed TTA seeds" in bad["deterministic"].fix
    assert "working directory: cache.txt" in bad["no files written"].detail
    assert "submission folder: log.txt" in bad["no files written"].detail
    assert "write nothing" in bad["no files written"].fix


def test_crash_in_model_is_reported_with_its_error(good_folder, tmp_path):
    def edit(f):
        (f / "model.py").write_text((f / "model.py").read_text() + "raise RuntimeError('boom at import')\n")
    bad = failed(validate(make_zip(good_folder, tmp_path / "s.zip", edit), limits=LIMITS))
    assert "failed at import model: RuntimeError: boom at import" in bad["runs"].detail
    assert "numpy and tensorflow/keras only" in bad["runs"].fix


def test_too_big_too_slow_and_no_parity(good_folder, tmp_path, capsys):
    z = make_zip(good_folder, tmp_path / "s.zip")
    # "another interpreter" that computes differently: the same Python on a copy of the
    # submission whose JSON asks for 1 TTA view
    other = tmp_path / "other_python"
    other.write_text(f'#!/bin/sh\ncopy="{tmp_path}/parity_copy" && rm -rf "$copy" && cp -r "$2" "$copy" && '
                     f'sed -i \'s/"views": [0-9]*/"views": 1/\' "$copy"/*.json && '
                     f'script="$1" && shift 2 && exec "{sys.executable}" "$script" "$copy" "$@"\n')
    other.chmod(0o755)
    code, out, err = build(["--check", str(z), "--max-size-mb", "0.01", "--time-limit", "0.5",
                            "--python", str(other), *FAST], capsys)
    assert code == 2 and "3 check(s) failed (size, time, parity)" in err
    assert re.search(r"FAIL  parity: TF \S+ / Keras \S+ vs TF \S+ / Keras \S+: max \|dp\| = \S+ \(tolerance 0.001\)", out)
    assert "fix: the two versions compute this network differently" in out
    assert re.search(r"FAIL  size: 0\.\d MB \(limit 0.01 MB\)\n\s+fix: .*--half", out)
    assert re.search(r"FAIL  time: [\d.]+ ms/image here -> 20000 images in ~\d+ s here \(limit 0.5 s\)", out)
    assert "fix: predict faster: fewer TTA views" in out
    assert "ok    deterministic" in out  # the rest still ran
