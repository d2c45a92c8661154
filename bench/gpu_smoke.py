"""GPU smoke benchmark: how fast is the B7 recipe on this GPU? One table, a few minutes.

    PYTHONPATH=. python bench/gpu_smoke.py [--config configs/b7_reference.toml]
        [--train-steps 20] [--predict-images 640] [--sizes 96 224]

For each input size (96 px as shipped, and resize_to = 224 inside the model):
EfficientNetB7 with mixed precision and XLA at batch 64, trained through the real
augmentation stream of the config (training images/s after the compile steps), then
exported and loaded by model.py: Model.predict images/s with 10-view TTA, the time that
gives for 20,000 test images, and the peak GPU memory of each part. Backbone weights
are ImageNet's when Keras has them cached, else random ("none"; the speed is the
same), as the output says. Without a GPU it says so and exits 0.

`--allow-cpu --backbone small_cnn --train-steps 2 --predict-images 16` runs the same
code on a CPU with a tiny network (a check of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = 20_000
WARMUP_STEPS = 3  # XLA compiles on the first steps; they are timed separately


def cached_imagenet(backbone: str) -> Path | None:
    """The keras.applications weight file if it is already cached (never downloads)."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    path = home / "models" / f"{backbone}_notop.h5"
    return path if path.is_file() else None


def visible_gpus(allow_cpu: bool):
    """The GPUs TensorFlow sees (memory growth on, so peak memory means what a run needed);
    None, after saying so, when there is none and `allow_cpu` is off."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not allow_cpu:
        print("no GPU: TensorFlow sees no GPU on this machine, so there is nothing to measure "
              "(run this on a GPU machine, e.g. Colab or Kaggle; see bench/RESULTS.md)")
        return None
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return gpus


def gpu_memory_mb(device: str | None):
    import tensorflow as tf

    if device is None:
        return None
    return tf.config.experimental.get_memory_info(device)["peak"] / 2**20


def reset_memory(device: str | None) -> None:
    import tensorflow as tf

    if device is not None:
        tf.config.experimental.reset_memory_stats(device)


def bench_size(cfg, size: int, args, device: str | None) -> dict:
    import keras

    from bloodcells import augment, network, train
    from bloodcells.distribute import make_strategy, precision_policy
    from bloodcells.epochs import epoch_batches
    from bloodcells.submission import stage
    from bloodcells.preflight import probe_images

    model_cfg = dataclasses.replace(cfg.model, resize_to=0 if size == 96 else size)
    t = dataclasses.replace(cfg.train, batch_size=args.batch, mixed_precision=True, xla=True)
    strategy = make_strategy(t.strategy, t.tpu)
    keras.mixed_precision.set_global_policy(precision_policy(t.mixed_precision, strategy))
    keras.utils.set_random_seed(0)
    spec = network.make_spec(model_cfg, name=f"smoke_{size}")
    reset_memory(device)
    started = time.perf_counter()
    with strategy.scope():
        net = network.build(spec, model_cfg.weights)
        network.unfreeze_top(net, "all", freeze_batchnorm=True)
        net.compile(optimizer=train.make_optimizer(t, 1e-4), loss=train.make_loss(t), metrics=["accuracy"],
                    jit_compile=True)

    rng = np.random.default_rng(0)
    n = args.batch * (WARMUP_STEPS + args.train_steps)
    images = probe_images(min(n, 256), seed=0)[rng.integers(0, min(n, 256), n)]
    labels = rng.integers(0, 8, n)
    with network.float32_policy():
        stream = augment.TrainingStream(images, labels, cfg.augment, seed=0, batch_size=args.batch)
    batches = iter(stream.epochs([0]))
    warm = epoch_batches(batches, WARMUP_STEPS)
    with strategy.scope():
        net.fit(warm, epochs=1, verbose=0, shuffle=False)
    compile_s = time.perf_counter() - started
    timed = epoch_batches(batches, args.train_steps)
    started = time.perf_counter()
    with strategy.scope():
        net.fit(timed, epochs=1, verbose=0, shuffle=False)
    train_rate = args.train_steps * args.batch / (time.perf_counter() - started)
    train_mem = gpu_memory_mb(device)

    with tempfile.TemporaryDirectory() as tmp:
        network.export(net, spec, Path(tmp) / "export")
        stage([Path(tmp) / "export"], Path(tmp) / "shipped", tta=10)
        keras.mixed_precision.set_global_policy("float32")  # the server's model.py runs in float32
        location = importlib.util.spec_from_file_location(f"shipped_{size}", Path(tmp) / "shipped" / "model.py")
        shipped = importlib.util.module_from_spec(location)
        location.loader.exec_module(shipped)
        reset_memory(device)
        model = shipped.Model()
        test = probe_images(args.predict_images, seed=1)
        model.predict(test[:8])  # traces and compiles
        started = time.perf_counter()
        model.predict(test)
        predict_rate = len(test) / (time.perf_counter() - started)
        predict_mem = gpu_memory_mb(device)
    keras.backend.clear_session()
    return {"size": size, "compile_s": compile_s, "train_rate": train_rate, "train_mem": train_mem,
            "predict_rate": predict_rate, "predict_mem": predict_mem, "test_minutes": TEST_IMAGES / predict_rate / 60}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "b7_reference.toml"))
    parser.add_argument("--backbone", default=None, help="override model.backbone (default: the config's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--predict-images", type=int, default=640)
    parser.add_argument("--allow-cpu", action="store_true", help="run on a CPU anyway (script check)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    gpus = visible_gpus(args.allow_cpu)
    if gpus is None:
        return 0
    device = "GPU:0" if gpus else None

    from bloodcells.config import load_config

    cfg = load_config(args.config)
    if args.backbone:
        cfg.model.backbone = args.backbone
        cfg.model.backbone_options = {"widths": [8, 16]} if args.backbone == "small_cnn" else {}
    backbone = cfg.model.backbone
    cached = cached_imagenet(backbone) if backbone != "small_cnn" else None
    cfg.model.weights = "imagenet" if cached else "none"
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    print(f"device: {name} x{len(gpus) or 1}; TensorFlow {tf.__version__}")
    print(f"backbone: {backbone}, weights: " + (f"imagenet ({cached})" if cached else
          "none (no cached ImageNet file; random weights, same speed)"))
    print(f"mixed precision + XLA, batch {args.batch}, augmentation of {Path(args.config).name}, "
          f"{args.train_steps} timed steps after {WARMUP_STEPS} compile steps; "
          f"Model.predict with 10-view TTA on {args.predict_images} images")
    rows = []
    for size in args.sizes:
        print(f"  measuring {size} px ...", flush=True)
        rows.append(bench_size(cfg, size, args, device))

    def mem(v):
        return "n/a" if v is None else f"{v:,.0f}"

    print()
    print("| input | compile + 3 steps (s) | train img/s | train peak MB | predict img/s (10 views) "
          "| predict peak MB | 20,000 test images (min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} px | {r['compile_s']:.0f} | {r['train_rate']:.0f} | {mem(r['train_mem'])} "
              f"| {r['predict_rate']:.1f} | {mem(r['predict_mem'])} | {r['test_minutes']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
