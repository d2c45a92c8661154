"""build_submission.py: the zip's layout and manifest, --half, and every validation
failure naming what is wrong and how to fix it. Tiny untrained models, 8 probe images."""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from bloodcells import submission, preflight
from bloodcells.build import build_main
from bloodcells.submission import stage, zip_folder
from bloodcells.untrained import export_tiny
from bloodcells.preflight import Limits, validate
from bloodcells.files import sha256_file
from tests.conftest import snapshot

FAST = ["--probe-images", "8"]
LIMITS = Limits(probe_images=8)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("export") / "tiny", name="tiny")


@pytest.fixture(scope="module")
def good_folder(export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    stage([export], folder, tta=2)
    return folder


def build(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


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


def test_build_writes_a_validated_zip_with_everything_at_the_root(export, tmp_path, capsys):
    before = snapshot(export)
    code, out, err = build(["--weights", str(export), "--out", str(tmp_path / "sub"), "--tta", "3", "--speedup", "2",
                            *FAST], capsys)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    zip_path = Path(last)
    assert zip_path.parent == tmp_path / "sub" and re.fullmatch(r"submission_\d{6}_\d{6}\.zip", zip_path.name)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [zip_path.name]  # no temporary left
    assert "limits: probe 8 images, test set 20000 images, server 2x this machine, size limit 500 MB, " \
           "half tolerance 0.01, time limit 600 s: Codabench's default, --time-limit sets your phase's" in out
    assert re.search(r"ok    time: [\d.]+ ms/image here -> 20000 images in ~\d+ s here, ~\d+ s on a server 2x faster", out)
    assert "FAIL" not in out and "ok    deterministic" in out and "ok    time" in out
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert sorted(names) == ["manifest.json", "model.py", "tiny.json", "tiny.weights.h5"]
        spec = json.loads(zf.read("tiny.json"))
        manifest = json.loads(zf.read("manifest.json"))
        extracted = tmp_path / "x"
        zf.extractall(extracted)
    assert spec["weights_file"] == "tiny.weights.h5" and spec["tta"]["views"] == 3
    assert manifest["format"] == "bloodcells-submission/1"
    assert manifest["models"][0]["source_run"] == "untrained" and manifest["models"][0]["tta"]["views"] == 3
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
        n: sha256_file(extracted / n) for n in names if n != "manifest.json"}
    assert snapshot(export) == before  # the input is never modified


def test_half_stores_float16_and_checks_agreement_with_float32(export, tmp_path, capsys):
    code, out, err = build(["--weights", str(export), "--out", str(tmp_path), "--half", "--tta", "2", *FAST], capsys)
    assert code == 0, err
    assert re.search(r"ok    float16 vs float32: max \|p16 - p32\| = \S+ \(tolerance 0.01\)", out)
    with zipfile.ZipFile(out.strip().splitlines()[-1]) as zf:
        zf.extract("tiny.weights.h5", tmp_path / "x")
        assert json.loads(zf.read("tiny.json"))["weights_dtype"] == "float16"
    with h5py.File(tmp_path / "x" / "tiny.weights.h5") as f:
        dtypes = set()
        f.visititems(lambda name, item: dtypes.add(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {np.dtype(np.float16)}


def test_half_disagreement_fails_and_nothing_is_written(export, tmp_path, capsys):
    code, out, err = build(["--weights", str(export), "--out", str(tmp_path / "sub"), "--half", "--tta", "1",
                            "--half-tolerance", "0", *FAST], capsys)
    assert code == 2
    assert "FAIL  float16 vs float32" in out and "fix: float16 changes this model's predictions: build without --half" in out
    assert err.startswith("error: submission_") and "not written" in err
    assert not (tmp_path / "sub").exists() or list((tmp_path / "sub").iterdir()) == []


def test_missing_export_is_a_one_line_error(tmp_path, capsys):
    code, out, err = build(["--weights", str(tmp_path / "nothing"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "nothing/model.json: missing" in err and len(err.strip().splitlines()) == 1


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


def test_missing_interpreter_or_zip(tmp_path, capsys):
    code, _, err = build(["--check", str(tmp_path / "none.zip")], capsys)
    assert code == 2 and "no such zip" in err and "make submission" in err
    code, _, err = build(["--check", str(tmp_path / "none.zip"), "--python", str(tmp_path / "py")], capsys)
    assert code == 2 and "--python" in err and "make server-check" in err
