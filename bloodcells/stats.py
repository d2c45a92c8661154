"""Statistics for decisions made on a few thousand test images: 95 % intervals, paired
comparisons of two submissions on the same images, and the fit that turns a local score
into an expected server score.

  * accuracy on one set: Wilson interval (scipy's binomtest);
  * balanced accuracy, macro-F1 and any mean over several shifted draws of the same
    images: percentile bootstrap over images (scipy.stats.bootstrap, seeded), the draws
    of one image resampled together;
  * two submissions on the same images: the accuracy difference with a paired bootstrap
    interval, and an exact McNemar test (binomial test on the discordant images);
  * local score -> server score: a linear (OLS) and a monotone (isotonic) fit with
    leave-one-out errors; the smaller error is used and named.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from . import NUM_CLASSES

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
ALPHA = 1 - CONFIDENCE
MIN_SERVER_SCORES = 3


# -- intervals ---------------------------------------------------------------------------------

def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for `correct` successes out of `n`."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = sps.binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _moved(arrays, axis):
    return [np.moveaxis(np.asarray(a), axis, -1) for a in arrays]


def _confusions(labels, predictions, num_classes):
    """(..., n) labels and predictions -> (..., K, K) confusion matrices."""
    batch = labels.shape[:-1]
    flat_l = labels.reshape(-1, labels.shape[-1]).astype(np.int64)
    flat_p = predictions.reshape(-1, predictions.shape[-1]).astype(np.int64)
    k2 = num_classes * num_classes
    codes = flat_l * num_classes + flat_p + k2 * np.arange(len(flat_l))[:, None]
    counts = np.bincount(codes.ravel(), minlength=k2 * len(flat_l))
    return counts.reshape(*batch, num_classes, num_classes)


def class_metrics(labels, predictions, num_classes: int = NUM_CLASSES, axis: int = -1):
    """(accuracy, balanced accuracy, macro-F1) along `axis`, vectorised over the other axes,
    with scikit-learn's conventions (balanced accuracy over classes in the labels, macro-F1
    over classes in the labels or the predictions, an undefined ratio counting as 0).
    Written out rather than called from sklearn.metrics because the bootstrap evaluates it
    on every resample at once; scoring.score (sklearn) gives the point values people read."""
    labels, predictions = _moved((labels, predictions), axis)
    cm = _confusions(labels, predictions, num_classes).astype(float)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    in_labels, present = support > 0, (support > 0) | (predicted > 0)
    accuracy = tp.sum(axis=-1) / labels.shape[-1]
    balanced = (recall * in_labels).sum(axis=-1) / in_labels.sum(axis=-1)
    macro_f1 = (f1 * present).sum(axis=-1) / present.sum(axis=-1)
    return accuracy, balanced, macro_f1


def _bootstrap(data, statistic, seed):
    """Percentile interval(s) of a vectorised statistic of paired per-image arrays."""
    result = sps.bootstrap(data, statistic, n_resamples=BOOTSTRAP_RESAMPLES, vectorized=True, paired=True,
                           confidence_level=CONFIDENCE, method="percentile", batch=250,
                           rng=np.random.default_rng(seed))
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def score_intervals(labels, predictions, seed: int = BOOTSTRAP_SEED) -> dict:
    """Point values and 95 % intervals of accuracy, balanced accuracy and macro-F1 for one
    set (predictions (n,)) or the mean over several draws of the same images (predictions
    (draws, n)). Accuracy of one set: Wilson; everything else: bootstrap over images."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    draws = np.atleast_2d(np.asarray(predictions, dtype=np.int64))
    if draws.shape[1] != len(labels) or len(labels) == 0:
        raise ValueError(f"{draws.shape[1]} predictions per draw for {len(labels)} labels")
    n = len(labels)

    def mean_over_draws(y, *p, axis=-1):
        accuracy, balanced, macro_f1 = class_metrics(np.stack(np.broadcast_arrays(*[y] * len(p))),
                                                     np.stack(p), axis=axis)
        return np.stack([accuracy.mean(axis=0), balanced.mean(axis=0), macro_f1.mean(axis=0)])

    point = mean_over_draws(labels, *draws)
    low, high = _bootstrap((labels, *draws), mean_over_draws, seed)
    out = {"n": n, "draws": len(draws), "confidence": CONFIDENCE}
    for k, name in enumerate(("accuracy", "balanced_accuracy", "macro_f1")):
        out[name] = float(point[k])
        out[f"{name}_ci"] = [float(low[k]), float(high[k])]
    if len(draws) == 1:
        out["accuracy_ci"] = list(wilson_interval(int(round(point[0] * n)), n))
        out["accuracy_interval"] = "wilson"
    else:
        out["accuracy_interval"] = "bootstrap over images"
    return out


# -- paired comparison ------------------------------------------------------------------------

def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test of two classifiers on the same images: a two-sided binomial test
    of the discordant images (only A right vs only B right) against 1/2."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(sps.binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p}


def paired_difference(correct_a, correct_b, seed: int = BOOTSTRAP_SEED) -> dict:
    """Accuracy of B minus A on the same images, (n,) or (draws, n) booleans: the point
    difference and a paired bootstrap interval over images (an image's draws together)."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=float))
    b = np.atleast_2d(np.asarray(correct_b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired comparison of {a.shape} and {b.shape} results")
    per_image = b.mean(axis=0) - a.mean(axis=0)
    difference = float(per_image.mean())
    if np.all(per_image == per_image[0]):  # no spread to resample: the interval is the point
        return {"difference": difference, "ci": [difference, difference], "n": per_image.size}
    low, high = _bootstrap((per_image,), lambda d, axis=-1: d.mean(axis=axis), seed)
    return {"difference": difference, "ci": [float(low), float(high)], "n": per_image.size}


def verdict(difference: dict, tests: list[dict], name_a: str, name_b: str, where: str) -> tuple[str, str]:
    """(kind, one line): 'better' / 'worse' when the interval excludes 0 and every draw's
    McNemar p is below 0.05; otherwise 'tie'."""
    d, (low, high) = difference["difference"], difference["ci"]
    shown = f"{100 * d:+.1f} pt [{100 * low:+.1f}, {100 * high:+.1f}]"
    p_text = "McNemar p " + " / ".join(f"{t['p']:.2g}" for t in tests)
    significant = all(t["p"] < ALPHA for t in tests)
    if low > 0 and significant:
        return "better", f"{name_b} is better than {name_a} on {where}: {shown} ({p_text}) - worth a submission"
    if high < 0 and significant:
        return "worse", f"{name_b} is worse than {name_a} on {where}: {shown} ({p_text}) - keep {name_a}"
    return "tie", (f"{name_b} and {name_a} are not distinguishable on these images ({where}: {shown}, "
                   f"{p_text})")


def intervals_disagree(a: dict, b: dict) -> bool:
    """Two estimates {'accuracy', 'accuracy_ci'} whose 95 % intervals do not overlap."""
    (a_low, a_high), (b_low, b_high) = a["accuracy_ci"], b["accuracy_ci"]
    return a_high < b_low or b_high < a_low


# -- local score -> server score ------------------------------------------------------------------

def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); nan when a side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


class ServerFit:
    """Expected server score from one local score, fitted on recorded (local, server) pairs.
    Both a linear (OLS) and a monotone increasing (isotonic) fit are made; the one with the
    smaller leave-one-out mean absolute error is used (linear on ties). `ok` is False, with
    `reason`, when no fit is possible (fewer than 3 pairs, a constant local score)."""

    def __init__(self, local, server):
        self.x, self.y = np.asarray(local, dtype=float), np.asarray(server, dtype=float)
        self.n = len(self.x)
        self.rho = spearman(self.x, self.y)
        self.ok, self.reason, self.kind = False, "", None
        if self.n < MIN_SERVER_SCORES:
            self.reason = f"{self.n} pair(s); at least {MIN_SERVER_SCORES} needed"
            return
        if np.ptp(self.x) == 0:
            self.reason = "the local score is the same for every zip"
            return
        errors = {kind: self._loo_errors(kind) for kind in ("linear", "monotone")}
        self.loo_mae = {kind: float(np.mean(np.abs(e))) for kind, e in errors.items()}
        self.kind = "linear" if self.loo_mae["linear"] <= self.loo_mae["monotone"] else "monotone"
        self.loo_error = self.loo_mae[self.kind]
        self.loo_rmse = float(np.sqrt(np.mean(errors[self.kind] ** 2)))
        self.ok = True

    @staticmethod
    def _fit(kind, x, y):
        """A predictor fitted on (x, y); a constant x gives the mean of y."""
        if np.ptp(x) == 0:
            mean = float(np.mean(y))
            return lambda q: np.full(np.shape(q), mean)
        if kind == "linear":
            line = sps.linregress(x, y)
            return lambda q: line.intercept + line.slope * np.asarray(q, dtype=float)
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
        return lambda q: model.predict(np.atleast_1d(np.asarray(q, dtype=float)))

    def _loo_errors(self, kind) -> np.ndarray:
        keep = ~np.eye(self.n, dtype=bool)
        return np.array([float(self._fit(kind, self.x[k], self.y[k])(self.x[[i]])[0]) - self.y[i]
                         for i, k in enumerate(keep)])

    def predict(self, local: float) -> tuple[float, float, float]:
        """(expected server score, low, high), clipped to [0, 1]. Linear: the OLS 95 %
        prediction interval; monotone: +- t(n-1) x the leave-one-out RMSE."""
        if not self.ok:
            raise ValueError(self.reason)
        expected = float(self._fit(self.kind, self.x, self.y)(np.array([local]))[0])
        if self.kind == "linear":
            residuals = self.y - self._fit("linear", self.x, self.y)(self.x)
            s = np.sqrt(np.sum(residuals ** 2) / (self.n - 2))
            sxx = np.sum((self.x - self.x.mean()) ** 2)
            half = sps.t.ppf(0.5 + CONFIDENCE / 2, self.n - 2) * s * np.sqrt(
                1 + 1 / self.n + (local - self.x.mean()) ** 2 / sxx)
        else:
            half = sps.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1) * self.loo_rmse
        clip = lambda v: float(min(max(v, 0.0), 1.0))  # noqa: E731
        return clip(expected), clip(expected - half), clip(expected + half)


__all__ = ["CONFIDENCE", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "wilson_interval", "class_metrics",
           "score_intervals", "mcnemar_exact", "paired_difference", "verdict", "intervals_disagree",
           "spearman", "ServerFit"]
