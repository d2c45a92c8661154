"""bloodcells.compare, through local_eval.py --compare: a paired verdict on the same images,
the line against the best so far and the leaderboard's column, and one-line refusals of
runs that met other images (another test set, another shifted set) or do not exist."""

from __future__ import annotations

import json

import numpy as np

from pixel_zips import PIXEL_MODEL, encoded_images, make_zip, run_local_eval


def two_answers_set(path, a_predictions, b_predictions, labels, seed=0):
    """Red pixel (0, 0) encodes what zip A says, green what zip B says."""
    images = encoded_images(a_predictions, seed)
    images[:, 0, 0, 1] = 30 * np.asarray(b_predictions) + 5
    np.savez(path, images=images, labels=labels)
    return path


def test_compare_gives_a_verdict_on_the_same_images(tmp_path):
    labels = np.arange(48) % 8
    a_says = labels.copy()
    a_says[:12] = (labels[:12] + 1) % 8  # A: 36 of 48; B: all 48 (fixes every A mistake)
    data = two_answers_set(tmp_path / "test.npz", a_says, labels, labels)
    zip_a = make_zip(tmp_path / "A.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 30})})
    zip_b = make_zip(tmp_path / "B.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 30, "channel": 1})})
    assert run_local_eval(tmp_path, zip_a, "--data", data, "--profile", "none").returncode == 0
    evaluated_b = run_local_eval(tmp_path, zip_b, "--data", data, "--profile", "none")
    assert evaluated_b.returncode == 0, evaluated_b.stderr
    assert "against the best so far: B.zip is better than A.zip on clean: +25.0 pt" in evaluated_b.stdout
    win = run_local_eval(tmp_path, "--compare", zip_a, zip_b)
    assert win.returncode == 0, win.stderr
    assert "A 75.0 %, B 100.0 %, B - A +25.0 pt" in win.stdout and "B only 12 / A only 0" in win.stdout
    assert "verdict (none): B.zip is better than A.zip on clean: +25.0 pt" in win.stdout
    assert "worth a submission" in win.stdout
    loss = run_local_eval(tmp_path, "--compare", zip_b, zip_a)
    assert "verdict (none): A.zip is worse than B.zip on clean: -25.0 pt" in loss.stdout
    same = run_local_eval(tmp_path, "--compare", zip_a, tmp_path / "eval" / "A")
    assert "not distinguishable on these images (clean: +0.0 pt [+0.0, +0.0]" in same.stdout
    board_text = run_local_eval(tmp_path, "--leaderboard").stdout
    assert "vs #1" in board_text and "-25.0 [" in board_text and "worse" in board_text


def test_compare_refuses_runs_on_different_images(tmp_path):
    labels = np.arange(16) % 8
    data = two_answers_set(tmp_path / "test.npz", labels, labels, labels)
    other = two_answers_set(tmp_path / "other.npz", labels, labels, labels, seed=1)
    zip_a = make_zip(tmp_path / "A.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 30})})
    zip_b = make_zip(tmp_path / "B.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 30, "channel": 1})})
    zip_c = make_zip(tmp_path / "C.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 31})})
    profiles = ("--profile", "none", "server", "--seeds", "4")
    assert run_local_eval(tmp_path, zip_a, "--data", data, *profiles).returncode == 0
    # The same test set, but the cached shift was rebuilt (other shift code) before B's run.
    cache = next((tmp_path / "cache").glob("*_server_4.npz"))
    with np.load(cache) as cached:
        ops = cached["ops"]
    np.savez(cache, images=encoded_images(labels, seed=5), ops=ops, shift_code=np.asarray("0123456789ab"))
    assert run_local_eval(tmp_path, zip_b, "--data", data, *profiles).returncode == 0
    refused = run_local_eval(tmp_path, "--compare", zip_a, zip_b)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "B.zip: server seed 4: met other images than A.zip (shift code 0123456789ab vs " in refused.stderr
    # Another test set altogether.
    assert run_local_eval(tmp_path, zip_c, "--data", other, *profiles).returncode == 0
    refused = run_local_eval(tmp_path, "--compare", zip_a, zip_c)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: C.zip: data: evaluated on other test images than A.zip")
    assert len(refused.stderr.strip().splitlines()) == 1
    # A zip never evaluated: one line too.
    missing = run_local_eval(tmp_path, "--compare", zip_a, tmp_path / "D.zip")
    assert missing.returncode == 2 and "no such evaluation folder" in missing.stderr
