"""Does augmentation starve training? Images per second of the full augmentation
stream (every training augmentation of configs/cpu_scratch.toml, CutMix and MixUp included,
at full probability) against images per second the CPU configuration trains at
(on already-prepared batches). Target: the stream delivers >= 3x the training rate.

    PYTHONPATH=. python bench/bench_augment.py [--config configs/cpu_scratch.toml] [--images 1024]

Both figures are steady-state: the stream runs several epochs through one pipeline as a
training run does, timed after its first batch (tracing); training after its first step.
On a machine shared with other jobs both are pessimistic; the ratio is what matters.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bloodcells import augment, network, train  # noqa: E402
from bloodcells.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def images_for_bench(n: int, seed: int = 0):
    """Real images when available (augmentation cost does not depend on content)."""
    path = Path(os.environ.get("BLOODCELLS_PBC", REPO.parent / "shared" / "data" / "pbc96_dev.npz"))
    if path.is_file():
        from bloodcells.data import load_dataset
        data = load_dataset(path, "train", notify=None)
        idx = np.random.default_rng(seed).permutation(len(data))[:n]
        return data.images[idx], data.labels[idx], f"{path} (train split)"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8), rng.integers(0, 8, n), "random images"


def stream_rate(images, labels, options, batch_size, epochs):
    """Images per second over `epochs` epochs in one pipeline, as a training run uses it,
    after its first batch (which traces and instantiates the augmentation graph)."""
    stream = augment.TrainingStream(images, labels, options, seed=0, batch_size=batch_size)
    batches = iter(stream.epochs(range(epochs)))
    next(batches)
    start, count = time.perf_counter(), 0
    for x, _ in batches:
        count += int(x.shape[0])
    return count / (time.perf_counter() - start)


def train_rate(cfg, images, labels, batch_size, steps):
    import keras
    import tensorflow as tf

    spec = network.make_spec(cfg.model)
    net = network.build(spec, "none")
    network.unfreeze_top(net, "all", freeze_batchnorm=False)
    net.compile(optimizer=train.make_optimizer(cfg.train, 1e-3), loss=train.make_loss(cfg.train),
                metrics=["accuracy"])
    x = images[:batch_size].astype(np.float32)
    y = np.eye(8, dtype=np.float32)[labels[:batch_size]]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    net.fit(ds, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)  # trace and warm up (first steps are slower)
    start = time.perf_counter()
    net.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    keras.backend.clear_session()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu_scratch.toml"))
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the stream to time")
    parser.add_argument("--steps", type=int, default=40, help="training steps to time")
    args = parser.parse_args()
    cfg = load_config(args.config)
    batch = cfg.train.batch_size
    options = dict(cfg.augment)
    options.update(ramp_epochs=0, cutmix_prob=max(options["cutmix_prob"], 0.5),
                   mixup_prob=max(options["mixup_prob"], 0.5))
    images, labels, source = images_for_bench(args.images)
    print(f"config: {args.config}; images: {source}; batch {batch}; "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}")
    active = [k for k, v in options.items() if k.endswith("_prob") and v] + \
             [k for k in ("flip", "rot90") if options[k]]
    print(f"augmentations on: {', '.join(sorted(active))}")
    aug = stream_rate(images, labels, options, batch, args.epochs)
    print(f"augmentation stream: {aug:.0f} images/s (one batch at a time, reproducible)", flush=True)
    fit = train_rate(cfg, images, labels, batch, args.steps)
    print(f"training ({cfg.model.backbone}): {fit:.0f} images/s")
    print(f"ratio: {aug / fit:.1f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
