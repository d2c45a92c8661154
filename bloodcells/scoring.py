"""Scoring, kept apart from ingestion as in a Codabench bundle: true labels and the
predictions file in, metrics and `scores.json` out.

Accuracy is the headline (the competition server ranks by it); balanced accuracy and
macro-F1 say whether a good accuracy hides a neglected class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import CLASS_NAMES, NUM_CLASSES
from .files import write_json_atomic


def confusion_matrix(labels, predictions, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Rows: true class, columns: predicted class; counts (int64)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_classes + predictions,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def score(labels, predictions, num_classes: int = NUM_CLASSES) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1 and the
    confusion matrix. Averages are taken over the classes present in the labels or the
    predictions (as scikit-learn does); an undefined precision or recall counts as 0."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("nothing to score: 0 labels")
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)  # true count per class
    predicted = matrix.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    present = (support > 0) | (predicted > 0)
    in_labels = support > 0
    names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [str(k) for k in range(num_classes)]
    return {
        "accuracy": float(true_positive.sum() / len(labels)),
        "balanced_accuracy": float(recall[in_labels].mean()),
        "macro_f1": float(f1[present].mean()),
        "n": int(len(labels)),
        "per_class": {names[k]: {"precision": float(precision[k]), "recall": float(recall[k]),
                                 "f1": float(f1[k]), "support": int(support[k])}
                      for k in range(num_classes)},
        "confusion_matrix": matrix.tolist(),
    }


def codabench_scores(metrics: dict, duration: float | None = None) -> dict:
    """The flat `scores.json` Codabench's leaderboard reads: numbers only (with each
    score's 95 % interval as `<score>_ci_low` / `_ci_high` and the image count `n` when
    the metrics carry them, see bloodcells.stats)."""
    scores = {}
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        scores[key] = metrics[key]
        if f"{key}_ci" in metrics:
            scores[f"{key}_ci_low"], scores[f"{key}_ci_high"] = metrics[f"{key}_ci"]
    if "n" in metrics and any(k.endswith("_ci") for k in metrics):
        scores["n"] = metrics["n"]
    if duration is not None:
        scores["duration"] = float(duration)
    return scores


def write_scores(folder, metrics: dict, duration: float | None = None) -> Path:
    path = Path(folder) / "scores.json"
    write_json_atomic(path, codabench_scores(metrics, duration))
    return path


def group_accuracy(correct, groups) -> dict:
    """{group: (accuracy, count)} for an iterable of group keys per image; an image may
    belong to several groups (pass a list of keys per image)."""
    totals: dict = {}
    for ok, keys in zip(np.asarray(correct, dtype=bool), groups):
        for key in keys:
            hit, count = totals.get(key, (0, 0))
            totals[key] = (hit + int(ok), count + 1)
    return {key: (hit / count, count) for key, (hit, count) in totals.items()}


def family_severity_accuracy(correct, plans) -> dict:
    """From per-image plans [(family, severity), ...] (shift.plan): accuracy over the
    images that got each (family, severity), and each family over all severities
    (key (family, None))."""
    groups = [[(f, s) for f, s in steps] + [(f, None) for f, _ in steps] for steps in plans]
    return group_accuracy(correct, groups)


__all__ = ["confusion_matrix", "score", "codabench_scores", "write_scores", "group_accuracy",
           "family_severity_accuracy"]
