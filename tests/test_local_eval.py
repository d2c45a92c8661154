"""local_eval.py and bloodcells.ingestion, with tiny handmade zips (a model.py that
predicts from pixel statistics, one that crashes, one that sleeps, one that returns the
wrong shape...); the metrics themselves are tests/test_scoring.py's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from bloodcells import corruptions, shift, stats
from bloodcells.ingestion import run_submission
from bloodcells.scoring import score
from tests.conftest import REPO, snapshot

# Predicts the class written in pixel (0, 0, red) as 30 * class + 5 (or in another
# channel, settings "channel"): tests control the predictions exactly. Reads its threshold from a file next to itself (never the cwd).
PIXEL_MODEL = '''
import os, json
import numpy as np
HERE = os.path.dirname(os.path.abspath(__file__))

class Model:
    def __init__(self):
        with open(os.path.join(HERE, "settings.json")) as fh:
            settings = json.load(fh)
        self.step, self.channel = settings["step"], settings.get("channel", 0)
        print("MODEL CWD", os.getcwd())
        print("MODEL HERE", HERE)

    def predict(self, X):
        return (np.asarray(X)[:, 0, 0, self.channel] // self.step).clip(0, 7).astype(np.int64)

    def predict_proba(self, X):
        p = np.full((len(X), 8), 0.02, np.float32)
        p[np.arange(len(X)), self.predict(X)] = 0.86
        return p
'''

BROKEN_MODELS = {
    "crash": "class Model:\n    def predict(self, X):\n        raise RuntimeError('weights went missing')\n",
    "crash_init": "class Model:\n    def __init__(self):\n        raise ImportError('no module named keras_cv')\n",
    "sleep": "import time\nclass Model:\n    def __init__(self):\n        time.sleep(60)\n"
             "    def predict(self, X):\n        return X[:, 0, 0, 0] * 0\n",
    "sleep_predict": "import time\nclass Model:\n    def predict(self, X):\n        time.sleep(60)\n",
    "wrong_shape": "import numpy as np\nclass Model:\n    def predict(self, X):\n"
                   "        return np.zeros((len(X), 8))\n",
    "too_few": "import numpy as np\nclass Model:\n    def predict(self, X):\n"
               "        return np.zeros(len(X) - 1, dtype=int)\n",
    "out_of_range": "import numpy as np\nclass Model:\n    def predict(self, X):\n"
                    "        return np.full(len(X), 9)\n",
    "ragged": "class Model:\n    def predict(self, X):\n        return [[1], [2, 3]] + [0] * (len(X) - 2)\n",
    "cwd_relative": "class Model:\n    def __init__(self):\n        open('settings.json').read()\n"
                    "    def predict(self, X):\n        return X[:, 0, 0, 0] * 0\n",
    "imports_project": "import bloodcells\nclass Model:\n    def predict(self, X):\n"
                       "        return X[:, 0, 0, 0] * 0\n",
}


def make_zip(path, model_source: str, extra: dict | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.py", model_source)
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return path


@pytest.fixture
def pixel_zip(tmp_path):
    return make_zip(tmp_path / "pixel.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 30})})


def encoded_images(predictions, seed=0):
    """Images on which the pixel model predicts exactly `predictions`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(predictions), 96, 96, 3)).astype(np.uint8)
    images[:, 0, 0, 0] = 30 * np.asarray(predictions) + 5
    return images


# -- ingestion ----------------------------------------------------------------------------------

def test_ingestion_runs_the_model_from_another_working_directory(pixel_zip, tmp_path):
    wanted = np.array([0, 1, 2, 3, 4, 5, 6, 7, 7, 0])
    log = tmp_path / "log.txt"
    result = run_submission(pixel_zip, {"test": encoded_images(wanted)}, time_limit=60, log_path=log)
    assert result.status == "ok", result.message + result.log
    assert np.array_equal(result.predictions["test"], wanted)
    assert result.probabilities["test"].shape == (10, 8)
    assert result.init_seconds is not None and result.init_seconds >= 0
    cwd = next(line for line in log.read_text().splitlines() if line.startswith("MODEL CWD")).split(" ", 2)[2]
    here = next(line for line in log.read_text().splitlines() if line.startswith("MODEL HERE")).split(" ", 2)[2]
    assert cwd != here and cwd.endswith("program") and here.endswith("submission")
    assert str(REPO) not in cwd


@pytest.mark.parametrize("name, status, words", [
    ("crash", "crashed", ["predict", "RuntimeError", "weights went missing"]),
    ("crash_init", "crashed", ["Model()", "no module named keras_cv"]),
    ("cwd_relative", "crashed", ["FileNotFoundError", "settings.json"]),
    ("imports_project", "crashed", ["import", "bloodcells"]),
    ("wrong_shape", "bad_output", ["shape (5, 8)", "expected shape (5,)"]),
    ("too_few", "bad_output", ["shape (4,)"]),
    ("out_of_range", "bad_output", ["outside 0-7"]),
    ("ragged", "bad_output", ["not a numeric array"]),
])
def test_failing_submissions_are_reported_with_their_log(tmp_path, name, status, words):
    zip_path = make_zip(tmp_path / f"{name}.zip", BROKEN_MODELS[name], {"settings.json": "{}"})
    log = tmp_path / "ingestion.log"
    result = run_submission(zip_path, {"test": encoded_images(np.zeros(5, int))}, time_limit=60, log_path=log)
    assert result.status == status, (result.status, result.message)
    for word in words:
        assert word in result.message, (word, result.message)
    assert not result.predictions
    if status == "crashed":
        assert "Traceback" in log.read_text()


@pytest.mark.parametrize("name, stage", [("sleep", "Model()"), ("sleep_predict", "predict")])
def test_a_submission_past_the_time_limit_is_stopped(tmp_path, name, stage):
    zip_path = make_zip(tmp_path / f"{name}.zip", BROKEN_MODELS[name])
    start = time.monotonic()
    result = run_submission(zip_path, {"test": encoded_images(np.zeros(3, int))}, time_limit=2.0)
    assert result.status == "timeout"
    assert "time limit of 2 s" in result.message and stage in result.message
    assert time.monotonic() - start < 30  # killed, not waited for


def test_bad_zips_fail_before_running(tmp_path):
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive:
        archive.writestr("sub/model.py", PIXEL_MODEL)
    result = run_submission(nested, {"test": encoded_images([0])}, time_limit=10)
    assert result.status == "bad_zip" and "sub/model.py" in result.message
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    assert run_submission(junk, {"test": encoded_images([0])}, time_limit=10).status == "bad_zip"


# -- local_eval.py end to end -------------------------------------------------------------------

def run_local_eval(tmp_path, *args):
    common = ["--eval-dir", tmp_path / "eval", "--leaderboard-file", tmp_path / "leaderboard.csv",
              "--cache-dir", tmp_path / "cache"]
    return subprocess.run([sys.executable, str(REPO / "local_eval.py"), *map(str, args), *map(str, common)],
                           cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})


@pytest.fixture
def test_set(tmp_path):
    labels = np.arange(24) % 8
    predicted = labels.copy()
    predicted[:3] = (labels[:3] + 1) % 8  # 3 wrong: accuracy 21/24 on clean images
    path = tmp_path / "test.npz"
    np.savez(path, images=encoded_images(predicted), labels=labels)
    return path, labels, predicted


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


def test_the_evaluation_runs_from_settings_without_a_command_line(pixel_zip, test_set, tmp_path):
    from bloodcells.evaluate import EvalSettings, evaluate_zip

    data, _, _ = test_set
    settings = EvalSettings(zip_path=pixel_zip, data=data, profiles=("none", "none"), eval_dir=tmp_path / "eval",
                            leaderboard_file=tmp_path / "board.csv", cache_dir=tmp_path / "cache")
    assert settings.profiles == ("none",) and settings.seeds == (1, 2, 3)
    done = evaluate_zip(settings)
    assert done.ok and done.images == 24 and list(done.results) == ["none"]
    assert done.results["none"]["accuracy"] == pytest.approx(21 / 24)
    assert done.report == tmp_path / "eval" / "pixel" / "report.html" and done.report.exists()
    assert done.row["zip"] == "pixel.zip" and float(done.row["acc_none"]) == pytest.approx(21 / 24)
    assert [r["zip"] for r in done.rows] == ["pixel.zip"]


@pytest.mark.parametrize("field, value, message", [
    ("profiles", ("none", "wild"), "--profile: unknown 'wild'; expected some of none, server, second_opinion, sweep"),
    ("time_limit", 0, "--time-limit: 0; expected a positive number of seconds"),
    ("seeds", (1, -2), "--seeds: 1 -2; expected non-negative integers"),
    ("sweep_images", 3, "--sweep-images: 3; expected at least 8"),
])
def test_eval_settings_refuse_a_bad_value_in_one_line(tmp_path, field, value, message):
    from bloodcells.cli import UserError
    from bloodcells.evaluate import EvalSettings

    with pytest.raises(UserError) as refused:
        EvalSettings(zip_path=tmp_path / "a.zip", data=tmp_path / "test.npz", **{field: value})
    assert str(refused.value) == message


# -- paired comparison ------------------------------------------------------------------------------

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


def test_two_shift_models_that_disagree_beyond_their_intervals_are_flagged(monkeypatch):
    from bloodcells import evaluate

    def estimate(accuracy, low, high):
        return {"status": "ok", "accuracy": accuracy, "accuracy_ci": [low, high]}

    apart = {"server": estimate(0.86, 0.84, 0.88), "second_opinion": estimate(0.70, 0.67, 0.73)}
    assert "disagree by more than their intervals" in evaluate.cross_check(apart)[0]
    close = {"server": estimate(0.86, 0.84, 0.88), "second_opinion": estimate(0.85, 0.83, 0.87)}
    assert evaluate.cross_check(close) == ["server and second_opinion agree within their 95 % intervals"]
    assert evaluate.cross_check({"server": apart["server"]}) == []  # one estimate: nothing to check
    # Generic over profile names: the same check for any pair in CROSS_CHECKS.
    monkeypatch.setattr(evaluate, "CROSS_CHECKS", (("none", "server"),))
    flagged = evaluate.cross_check({"none": estimate(0.95, 0.93, 0.97), "server": apart["server"]})
    assert flagged[0].startswith("warning: none (95.0 % [93.0, 97.0]) and server (86.0 % [84.0, 88.0])")
