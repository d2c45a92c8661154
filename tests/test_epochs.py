"""bloodcells.epochs: which images each epoch sees, in which order, per imbalance mode,
and the balanced class weights."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcells.epochs import class_weights, epoch_order


def test_epoch_order_imbalance_modes():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 2)
    none = epoch_order(labels, "none", 0, 0)
    assert sorted(none) == list(range(16))
    assert not np.array_equal(none, epoch_order(labels, "none", 0, 1))
    np.testing.assert_array_equal(none, epoch_order(labels, "none", 0, 0))
    down = epoch_order(labels, "downsample", 0, 0)
    assert np.bincount(labels[down]).tolist() == [2, 2, 2] and len(set(down)) == 6
    up = epoch_order(labels, "upsample", 0, 0)
    assert np.bincount(labels[up]).tolist() == [10, 10, 10]
    assert set(np.flatnonzero(labels == 2)) <= set(up)
    weights = class_weights(labels)
    assert weights[:3] == pytest.approx([16 / 30, 16 / 12, 16 / 6])
    assert np.mean(weights[labels]) == pytest.approx(1.0)
