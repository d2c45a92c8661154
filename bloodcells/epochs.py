"""The training input: which images each epoch sees and in which order (seeded by
(seed, epoch), so a resumed run sees the same), and the slice of the run-long
augmentation pipeline that one `fit` call reads as a dataset."""

from __future__ import annotations

import numpy as np

from . import NUM_CLASSES
from .augment import stable_seed


def epoch_order(labels: np.ndarray, imbalance: str, seed: int, epoch: int) -> np.ndarray:
    """The epoch's training indices in order: a seeded permutation, after downsampling
    every class to the rarest's count or upsampling to the commonest's (the repeats
    differ through augmentation)."""
    rng = np.random.default_rng(stable_seed(seed, epoch, 7))
    if imbalance in ("downsample", "upsample"):
        counts = np.bincount(labels, minlength=NUM_CLASSES)
        present = counts[counts > 0]
        target = present.min() if imbalance == "downsample" else present.max()
        index = []
        for label in np.flatnonzero(counts):
            members = np.flatnonzero(labels == label)
            if len(members) >= target:
                index.append(rng.choice(members, target, replace=False))
            else:
                index.append(np.concatenate([members, rng.choice(members, target - len(members), replace=True)]))
        index = np.concatenate(index)
        return index[rng.permutation(len(index))]
    return rng.permutation(len(labels))


def class_weights(labels: np.ndarray) -> np.ndarray:
    """n / (k * count_c): the balanced weights, mean 1 over the training set."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    present = counts > 0
    weights = np.zeros(NUM_CLASSES)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def epoch_batches(batches, steps: int):
    """The next `steps` batches of a run-long pipeline iterator, as a dataset for one
    `fit` call (a new pipeline per epoch would re-instantiate the augmentation graph).
    Iterating it again replays the batches already read (see EpochSlice)."""
    import tensorflow as tf
    ds = tf.data.Dataset.from_generator(EpochSlice(batches, steps), output_signature=batches.element_spec)
    # Several workers: each runs the same seeded stream and keeps its share of every
    # global batch (there are no files to shard).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No prefetch of its own (the run-long pipeline prefetches): with tf.data's injected,
    # autotuned one, releasing the epoch's iterator stalled 10-14 s in most epochs.
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return ds.apply(tf.data.experimental.assert_cardinality(steps)).with_options(options)


class EpochSlice:
    """A generator function over the next `steps` batches of a shared iterator, safe to
    call twice: under a distribution strategy Keras's `fit` first reads one batch from a
    fresh iterator to build the model, then iterates again from the start. A later pass
    replays the first batches (kept, at most REPLAY); an abandoned earlier pass never
    pulls new ones, so the run's stream is consumed exactly once."""

    REPLAY = 4

    def __init__(self, batches, steps: int):
        import threading

        self.batches, self.steps = batches, steps
        self.kept, self.read, self.passes = [], 0, 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.passes += 1
            me = self.passes
        for i in range(self.steps):
            with self.lock:
                if i < self.read:
                    if i >= len(self.kept):
                        raise RuntimeError(f"training input: batch {i} of the epoch was read by an earlier pass "
                                           f"and not kept (only the first {self.REPLAY} are)")
                    item = self.kept[i]
                elif me != self.passes:  # superseded by a newer pass: stop without consuming
                    return
                else:
                    item = next(self.batches)
                    self.read += 1
                    if i < self.REPLAY:
                        self.kept.append(item)
            yield item
