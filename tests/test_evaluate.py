"""bloodcells.evaluate: the evaluation run from settings alone (no command line), the
settings' one-line refusals, and the cross-check of two shift models' estimates (the
command end to end: tests/test_local_eval.py)."""

from __future__ import annotations

import pytest


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
