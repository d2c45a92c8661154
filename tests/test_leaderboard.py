"""bloodcells.leaderboard and local_eval.py --record-server / --leaderboard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from bloodcells import leaderboard as board
from bloodcells import stats as bstats
from bloodcells.cli import UserError
from tests.conftest import REPO


def row(sha, acc_none, acc_server, **extra):
    return {"time": "2026-01-01T00:00:00Z", "zip": f"{sha}.zip", "zip_sha256": sha, "status": "ok",
            "acc_none": acc_none, "acc_server": acc_server, **extra}


def test_record_evaluation_inserts_then_updates_the_same_zip(tmp_path):
    path = tmp_path / "lb.csv"
    board.record_evaluation(path, row("aaa", 0.9, 0.5, fam_blur=0.4))
    board.record_evaluation(path, row("bbb", 0.8, 0.6))
    assert [r["zip_sha256"] for r in board.read_rows(path)] == ["aaa", "bbb"]
    # Same zip again with only a sweep: its other columns are kept.
    board.record_evaluation(path, {"zip_sha256": "aaa", "zip": "aaa.zip", "acc_sweep": 0.45})
    rows = {r["zip_sha256"]: r for r in board.read_rows(path)}
    assert len(rows) == 2
    assert rows["aaa"]["acc_sweep"] == "0.45" and rows["aaa"]["acc_none"] == "0.9"
    assert rows["aaa"]["fam_blur"] == "0.4" and rows["bbb"]["fam_blur"] == ""


def test_record_server_by_file_hash_or_name(tmp_path):
    path = tmp_path / "lb.csv"
    board.record_evaluation(path, row("aaa", 0.9, 0.5))
    board.record_server(path, "aaa", "renamed.zip", 0.47, "t")
    board.record_server(path, None, "aaa.zip", 0.48, "t")  # by name: same row
    board.record_server(path, "ccc", "new.zip", 0.3, "t")  # never evaluated: a row of its own
    rows = {r["zip_sha256"]: r for r in board.read_rows(path)}
    assert rows["aaa"]["server_score"] == "0.48" and rows["ccc"]["status"] == "not evaluated"
    with pytest.raises(UserError, match="not in the leaderboard"):
        board.record_server(path, None, "unknown.zip", 0.5, "t")


def test_ranking_and_spearman():
    rows = [row("a", 0.99, 0.40), row("b", 0.90, 0.60), row("c", 0.95, ""), row("d", 0.80, 0.55)]
    assert [r["zip_sha256"] for r in board.ranking(rows)] == ["b", "d", "a", "c"]
    x, y = [0.1, 0.4, 0.4, 0.9, 0.3], [1, 3, 2, 5, 2]
    assert bstats.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert np.isnan(bstats.spearman([1, 1, 1], [1, 2, 3]))


def test_leaderboard_columns_are_generic_per_profile_and_show_intervals():
    rows = [row("a", 0.9, 0.5, acc_server_lo=0.45, acc_server_hi=0.55, acc_server_min=0.48, acc_server_max=0.52,
                seeds_server="1 2 3", acc_second_opinion=0.6, acc_second_opinion_lo=0.57, acc_second_opinion_hi=0.63)]
    assert board.profiles_in(rows) == ["none", "server", "second_opinion"]
    assert "acc_second_opinion" in board.local_scores(rows)
    text = board.format_leaderboard(rows)
    header, line = text.splitlines()[:2]
    assert "server-like %" in header and "second_opinion %" in header and "server-like per seed" in header
    assert "50.0 [45.0, 55.0]" in line and "48.0-52.0 (seeds 1,2,3)" in line and "60.0 [57.0, 63.0]" in line


def test_expected_server_score_needs_three_server_scores_and_names_the_best_predictor():
    rows = [row("a", 0.99, 0.40, server_score=0.42), row("b", 0.90, 0.60, server_score=0.61)]
    assert not any(f.ok for f in board.server_fits(rows).values())
    text = board.format_leaderboard(rows)
    assert "2 server score(s) recorded" in text and "expected server" not in text.splitlines()[0]
    # Clean accuracy ranks them the wrong way round; the server-like profile nearly on a line.
    rows.append(row("c", 0.97, 0.50, server_score=0.52))
    rows.append(row("d", 0.95, 0.55))  # no server score yet: gets an expected one
    fits = board.server_fits(rows)
    assert fits["acc_server"].rho == pytest.approx(1.0) and fits["acc_none"].rho == pytest.approx(-1.0)
    assert board.best_fit(fits)[0] == "acc_server"
    text = board.format_leaderboard(rows)
    assert "<- predicts best" in text.split("acc_server ")[1].splitlines()[0]
    assert "expected server = " in text and "fit of acc_server" in text
    line_d = next(line for line in text.splitlines() if line.split()[1:2] == ["d.zip"])
    expected, low, high = fits["acc_server"].predict(0.55)
    assert f"{100 * expected:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in line_d
    assert 0.55 < expected < 0.59  # between c's and b's server scores


def test_a_failed_write_leaves_the_old_leaderboard_intact(tmp_path, monkeypatch):
    path = tmp_path / "lb.csv"
    board.record_evaluation(path, row("aaa", 0.9, 0.5))
    old = path.read_bytes()

    def broken(value):
        raise OSError("disk full")

    monkeypatch.setattr(board, "_cell", broken)
    with pytest.raises(OSError, match="disk full"):
        board.record_evaluation(path, row("bbb", 0.8, 0.6))
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.csv", "lb.csv.lock"]  # no temp left


# A writer killed with SIGKILL half-way through writing the new leaderboard.
KILLED_WRITER = r'''
import sys, time
from pathlib import Path
from bloodcells import leaderboard as board
from bloodcells import stats as bstats

class Slow:
    def __str__(self):
        Path(sys.argv[2]).write_text("writing")  # the header and a row are in the temp file now
        time.sleep(60)
        return "x"

rows = board.read_rows(sys.argv[1])
rows.append({"zip_sha256": "new", "zip": Slow()})
rows.append({"zip_sha256": "later", "zip": "later.zip"})
board.write_rows(sys.argv[1], rows)
'''


def test_a_killed_write_leaves_the_old_leaderboard_intact(tmp_path):
    path = tmp_path / "lb.csv"
    board.record_evaluation(path, row("aaa", 0.9, 0.5))
    old = path.read_bytes()
    marker = tmp_path / "marker"
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(marker)],
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "writer never reached the middle of its write"
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".lb.csv.")]
        assert temps and temps[0].stat().st_size > 0  # it really was half-way
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert path.read_bytes() == old
    assert [r["zip_sha256"] for r in board.read_rows(path)] == ["aaa"]


def test_a_file_that_is_not_a_leaderboard_is_refused(tmp_path):
    path = tmp_path / "lb.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="zip_sha256"):
        board.read_rows(path)


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, str(REPO / "local_eval.py"), *map(str, args),
                           "--leaderboard-file", str(tmp_path / "lb.csv")], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_cli_record_server_and_print_leaderboard(tmp_path):
    empty = cli(tmp_path, "--leaderboard")
    assert empty.returncode == 0 and "leaderboard is empty" in empty.stdout
    zips = []
    for k in range(3):
        z = tmp_path / f"sub{k}.zip"
        z.write_bytes(b"zip %d" % k)
        import hashlib
        sha = hashlib.sha256(z.read_bytes()).hexdigest()
        board.record_evaluation(tmp_path / "lb.csv", row(sha, 0.99 - k / 100, 0.4 + k / 10) | {"zip": z.name})
        zips.append(z)
    for k, z in enumerate(zips):
        result = cli(tmp_path, "--record-server", z, f"{41 + 10 * k}")  # a percentage
        assert result.returncode == 0, result.stderr
        assert "read as a percentage" in result.stdout
    shown = cli(tmp_path, "--leaderboard")
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[1].split()[1] == "sub2.zip"  # best server-like accuracy first
    assert "acc_server" in shown.stdout and "rho +1.00  (n=3)" in shown.stdout and "<- predicts best" in shown.stdout
    assert "61.0" in shown.stdout


# -- rows keep what was measured (issue 27) ------------------------------------------------------

def test_a_failed_attempt_keeps_the_earlier_score_beside_it(tmp_path):
    path = tmp_path / "lb.csv"
    board.record_evaluation(path, row("aaa", 0.9, 0.5, data_sha256="d1", seed="1 2 3", failed_none=""))
    board.record_evaluation(path, {"zip_sha256": "aaa", "zip": "aaa.zip", "data_sha256": "d1", "seed": "1 2 3",
                                   "failed_none": "crashed at 2026-01-02T00:00:00Z"})
    (kept,) = board.read_rows(path)
    assert kept["acc_none"] == "0.9" and kept["acc_server"] == "0.5"
    assert kept["status"] == "ok; last attempt failed: none crashed at 2026-01-02T00:00:00Z"
    assert board.is_ranked(kept)
    # a later success clears the failed attempt
    board.record_evaluation(path, {**row("aaa", 0.91, 0.5), "data_sha256": "d1", "seed": "1 2 3", "failed_none": ""})
    (kept,) = board.read_rows(path)
    assert kept["acc_none"] == "0.91" and kept["status"] == "ok"


def test_other_test_sets_and_copies_under_other_names_get_their_own_rows(tmp_path):
    path = tmp_path / "lb.csv"
    board.record_evaluation(path, row("aaa", 0.9, 0.6, data_sha256="d1", seed="1 2 3", n_none=320, n_server=320))
    board.record_evaluation(path, {"zip_sha256": "aaa", "zip": "aaa.zip", "data_sha256": "d2", "seed": "1 2 3",
                                   "acc_none": 0.125, "n_none": 64, "status": "ok"})
    board.record_evaluation(path, row("aaa", 0.9, 0.6, data_sha256="d1", seed="1 2 3") | {"zip": "copy.zip"})
    rows = board.read_rows(path)
    assert [(r["zip"], r["data_sha256"]) for r in rows] == [("aaa.zip", "d1"), ("aaa.zip", "d2"), ("copy.zip", "d1")]
    first = rows[0]
    assert (first["acc_none"], first["n_none"], first["acc_server"], first["n_server"]) == ("0.9", "320", "0.6", "320")
    assert rows[1]["acc_server"] == "" and rows[1]["n_none"] == "64"  # never mixed with the other test set
    text = board.format_leaderboard(rows)
    assert "test set" in text.splitlines()[0]


def test_a_crashed_zip_is_listed_but_never_ranked_nor_compared(tmp_path):
    path = tmp_path / "lb.csv"
    board.record_evaluation(path, row("good", 0.9, 0.5))
    board.record_evaluation(path, {"zip_sha256": "bad", "zip": "bad.zip", "acc_none": "", "acc_server": "",
                                   "failed_none": "crashed at t", "failed_server": "crashed at t"})
    board.record_evaluation(path, row("fine", 0.8, 0.4))
    rows = board.read_rows(path)
    assert [r["zip"] for r in board.ranking(rows)] == ["good.zip", "fine.zip"]
    bad = next(r for r in rows if r["zip"] == "bad.zip")
    assert bad["status"] == "failed: none crashed at t, server crashed at t" and not board.is_ranked(bad)
    compared = []
    text = board.format_leaderboard(rows, compare=lambda best, r: compared.append((best["zip"], r["zip"])) or "x")
    assert compared == [("good.zip", "fine.zip")]
    line = next(line for line in text.splitlines() if "bad.zip" in line)
    assert line.split()[0] == "-" and "listed, not ranked" in text
