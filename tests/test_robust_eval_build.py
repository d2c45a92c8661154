"""Issue 27, building: one-line errors (exit 2) for impossible limits, weights that do not
fit their model.json, truncated weights and unusable --out, checked before the long work;
no process or temporary file left by a killed build. Tiny untrained exports."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time

import pytest

from bloodcells import submission
from bloodcells.build import build_main
from bloodcells.untrained import TINY_BACKBONE, export_tiny
from bloodcells.preflight import Limits
from tests.conftest import REPO, snapshot
from tests.test_sandbox import kill_and_expect_no_process, processes_mentioning


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return (export_tiny(root / "narrow", name="narrow"),
            export_tiny(root / "wide", name="wide", backbone_options=dict(TINY_BACKBONE, widths=[8, 32])))


def build(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


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


def test_a_temporary_zip_is_removed_by_the_next_build_unless_a_running_build_holds_it(tmp_path):
    stale = tmp_path / ".submission_260101_000000.zip.99999999.tmp"
    running = tmp_path / ".submission_260101_000001.zip.4242.tmp"
    stale.write_bytes(b"half a zip")
    running.write_bytes(b"half a zip")
    with open(running, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert submission.remove_stale_zips(tmp_path) == [stale]
        assert running.exists() and not stale.exists()
    assert submission.remove_stale_zips(tmp_path) == [running]


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
