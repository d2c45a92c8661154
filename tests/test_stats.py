"""bloodcells.stats: intervals against hand-computed values, McNemar and the verdict on
constructed predictions, and the local -> server fit on made-up server scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bloodcells import stats


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# -- intervals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n", [(8, 10), (0, 20), (20, 20), (1485, 1707)])
def test_wilson_interval_matches_the_formula(k, n):
    assert stats.wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_wilson_interval_of_8_in_10_by_hand():
    # p = 0.8, z = 1.96: centre 0.7167, half-width 0.2266
    assert stats.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_score_intervals_of_one_set():
    labels = np.arange(400) % 8
    predictions = labels.copy()
    predictions[:60] = (labels[:60] + 1) % 8  # 340 of 400 right
    out = stats.score_intervals(labels, predictions)
    assert out["n"] == 400 and out["accuracy"] == pytest.approx(0.85)
    assert out["accuracy_ci"] == pytest.approx(list(wilson_by_hand(340, 400)))
    # Bootstrap intervals: around the point value, about the width of the binomial interval
    # (+-1.96 sqrt(p(1-p)/n) = +-3.5 pt), and reproducible (seeded).
    for key in ("balanced_accuracy", "macro_f1"):
        low, high = out[f"{key}_ci"]
        assert low < out[key] < high
        assert 0.05 < high - low < 0.09
    assert stats.score_intervals(labels, predictions) == out


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_metrics_equal_scikit_learn():
    from sklearn import metrics as sk

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, (4, 250))
    labels[2, labels[2] == 5] = 4  # a class missing from one row
    predictions = np.where(rng.random((4, 250)) < 0.7, labels, rng.integers(0, 8, (4, 250)))
    accuracy, balanced, macro_f1 = stats.class_metrics(labels, predictions)
    for r in range(4):
        assert accuracy[r] == pytest.approx(sk.accuracy_score(labels[r], predictions[r]))
        assert balanced[r] == pytest.approx(sk.balanced_accuracy_score(labels[r], predictions[r]))
        assert macro_f1[r] == pytest.approx(sk.f1_score(labels[r], predictions[r], average="macro"))


def test_class_metrics_by_hand_with_a_class_never_predicted_and_one_never_true():
    # class 4 never predicted, class 6 predicted but never true; a second row all right
    labels = np.array([[0, 0, 1, 4], [0, 0, 1, 4]])
    predictions = np.array([[0, 1, 1, 6], [0, 0, 1, 4]])
    accuracy, balanced, macro_f1 = stats.class_metrics(labels, predictions)
    assert accuracy == pytest.approx([2 / 4, 1.0])
    assert balanced == pytest.approx([(1 / 2 + 1 + 0) / 3, 1.0])  # recalls of classes 0, 1, 4
    assert macro_f1 == pytest.approx([(2 / 3 + 2 / 3 + 0 + 0) / 4, 1.0])  # F1 of classes 0, 1, 4, 6
    # the same along another axis
    transposed = stats.class_metrics(labels.T, predictions.T, axis=0)
    assert np.allclose(transposed, (accuracy, balanced, macro_f1))


def test_mean_over_draws_and_its_interval():
    labels = np.arange(200) % 8
    draws = np.stack([labels, labels, labels])
    draws[0, :20] = (labels[:20] + 1) % 8  # 90 %, 100 %, 100 %
    out = stats.score_intervals(labels, draws)
    assert out["draws"] == 3 and out["accuracy"] == pytest.approx((0.9 + 1 + 1) / 3)
    assert out["accuracy_interval"] == "bootstrap over images"
    low, high = out["accuracy_ci"]
    assert low < out["accuracy"] < high <= 1.0
    # All right on every draw: nothing to resample, the interval is the point.
    perfect = stats.score_intervals(labels, np.stack([labels, labels]))
    assert perfect["accuracy_ci"] == [1.0, 1.0] and perfect["macro_f1_ci"] == [1.0, 1.0]


# -- paired comparison ------------------------------------------------------------------------

def test_mcnemar_exact_by_hand():
    a = np.array([True] * 10 + [False] * 10)
    b = np.array([True] * 10 + [True] * 10)  # B right on 10 images A got wrong, never the reverse
    test = stats.mcnemar_exact(a, b)
    assert (test["only_a"], test["only_b"]) == (0, 10)
    assert test["p"] == pytest.approx(2 * 0.5 ** 10)
    # 3 against 1: two-sided binomial p = 2 * P(X <= 1 | 4, 1/2) = 2 * 5/16
    a = np.array([1, 1, 1, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 1, 1, 0], bool)
    assert stats.mcnemar_exact(a, b) == {"only_a": 3, "only_b": 1, "p": pytest.approx(10 / 16)}
    assert stats.mcnemar_exact(a, a)["p"] == 1.0  # no discordant image


def constructed(n=500, a_wrong=(), b_wrong=()):
    a = np.ones(n, bool)
    b = np.ones(n, bool)
    a[list(a_wrong)] = False
    b[list(b_wrong)] = False
    return a, b


def test_verdict_clear_win_clear_loss_and_tie():
    a, b = constructed(a_wrong=range(0, 60), b_wrong=range(50, 60))  # B fixes 50 of A's 60 mistakes
    win = stats.paired_difference(a, b)
    assert win["difference"] == pytest.approx(50 / 500)
    assert 0 < win["ci"][0] < 0.1 < win["ci"][1]
    kind, line = stats.verdict(win, [stats.mcnemar_exact(a, b)], "A.zip", "B.zip", "server-like")
    assert kind == "better" and "B.zip is better than A.zip on server-like: +10.0 pt" in line
    assert "worth a submission" in line

    loss = stats.paired_difference(b, a)
    kind, line = stats.verdict(loss, [stats.mcnemar_exact(b, a)], "A.zip", "B.zip", "server-like")
    assert kind == "worse" and "-10.0 pt" in line and "keep A.zip" in line

    # 15 images each way: the same accuracy, different mistakes.
    a, b = constructed(a_wrong=range(0, 15), b_wrong=range(15, 30))
    tie = stats.paired_difference(a, b)
    assert tie["difference"] == 0 and tie["ci"][0] < 0 < tie["ci"][1]
    kind, line = stats.verdict(tie, [stats.mcnemar_exact(a, b)], "A.zip", "B.zip", "clean")
    assert kind == "tie" and "not distinguishable on these images" in line and "McNemar p 1" in line


def test_a_win_needs_every_draw_to_agree():
    # Draw 1: B clearly better; draw 2: the same mistakes. The mean difference's interval
    # excludes zero, but one draw's McNemar test does not: no claim.
    a1, b1 = constructed(a_wrong=range(0, 40))
    a2, b2 = constructed(a_wrong=range(0, 5), b_wrong=range(0, 5))
    difference = stats.paired_difference(np.stack([a1, a2]), np.stack([b1, b2]))
    assert difference["ci"][0] > 0
    tests = [stats.mcnemar_exact(a1, b1), stats.mcnemar_exact(a2, b2)]
    assert stats.verdict(difference, tests, "A", "B", "server-like")[0] == "tie"


def test_intervals_disagree():
    assert stats.intervals_disagree({"accuracy_ci": [0.80, 0.84]}, {"accuracy_ci": [0.85, 0.90]})
    assert not stats.intervals_disagree({"accuracy_ci": [0.80, 0.86]}, {"accuracy_ci": [0.85, 0.90]})


# -- local -> server fit ------------------------------------------------------------------------

def test_fit_on_made_up_server_scores_on_a_line():
    local = [0.50, 0.60, 0.70, 0.80]
    server = [0.40, 0.46, 0.52, 0.58]  # server = 0.6 local + 0.1 exactly
    fit = stats.ServerFit(local, server)
    assert fit.ok and fit.kind == "linear" and fit.rho == pytest.approx(1.0)
    assert fit.loo_error == pytest.approx(0.0, abs=1e-12)
    expected, low, high = fit.predict(0.65)
    assert expected == pytest.approx(0.49) and low == pytest.approx(0.49) and high == pytest.approx(0.49)


def test_fit_interval_is_the_ols_prediction_interval():
    from scipy import stats as sps

    local, server = np.array([0.5, 0.6, 0.7, 0.8, 0.9]), np.array([0.42, 0.44, 0.55, 0.56, 0.66])
    fit = stats.ServerFit(local, server)
    assert fit.kind == "linear"
    slope, intercept = np.polyfit(local, server, 1)
    s = np.sqrt(np.sum((server - (intercept + slope * local)) ** 2) / 3)
    half = sps.t.ppf(0.975, 3) * s * np.sqrt(1 + 1 / 5 + (0.75 - 0.7) ** 2 / np.sum((local - 0.7) ** 2))
    assert fit.predict(0.75) == pytest.approx((intercept + slope * 0.75, intercept + slope * 0.75 - half,
                                               intercept + slope * 0.75 + half))


def test_a_step_is_fitted_monotone_when_that_predicts_better():
    local = [0.50, 0.52, 0.54, 0.80, 0.82, 0.84]
    server = [0.40, 0.40, 0.40, 0.60, 0.60, 0.60]
    fit = stats.ServerFit(local, server)
    assert fit.kind == "monotone" and fit.loo_mae["monotone"] < fit.loo_mae["linear"]
    assert fit.predict(0.83)[0] == pytest.approx(0.60)


def test_fit_degenerate_cases():
    two = stats.ServerFit([0.5, 0.7], [0.4, 0.5])
    assert not two.ok and "2 pair(s)" in two.reason
    with pytest.raises(ValueError):
        two.predict(0.6)
    flat = stats.ServerFit([0.6, 0.6, 0.6], [0.4, 0.5, 0.45])
    assert not flat.ok and "same for every zip" in flat.reason and np.isnan(flat.rho)
    # A constant server score: the fit is that constant, with no error; rho undefined.
    constant = stats.ServerFit([0.5, 0.6, 0.7], [0.45, 0.45, 0.45])
    assert constant.ok and np.isnan(constant.rho)
    assert constant.predict(0.9) == pytest.approx((0.45, 0.45, 0.45))
    # Ties in the local score: still a fit; a left-out point whose twin remains is predicted.
    ties = stats.ServerFit([0.5, 0.5, 0.7, 0.9], [0.40, 0.44, 0.50, 0.62])
    assert ties.ok and ties.rho > 0.9
    low, high = ties.predict(0.6)[1:]
    assert 0 <= low < high <= 1
