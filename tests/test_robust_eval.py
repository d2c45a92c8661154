"""Issue 27, local evaluation: leaderboard rows a re-run cannot damage, no process or
temporary folder left by a killed run, one-line errors for unusable output paths and bool
images, one time limit. Tiny numpy-only zips (tests/test_local_eval.py's), --profile none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from bloodcells import leaderboard as board
from bloodcells.ingestion import DEFAULT_TIME_LIMIT
from bloodcells.preflight import Limits
from tests.conftest import REPO, snapshot
from tests.test_local_eval import BROKEN_MODELS, PIXEL_MODEL, encoded_images, make_zip
from tests.test_sandbox import kill_and_expect_no_process, processes_mentioning, wait_for_job_status


def local_eval(tmp_path, *args, env=None, wait=True):
    """local_eval.py in a process of its own (a run the test can SIGKILL; env e.g. TMPDIR)."""
    common = ["--eval-dir", tmp_path / "eval", "--leaderboard-file", tmp_path / "leaderboard.csv",
              "--cache-dir", tmp_path / "cache"]
    command = [sys.executable, str(REPO / "local_eval.py"), *map(str, args), *map(str, common)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", **(env or {})}
    if not wait:
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)


@pytest.fixture
def evaluate(tmp_path, capsys):
    """local_eval.py's main in this process (no interpreter start-up: fast), as
    evaluate(*args) -> (exit status, stdout, stderr)."""
    from bloodcells import local_eval as command_line

    def call(*args, files=True):
        common = ["--eval-dir", tmp_path / "eval", "--leaderboard-file", tmp_path / "leaderboard.csv",
                  "--cache-dir", tmp_path / "cache"] if files else []
        with pytest.raises(SystemExit) as exit_info:
            command_line.main([str(a) for a in (*args, *common)])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=exit_info.value.code, stdout=out, stderr=err)
    return call


@pytest.fixture
def pixel_zip(tmp_path):
    return make_zip(tmp_path / "pixel.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 30})})


def make_test_set(path, n, seed=0):
    labels = np.arange(n) % 8
    predicted = labels.copy()
    predicted[:2] = (labels[:2] + 1) % 8
    np.savez(path, images=encoded_images(predicted, seed), labels=labels)
    return path


def rows(tmp_path):
    return board.read_rows(tmp_path / "leaderboard.csv")


def test_a_failed_re_evaluation_keeps_the_earlier_score_and_its_files(tmp_path, pixel_zip, evaluate):
    data = make_test_set(tmp_path / "test.npz", 24)
    first = evaluate(pixel_zip, "--data", data, "--profile", "none")
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "eval" / "pixel" / "none"
    kept = {name: (folder / name).read_bytes() for name in ("scores.json", "metrics.json", "predictions.csv")}
    again = evaluate(pixel_zip, "--data", data, "--profile", "none", "--python", "/nope/python")
    assert again.returncode == 1 and "FAILED (crashed)" in again.stdout
    (row,) = rows(tmp_path)
    assert float(row["acc_none"]) == pytest.approx(22 / 24) and row["n_none"] == "24"
    assert row["status"].startswith("ok; last attempt failed: none crashed at ")
    assert {name: (folder / name).read_bytes() for name in kept} == kept  # the evaluation is still there
    assert json.loads((folder / "failed_attempt.json").read_text())["status"] == "crashed"
    assert "earlier successful evaluation" in (tmp_path / "eval" / "pixel" / "report.html").read_text()
    shown = evaluate("--leaderboard")
    assert "pixel.zip" in shown.stdout and "not comparable" not in shown.stdout


def test_another_test_set_gets_its_own_row_and_nothing_is_mixed(tmp_path, pixel_zip, evaluate):
    big, small = make_test_set(tmp_path / "big.npz", 24), make_test_set(tmp_path / "small.npz", 8, seed=1)
    assert evaluate(pixel_zip, "--data", big, "--profile", "none").returncode == 0
    before = rows(tmp_path)
    result = evaluate(pixel_zip, "--data", small, "--profile", "none")
    assert result.returncode == 0, result.stderr
    after = rows(tmp_path)
    assert len(after) == 2 and {k: after[0][k] for k in before[0]} == before[0]  # the first row as it was
    assert after[1]["n_none"] == "8" and float(after[1]["acc_none"]) == pytest.approx(6 / 8)
    assert after[0]["data_sha256"] != after[1]["data_sha256"]


def test_a_byte_identical_copy_under_another_name_gets_its_own_row(tmp_path, pixel_zip, evaluate):
    data = make_test_set(tmp_path / "test.npz", 24)
    assert evaluate(pixel_zip, "--data", data, "--profile", "none").returncode == 0
    copy = shutil.copyfile(pixel_zip, tmp_path / "copy.zip")
    result = evaluate(copy, "--data", data, "--profile", "none")
    assert result.returncode == 0, result.stderr
    assert [r["zip"] for r in rows(tmp_path)] == ["pixel.zip", "copy.zip"]
    assert rows(tmp_path)[0]["eval_dir"].endswith("pixel")


def test_a_crashing_zip_is_listed_never_ranked_never_the_best_so_far(tmp_path, pixel_zip, evaluate):
    data = make_test_set(tmp_path / "test.npz", 24)
    crash = make_zip(tmp_path / "crash.zip", BROKEN_MODELS["crash_init"])
    crashed = evaluate(crash, "--data", data, "--profile", "none")
    assert crashed.returncode == 1 and "crash.zip is listed, not ranked (failed: none crashed" in crashed.stdout
    good = evaluate(pixel_zip, "--data", data, "--profile", "none")
    assert good.returncode == 0, good.stderr
    assert "#1 of 1" in good.stdout and "best so far" not in good.stdout
    again = evaluate(crash, "--data", data, "--profile", "none")
    assert "best so far" not in again.stdout and "#" not in again.stdout.split("leaderboard:")[1]
    table = evaluate("--leaderboard").stdout.splitlines()
    assert table[1].split()[:2] == ["1", "pixel.zip"] and table[2].split()[:2] == ["-", "crash.zip"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")
def test_sigkill_of_local_eval_leaves_no_process_and_the_next_run_cleans_up(tmp_path, pixel_zip):
    data = make_test_set(tmp_path / "test.npz", 8)
    temp = tmp_path / "tmp"
    temp.mkdir()
    hanging = make_zip(tmp_path / "hang.zip", BROKEN_MODELS["sleep"])
    run = local_eval(tmp_path, hanging, "--data", data, "--profile", "none", env={"TMPDIR": str(temp)}, wait=False)
    try:
        wait_for_job_status(run, temp, "Model()", 60)
        assert processes_mentioning(str(temp)), "the model never started"
    finally:
        kill_and_expect_no_process(run, temp)
    assert list(temp.glob("bloodcells-*/*"))  # the killed run's copy of the zip and the images
    result = local_eval(tmp_path, pixel_zip, "--data", data, "--profile", "none", env={"TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr
    assert list(temp.glob("bloodcells-*/*")) == []
    # the killed run's log beside the evaluation goes on the zip's next evaluation
    local_eval(tmp_path, hanging, "--data", data, "--profile", "none", "--time-limit", "0.5")
    assert list((tmp_path / "eval" / "hang" / "none").glob(".ingestion.*")) == []


def test_unusable_output_paths_are_one_line_errors_before_any_work(tmp_path, pixel_zip, evaluate):
    data = make_test_set(tmp_path / "test.npz", 8)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    # root writes into a read-only folder; /proc/1 refuses everyone
    locked = read_only if os.geteuid() != 0 else "/proc/1"
    before = snapshot(tmp_path)
    cases = [("--eval-dir", a_file, "is a file"), ("--eval-dir", a_file / "sub", "is a file"),
             ("--eval-dir", f"{locked}/eval", "cannot write in"),
             ("--leaderboard-file", tmp_path, "is a folder"),
             ("--leaderboard-file", f"{locked}/lb.csv", "cannot write in")]
    for option, path, words in cases:
        usable = {"--eval-dir": tmp_path / "eval", "--leaderboard-file": tmp_path / "lb.csv",
                  "--cache-dir": tmp_path / "cache"}
        usable[option] = path
        result = evaluate(pixel_zip, "--data", data, "--profile", "none",
                          *[a for pair in usable.items() for a in pair], files=False)
        assert result.returncode == 2, (option, path, result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {path}: {option}: ") and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "running" not in result.stdout
    read_only.chmod(0o755)
    assert snapshot(tmp_path) == before


def test_bool_images_are_refused(tmp_path, pixel_zip, evaluate):
    path = tmp_path / "bool.npz"
    np.savez(path, images=np.ones((8, 96, 96, 3), bool), labels=np.arange(8))
    result = evaluate(pixel_zip, "--data", path, "--profile", "none")
    assert result.returncode == 2 and "bool images; expected uint8 or float pixels" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "leaderboard.csv").exists()


def test_one_time_limit_for_building_fitting_and_evaluating(tmp_path, pixel_zip, evaluate):
    assert DEFAULT_TIME_LIMIT == 600 and Limits().time_limit_s == DEFAULT_TIME_LIMIT
    data = make_test_set(tmp_path / "test.npz", 8)
    result = evaluate(pixel_zip, "--data", data, "--profile", "none")
    assert "time limit per set 600 s: Codabench's default, --time-limit sets your phase's" in result.stdout
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "share one default time limit, 600 s" in readme
