"""Prediction-time BatchNorm statistics: does normalising with the test batch's own
statistics (instead of the training-time moving averages) help under shift?

    PYTHONPATH=. python bench/bench_bn_adapt.py --weights weights/bench_cpu_pbc [--seed 0]
        [--severity 3] [--batch 128]

Known to help when a batch holds one corruption (the batch statistics then describe that
shift) and to hurt when a batch mixes them, as a server's test set does. Both are measured
on the selection split carved from the dev file's train split (the split that chose the
epoch, never the test split), single view, on the exported network:
- mixed batches: the `server` and `second_opinion` shifted split, shuffled, in batches;
- single-corruption batches: each second_opinion family alone at one severity;
- clean batches.
Prints accuracies side by side; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = os.environ.get("BLOODCELLS_PBC", str(REPO.parent / "shared" / "data" / "pbc96_dev.npz"))


def selection_split(data: Path, val_fraction: float, seed: int):
    """The images training chose its epoch on: the train split's stratified selection part,
    read and split as bloodcells.data.train_val does for bench_train_pbc's training file."""
    from bloodcells.data import load_dataset, stratified_split

    train = load_dataset(data, "train", notify=None)
    _, selection = stratified_split(train.labels, val_fraction, seed)
    return train.images[selection], train.labels[selection]


def predict(net, images: np.ndarray, batch: int, batch_stats: bool, order: np.ndarray) -> np.ndarray:
    """Labels for `images`, fed in `order` in batches of `batch`; with `batch_stats`, every
    BatchNorm layer normalises with the batch's own mean and variance."""
    labels = np.empty(len(images), np.int64)
    for start in range(0, len(order), batch):
        index = order[start:start + batch]
        x = images[index].astype(np.float32)
        probabilities = net(x, training=batch_stats)
        labels[index] = np.argmax(np.asarray(probabilities), axis=1)
    return labels


def main() -> int:
    import keras

    from bloodcells import network, second_opinion
    from bloodcells.shift import apply_shift

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--data", default=DEFAULT_DATA, type=Path)
    ap.add_argument("--seed", type=int, default=0, help="the training seed (it chose the selection split)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--shift-seed", type=int, default=1)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skip: real data not found at {args.data}")
        return 0
    images, labels = selection_split(args.data, args.val_fraction, args.seed)
    net, _ = network.load_exported(args.weights)
    saved = [v.numpy() for v in net.weights]
    # Batch statistics without the head's dropout: training=True would also drop units.
    for layer in net._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    order = np.random.default_rng(0).permutation(len(images))
    start = time.monotonic()

    def both(x):
        standard = np.mean(predict(net, x, args.batch, False, order) == labels)
        adapted = np.mean(predict(net, x, args.batch, True, order) == labels)
        for variable, value in zip(net.weights, saved):  # training=True moved the moving averages
            variable.assign(value)
        return standard, adapted

    print(f"selection split: {len(images)} images (training seed {args.seed}); batches of {args.batch}, "
          f"shuffled; single view")
    print(f"{'set':<34} {'moving stats':>12} {'batch stats':>12}")
    rows = {"clean": both(images)}
    for profile in ("server", "second_opinion"):
        rows[f"{profile} (mixed batches)"] = both(apply_shift(images, profile, args.shift_seed))
    for name, (a, b) in rows.items():
        print(f"{name:<34} {a:>12.2%} {b:>12.2%}", flush=True)
    single = []
    for k, family in enumerate(second_opinion.FAMILIES, 1):
        a, b = both(second_opinion.corrupt(images, family, args.severity, seed=args.shift_seed))
        single.append((a, b))
        print(f"  {family:<32} {a:>12.2%} {b:>12.2%}   [{k}/{len(second_opinion.FAMILIES)}, "
              f"{time.monotonic() - start:.0f} s]", flush=True)
    a, b = np.mean(single, axis=0)
    print(f"{'one family per batch, mean':<34} {a:>12.2%} {b:>12.2%}   (severity {args.severity}, "
          f"{len(single)} families)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
