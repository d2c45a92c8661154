"""Scoring, kept apart from ingestion as in a Codabench bundle: true labels and the
predictions file in, metrics and `scores.json` out.

Accuracy is the headline (the competition server ranks by it); balanced accuracy and
macro-F1 say whether a good accuracy hides a neglected class.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn import metrics

from . import CLASS_NAMES, NUM_CLASSES
from .files import write_json_atomic


def confusion_matrix(labels, predictions, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Rows: true class, columns: predicted class; counts (int64), every class a row and a
    column whether or not it occurs."""
    return metrics.confusion_matrix(np.asarray(labels, dtype=np.int64).ravel(),
                                    np.asarray(predictions, dtype=np.int64).ravel(),
                                    labels=np.arange(num_classes)).astype(np.int64)


def score(labels, predictions, num_classes: int = NUM_CLASSES) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1 and the
    confusion matrix, by scikit-learn: balanced accuracy over the classes in the labels,
    macro-F1 over the classes in the labels or the predictions, an undefined precision or
    recall counting as 0."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("nothing to score: 0 labels")
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predictions, labels=np.arange(num_classes), zero_division=0)
    with warnings.catch_warnings():
        # a class predicted but absent from the labels is expected on small sets
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = metrics.balanced_accuracy_score(labels, predictions)
    names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [str(k) for k in range(num_classes)]
    return {
        "accuracy": float(metrics.accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(metrics.f1_score(labels, predictions, average="macro", zero_division=0)),
        "n": int(len(labels)),
        "per_class": {names[k]: {"precision": float(precision[k]), "recall": float(recall[k]),
                                 "f1": float(f1[k]), "support": int(support[k])}
                      for k in range(num_classes)},
        "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
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
