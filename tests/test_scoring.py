"""bloodcells.scoring on small sets worked out by hand: which classes each average runs
over, undefined ratios counting as 0, the confusion matrix's layout; agreement with
scikit-learn, the flat scores.json, accuracy per corruption."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcells.scoring import codabench_scores, confusion_matrix, family_severity_accuracy, score

# Class 4 is never predicted, class 6 is predicted but absent from the labels.
LABELS = [0, 0, 1, 4]
PREDICTED = [0, 1, 1, 6]


def test_averages_run_over_the_classes_each_convention_names():
    m = score(LABELS, PREDICTED)
    assert m["accuracy"] == pytest.approx(2 / 4)
    # recalls of the classes in the labels: 1/2 (class 0), 1/1 (class 1), 0/1 (class 4)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # F1 of the classes in the labels or the predictions: 2/3, 2/3, 0 (class 4), 0 (class 6)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)
    per_class = m["per_class"]
    assert per_class["basophil"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per_class["eosinophil"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    # never predicted: precision undefined -> 0; absent from the labels: recall undefined -> 0
    assert per_class["lymphocyte"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per_class["neutrophil"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["n"] == 4


def test_confusion_matrix_rows_are_true_columns_predicted_with_every_class():
    cm = confusion_matrix(LABELS, PREDICTED)
    expected = np.zeros((8, 8), np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[4, 6] = 1
    assert cm.dtype == np.int64 and np.array_equal(cm, expected)
    assert score(LABELS, PREDICTED)["confusion_matrix"] == expected.tolist()
    assert np.array_equal(confusion_matrix([2], [2], num_classes=3), [[0, 0, 0], [0, 0, 0], [0, 0, 1]])


def test_other_class_counts_name_classes_by_number_and_bad_input_is_refused():
    m = score([0, 2, 2], [0, 1, 2], num_classes=3)
    assert list(m["per_class"]) == ["0", "1", "2"]
    assert m["per_class"]["2"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        score([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="0 labels"):
        score([], [])


def test_scores_agree_with_scikit_learn():
    from sklearn import metrics as sk

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 8, 300)
    predicted = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 7, 300))  # class 7 under-predicted
    m = score(labels, predicted)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert np.array_equal(confusion_matrix(labels, predicted), sk.confusion_matrix(labels, predicted, labels=range(8)))


def test_codabench_scores_are_the_flat_headline_numbers():
    m = score(LABELS, PREDICTED)
    assert codabench_scores(m, 1.5) == {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                                        "macro_f1": m["macro_f1"], "duration": 1.5}


def test_family_severity_accuracy_counts_each_image_under_each_of_its_operations():
    plans = [[("blur", 2)], [("blur", 2), ("jpeg", 5)], [("jpeg", 5)], []]
    table = family_severity_accuracy([True, False, True, True], plans)
    assert table[("blur", 2)] == (0.5, 2) and table[("blur", None)] == (0.5, 2)
    assert table[("jpeg", 5)] == (0.5, 2)
    assert ("noise", None) not in table
