"""Training runs under tf.distribute strategies, each in its own process (logical devices
and a multi-worker cluster must be set up before TensorFlow starts, which would poison
the pytest process). Used by tests/test_distribute.py; not a test itself.

    python tests/distributed_job.py data OUT.npz
    python tests/distributed_job.py mirrored DATA OUT        # default then mirrored, 2 logical CPUs
    python tests/distributed_job.py worker DATA RUN EXPORT [--resume] [--stop-after-epoch N]
        (the cluster comes from TF_CONFIG)
    python tests/distributed_job.py precision DATA OUT       # mixed_float16 + XLA run and export
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# A global batch of 12 over 2 epochs of 2 steps: the same steps whatever the strategy.
RAW_CONFIG = {
    "name": "dist", "seed": 5,
    "data": {"val_fraction": 0.2, "imbalance": "class_weights"},
    "model": {"backbone": "small_cnn", "weights": "none",
              "backbone_options": {"widths": [4, 8], "residual": True, "stem_stride": 2},
              # dropout 0: each replica draws its own dropout masks, so only without
              # dropout can a split batch reproduce the one-device run exactly
              "head": {"dense_units": 8, "dropout": 0.0}},
    "augment": {"rotation": 0.2, "geometry_prob": 0.5, "noise_prob": 0.3, "cutmix_prob": 0.3, "mixup_prob": 0.3},
    "train": {"batch_size": 12, "steps_per_epoch": 2, "optimizer": "adam", "eval_batch_size": 16},
    "phase1": {"epochs": 0},
    "phase2": {"epochs": 2, "lr": 1e-3, "freeze_batchnorm": False},
}


def config(**train_changes):
    from bloodcells.config import resolve_config

    raw = json.loads(json.dumps(RAW_CONFIG))
    raw["train"].update(train_changes)
    return resolve_config(raw, "tests/distributed_job.py")


def write_data(path) -> None:
    """40 images with a class-dependent tint (32 training, 8 validation)."""
    from bloodcells.files import save_npz_atomic

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 5)
    images = rng.integers(0, 120, (40, 96, 96, 3)).astype(np.int16)
    images[..., 0] += (labels * 16)[:, None, None]
    save_npz_atomic(path, images=np.clip(images, 0, 255).astype(np.uint8), labels=labels)


def split_cpu(n: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def stop_after_epoch(n: int) -> None:
    """Exit with status 3 right after the n-th checkpoint, as if the machine went away."""
    from bloodcells import train

    real, calls = train.save_checkpoint, {"n": 0}

    def save_then_exit(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            sys.stdout.flush()
            raise SystemExit(3)

    train.save_checkpoint = save_then_exit


def main(argv) -> None:
    from bloodcells import train

    mode = argv[0]
    if mode == "data":
        write_data(argv[1])
    elif mode == "mirrored":
        split_cpu(2)
        data, out = argv[1], Path(argv[2])
        for kind in ("default", "mirrored"):
            train.Trainer(config(strategy=kind), data, out / f"run_{kind}", out / f"export_{kind}").run()
    elif mode == "worker":
        data, run, export = argv[1], Path(argv[2]), Path(argv[3])
        if "--stop-after-epoch" in argv:
            stop_after_epoch(int(argv[argv.index("--stop-after-epoch") + 1]))
        train.Trainer(config(strategy="multiworker"), data, run, export, resume="--resume" in argv).run()
    elif mode == "precision":
        data, out = argv[1], Path(argv[2])
        cfg = config(mixed_precision=True, xla=True)
        cfg.phase2.lr = 1e-2
        trainer = train.Trainer(cfg, data, out / "run", out / "export")
        trainer.run()
        # the training model (best epoch's weights, float16 compute) in inference
        images = np.load(data)["images"][:16].astype(np.float32)
        np.save(out / "training_model_probs.npy", trainer.model.predict(images, verbose=0))
        print("compute dtype", trainer.model.get_layer("head_dense").compute_dtype,
              "weights dtype", trainer.model.get_layer("head_dense").kernel.dtype,
              "probs dtype", trainer.model.get_layer("probs").compute_dtype,
              "optimizer", type(trainer.model.optimizer).__name__, flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
