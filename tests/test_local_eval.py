"""local_eval.py and bloodcells.local_eval, the evaluation command end to end on tiny
handmade zips (tests/pixel_zips.py): scores with their intervals, figures, the report and
the leaderboard; shifted sets cached per seed; a failed zip; the sweep; one-line errors;
and what a failed, repeated or killed run leaves (issue 27). Running a zip is
tests/test_ingestion.py's, the evaluation's parts tests/test_evaluate.py's, the comparison
tests/test_compare.py's, the metrics tests/test_scoring.py's."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from bloodcells import corruptions, shift, stats
from bloodcells import leaderboard as board
from bloodcells.ingestion import DEFAULT_TIME_LIMIT
from bloodcells.preflight import Limits
from bloodcells.scoring import score
from pixel_zips import BROKEN_MODELS, encoded_images, make_zip, run_local_eval
from processes import kill_and_expect_no_process, processes_mentioning, wait_for_job_status
from tests.conftest import REPO, snapshot


# -- the evaluation end to end ---------------------------------------------------------------

def test_local_eval_scores_figures_report_and_leaderboard(pixel_zip, test_set, tmp_path):
    data, labels, predicted = test_set
    result = run_local_eval(tmp_path, pixel_zip, "--data", data)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "eval" / "pixel"
    clean = json.loads((folder / "none" / "scores.json").read_text())
    assert clean["accuracy"] == pytest.approx(21 / 24)
    # Every score with its 95 % interval and the image count (Wilson for accuracy).
    assert [clean["accuracy_ci_low"], clean["accuracy_ci_high"]] == pytest.approx(
        list(stats.wilson_interval(21, 24)))
    assert clean["n"] == 24 and clean["macro_f1_ci_low"] <= clean["macro_f1"] <= clean["macro_f1_ci_high"]
    low, high = stats.wilson_interval(21, 24)
    assert f"clean 87.5 [{100 * low:.1f}, {100 * high:.1f}]" in result.stdout  # the leaderboard line
    assert "95 % intervals over 24 images" in result.stdout
    assert clean["macro_f1"] == pytest.approx(score(labels, predicted)["macro_f1"])
    shifted = json.loads((folder / "server" / "scores.json").read_text())
    assert 0 <= shifted["accuracy"] < clean["accuracy"]  # the pixel code is destroyed by most corruptions
    for name in ("confusion.png", "wrong.png", "confidence.png"):
        assert (folder / "none" / name).read_bytes()[:4] == b"\x89PNG"
    assert (folder / "server" / "families.png").exists()
    page = (folder / "report.html").read_text()
    assert "none/confusion.png" in page and "server/families.png" in page
    rows = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 2 and "pixel.zip" in rows[1]
    header = rows[0].split(",")
    for column in ("acc_none_lo", "acc_none_hi", "acc_server_lo", "acc_server_min", "acc_server_max", "n_server",
                   "seeds_server"):
        assert column in header, column
    assert "#1 of 1" in result.stdout


def test_shifted_sets_are_cached_and_reused_one_per_seed(pixel_zip, test_set, tmp_path):
    data, labels, _ = test_set
    first = run_local_eval(tmp_path, pixel_zip, "--data", data, "--profile", "server")
    assert first.returncode == 0, first.stderr
    assert "shift seeds 1, 2, 3 (cached in " in first.stdout  # the default: seeds training never selects with
    assert "select epochs with" not in first.stdout
    caches = sorted((tmp_path / "cache").glob("*_server_*.npz"))
    assert [c.stem.rsplit("_", 1)[1] for c in caches] == ["1", "2", "3"]
    with np.load(caches[1]) as cached:
        assert np.array_equal(cached["images"], shift.apply_shift(np.load(data)["images"], "server", 2))
        ops = cached["ops"]
        code = cached["shift_code"]
    # Replace seed 2's cached images: the next evaluation must use them, not recompute.
    planted = encoded_images(labels)  # the pixel model scores 100 % on these
    np.savez(caches[1], images=planted, ops=ops, shift_code=code)
    second = run_local_eval(tmp_path, pixel_zip, "--data", data, "--profile", "server")
    assert second.returncode == 0, second.stderr
    metrics = json.loads((tmp_path / "eval" / "pixel" / "server" / "metrics.json").read_text())
    assert metrics["sets"]["server_seed2"]["accuracy"] == 1.0
    assert metrics["sets"]["server_seed1"]["accuracy"] < 1.0
    assert metrics["accuracy"] == pytest.approx(np.mean([v["accuracy"] for v in metrics["sets"].values()]))
    training_seed = run_local_eval(tmp_path, pixel_zip, "--data", data, "--profile", "server", "--seed", "0")
    assert "shift seed 0 is the one training configs select epochs with" in training_seed.stdout


def test_failed_submission_gets_log_no_scores_and_exit_1(tmp_path, test_set):
    data, _, _ = test_set
    zip_path = make_zip(tmp_path / "crash.zip", BROKEN_MODELS["crash"])
    result = run_local_eval(tmp_path, zip_path, "--data", data, "--profile", "none")
    assert result.returncode == 1
    assert "FAILED (crashed)" in result.stdout and "weights went missing" in result.stdout
    folder = tmp_path / "eval" / "crash" / "none"
    assert not (folder / "scores.json").exists()
    assert json.loads((folder / "metrics.json").read_text())["status"] == "crashed"
    assert "Traceback" in (folder / "ingestion.log").read_text()
    assert "FAILED" in (tmp_path / "eval" / "crash" / "report.html").read_text()
    assert "failed: none crashed" in (tmp_path / "leaderboard.csv").read_text()


def test_sweep_profile_writes_a_family_by_severity_table(pixel_zip, test_set, tmp_path):
    data, _, _ = test_set
    result = run_local_eval(tmp_path, pixel_zip, "--data", data, "--profile", "sweep", "--sweep-images", "8")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "eval" / "pixel" / "sweep"
    lines = (folder / "sweep.csv").read_text().splitlines()
    assert len(lines) == 1 + 5 * len(corruptions.FAMILIES)
    by_set = json.loads((folder / "metrics.json").read_text())["sets"]
    # the pixel model reads pixel (0,0): a horizontal flip moves it, a posterize at 6 bits keeps it
    assert by_set["posterize_s1"] > by_set["flip_s1"]
    assert (folder / "families.png").exists()


def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, pixel_zip, test_set):
    data, _, _ = test_set
    before = snapshot(tmp_path)
    for args in ([pixel_zip], [pixel_zip, "--data", tmp_path / "missing.npz"],
                 [pixel_zip, "--data", data, "--profile", "wild"], [tmp_path / "none.zip", "--data", data],
                 ["--record-server", pixel_zip, "abc"], ["--record-server", pixel_zip, "150"],
                 [pixel_zip, "--data", data, "--time-limit", "0"]):
        result = run_local_eval(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot(tmp_path) == before


def test_held_out_split_is_used_by_default(tmp_path, pixel_zip):
    labels = np.arange(8)
    path = tmp_path / "med.npz"
    np.savez(path, train_images=encoded_images(np.zeros(8, int)), train_labels=labels,
             val_images=encoded_images(labels), val_labels=labels)
    result = run_local_eval(tmp_path, pixel_zip, "--data", path, "--profile", "none")
    assert result.returncode == 0, result.stderr
    assert "'val' split" in result.stdout
    assert json.loads((tmp_path / "eval" / "pixel" / "none" / "scores.json").read_text())["accuracy"] == 1.0


# -- issue 27: rows a re-run cannot damage, nothing left by a killed run, one-line errors

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
    run = run_local_eval(tmp_path, hanging, "--data", data, "--profile", "none", env={"TMPDIR": str(temp)}, wait=False)
    try:
        wait_for_job_status(run, temp, "Model()", 60)
        assert processes_mentioning(str(temp)), "the model never started"
    finally:
        kill_and_expect_no_process(run, temp)
    assert list(temp.glob("bloodcells-*/*"))  # the killed run's copy of the zip and the images
    result = run_local_eval(tmp_path, pixel_zip, "--data", data, "--profile", "none", env={"TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr
    assert list(temp.glob("bloodcells-*/*")) == []
    # the killed run's log beside the evaluation goes on the zip's next evaluation
    run_local_eval(tmp_path, hanging, "--data", data, "--profile", "none", "--time-limit", "0.5")
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
