"""build_submission.py and bloodcells.build, the command: the zip's layout and manifest,
--half, and one-line errors (exit 2) for a missing zip or interpreter, impossible limits,
weights that do not fit their model.json, truncated weights and unusable --out, checked
before the long work; no process or temporary file left by a killed build (issue 27).
Tiny untrained exports, 8 probe images. The checks on the zip are tests/test_preflight.py's,
the staging tests/test_submission.py's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from bloodcells.files import sha256_file
from bloodcells.preflight import Limits
from bloodcells.untrained import TINY_BACKBONE, export_tiny
from build_command import FAST, build
from processes import kill_and_expect_no_process, processes_mentioning
from tests.conftest import REPO, snapshot


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


def test_missing_interpreter_or_zip(tmp_path, capsys):
    code, _, err = build(["--check", str(tmp_path / "none.zip")], capsys)
    assert code == 2 and "no such zip" in err and "make submission" in err
    code, _, err = build(["--check", str(tmp_path / "none.zip"), "--python", str(tmp_path / "py")], capsys)
    assert code == 2 and "--python" in err and "make server-check" in err


# -- issue 27: refused before the long work, nothing left by a killed build ---------------

@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return (export_tiny(root / "narrow", name="narrow"),
            export_tiny(root / "wide", name="wide", backbone_options=dict(TINY_BACKBONE, widths=[8, 32])))


def one_line_error(code, err, *words):
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("option, value, words", [
    ("--probe-images", "0", "--probe-images: 0; expected a number of images >= 1"),
    ("--time-limit", "-5", "--time-limit: -5; expected a positive number"),
    ("--test-images", "0", "--test-images: 0"), ("--budget-margin", "1.5", "--budget-margin: 1.5")])
def test_impossible_limits_are_one_line_errors(exports, tmp_path, capsys, option, value, words):
    code, out, err = build(["--weights", exports[0], "--out", tmp_path / "out", option, value], capsys)
    one_line_error(code, err, words)
    assert not (tmp_path / "out").exists()


def test_weights_of_another_network_name_the_file_layer_and_shapes(exports, tmp_path, capsys):
    narrow, wide = exports
    mixed = shutil.copytree(narrow, tmp_path / "mixed")
    shutil.copyfile(wide / "model.weights.h5", mixed / "model.weights.h5")
    code, out, err = build(["--weights", mixed, "--out", tmp_path / "out", "--probe-images", "8"], capsys)
    one_line_error(code, err, f"{mixed / 'model.weights.h5'}: layer ", "expected weights of shapes (3, 3, 8, 16)",
                   "found (3, 3, 8, 32)", "mixed/model.json")
    assert "Layer" not in err and "kwargs" not in err and "Model()" not in err
    assert not (tmp_path / "out").exists()


def test_a_truncated_weights_file_names_the_file(exports, tmp_path, capsys):
    cut = shutil.copytree(exports[0], tmp_path / "cut")
    weights = cut / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, out, err = build(["--weights", cut, "--out", tmp_path / "out", "--probe-images", "8"], capsys)
    one_line_error(code, err, f"{weights}: weights: unreadable", "expected a complete Keras .weights.h5")


def test_an_unusable_out_is_refused_before_any_work(exports, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    locked = "/proc/1/out" if os.geteuid() == 0 else tmp_path / "read_only" / "out"
    if os.geteuid() != 0:
        (tmp_path / "read_only").mkdir(mode=0o555)
    before = snapshot(tmp_path)
    for out_dir, words in ((a_file, "is a file"), (a_file / "sub", "is a file"), (locked, "cannot write in")):
        code, out, err = build(["--weights", exports[0], "--out", out_dir, "--probe-images", "8"], capsys)
        one_line_error(code, err, "--out: ", words)
        assert "limits:" not in out  # refused before anything ran
    assert snapshot(tmp_path) == before


def test_one_time_limit_is_the_default_and_printed(tmp_path, capsys):
    assert Limits().time_limit_s == 600
    code, out, err = build(["--weights", tmp_path / "missing", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "missing" in err  # stops at the export, after printing the limits it would check
    assert "time limit 600 s: Codabench's default, --time-limit sets your phase's" in out
    code, out, err = build(["--weights", tmp_path / "missing", "--out", tmp_path / "out", "--time-limit", "3600"],
                           capsys)
    assert "time limit 3600 s: set by --time-limit" in out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")
def test_sigkill_of_build_submission_leaves_no_process_and_the_next_run_cleans_up(exports, tmp_path):
    temp, out = tmp_path / "tmp", tmp_path / "out"
    temp.mkdir()
    # an interpreter that hangs: the validation run never ends
    hanging = tmp_path / "hanging_python"
    hanging.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "import time; time.sleep(120)" "$@"\n')
    hanging.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, str(REPO / "build_submission.py"), "--out", str(out), "--probe-images", "8"]
    run = subprocess.Popen(command + ["--weights", str(exports[0]), "--python", str(hanging)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            if list(out.glob(".submission_*.tmp")) and len(processes_mentioning(str(temp))) >= 2:
                break
            time.sleep(0.1)
        assert list(out.glob(".submission_*.tmp")) and processes_mentioning(str(temp)), "validation never started"
    finally:
        kill_and_expect_no_process(run, temp)
    assert list(temp.glob("bloodcells-*/*"))  # the killed build's staging and validation folders
    # the next build (here one that stops at a missing export) removes what the killed one left
    result = subprocess.run(command + ["--weights", str(tmp_path / "missing")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "missing" in result.stderr
    assert list(out.iterdir()) == []
    assert list(temp.glob("bloodcells-*/*")) == []
