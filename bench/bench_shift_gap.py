"""Does the local `server` shift separate a model trained without augmentation from one
trained with augmentation? Evaluates both on the real val split under `none` and
`server` (through local_eval.py, exactly as a user would) and prints the accuracy drops.

Three ways to get the two models:
  python bench/bench_shift_gap.py --zips PLAIN.zip AUGMENTED.zip
  python bench/bench_shift_gap.py --train-configs configs/PLAIN.toml configs/AUGMENTED.toml
        (bloodcells.train, contract 4; zipped with build_submission.py when present)
  python bench/bench_shift_gap.py --quick-train [--epochs 8]
        (default: a small CNN trained here twice with Keras directly, without and with
        Keras-layer augmentation that shares no code with bloodcells.shift)

Measured figures: bench/RESULTS.md, "Shift gap".

Outputs go to build/bench_shift_gap/ (its own eval folder and leaderboard). Figures are
printed, not asserted. Slow on a shared 2-core CPU: the quick mode trains ~2 x 8 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "build" / "bench_shift_gap"
DATA = REPO.parent / "shared" / "data" / "pbc96_dev.npz"
if not DATA.exists():
    DATA = Path(os.environ.get("BLOODCELLS_PBC", "/work/shared/data/pbc96_dev.npz"))


def zip_export(export_dir: Path, zip_path: Path) -> Path:
    """model.py + the exported pair renamed <name>.json / <name>.weights.h5 (contract 1)."""
    spec = json.loads((export_dir / "model.json").read_text())
    name = spec["name"]
    spec["weights_file"] = f"{name}.weights.h5"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(REPO / "model.py", "model.py")
        archive.writestr(f"{name}.json", json.dumps(spec, indent=2))
        archive.write(export_dir / "model.weights.h5", f"{name}.weights.h5")
    return zip_path


def build_zip(export_dir: Path, zip_path: Path) -> Path:
    if (REPO / "bloodcells" / "submission.py").exists():  # the real builder (issue 5), when merged
        result = subprocess.run([sys.executable, str(REPO / "build_submission.py"), "--weights", str(export_dir)],
                                cwd=REPO, capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return Path(REPO / result.stdout.strip().splitlines()[-1])
        print(f"build_submission.py failed ({result.stderr.strip()[-300:]}); zipping directly", file=sys.stderr)
    return zip_export(export_dir, zip_path)


def train_with_configs(configs, data: Path) -> list[Path]:
    zips = []
    for config in configs:
        name = Path(config).stem
        export = OUT / "weights" / name
        if not (export / "model.json").exists():
            subprocess.run([sys.executable, "-m", "bloodcells.train", "--config", str(config), "--data", str(data),
                            "--out", str(OUT / "runs" / name), "--export", str(export)], cwd=REPO, check=True)
        zips.append(build_zip(export, OUT / "zips" / f"{name}.zip"))
    return zips


# -- quick mode: Keras directly -------------------------------------------------------------------

def quick_train(name: str, augment: bool, epochs: int, data: Path, seed: int = 0, widths=(32, 64, 128, 256)) -> Path:
    export = OUT / "weights" / name
    if (export / "model.json").exists():
        print(f"{name}: reusing {export}", flush=True)
        return export
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from bloodcells.data import load_dataset
    from bloodcells.files import write_json_atomic
    from model import DEFAULT_HEAD, build_network

    keras.utils.set_random_seed(seed)
    train = load_dataset(data, "train", notify=None)
    val = load_dataset(data, "val", notify=None)
    spec = {"format": "bloodcells-model/1", "name": name, "weights_file": "model.weights.h5",
            "backbone": "small_cnn", "backbone_options": {"widths": list(widths)}, "input_size": 96, "resize_to": None,
            "num_classes": 8, "head": dict(DEFAULT_HEAD),
            "tta": {"views": 1, "merge": "mean_probs", "mode": "dihedral"},
            "class_names": [], "source_run": "bench_shift_gap quick", "keras_version": keras.__version__}
    net = build_network(spec)
    steps = epochs * int(np.ceil(len(train) / 64))
    # Cosine decay to 0: the last epoch is a settled model, no checkpoint picking on val.
    net.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)), loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    dataset = tf.data.Dataset.from_tensor_slices((train.images, train.labels)).shuffle(4096, seed=seed).batch(64)
    if augment:
        # Generic augmentation, independent of bloodcells.shift: geometry, colour, blur, erasing, noise.
        layers = keras.Sequential([
            keras.layers.RandomFlip("horizontal_and_vertical"),
            keras.layers.RandomRotation(0.5, fill_mode="reflect"),
            keras.layers.RandomZoom(0.15, fill_mode="reflect"),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect"),
            keras.layers.RandomBrightness(0.2, value_range=(0, 255)),
            keras.layers.RandomContrast(0.3),
            keras.layers.RandomSaturation((0.3, 0.7)),
            keras.layers.RandomGaussianBlur(factor=0.5, kernel_size=3, sigma=(0.1, 1.5), value_range=(0, 255)),
            keras.layers.RandomErasing(factor=0.3, scale=(0.02, 0.12), value_range=(0, 255)),
        ])

        def aug(x, y):
            x = layers(tf.cast(x, tf.float32), training=True)
            sigma = tf.random.uniform([tf.shape(x)[0], 1, 1, 1], 0.0, 12.0)  # light Gaussian noise
            return tf.clip_by_value(x + sigma * tf.random.normal(tf.shape(x)), 0.0, 255.0), y

        dataset = dataset.map(aug, num_parallel_calls=1)
    else:
        dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
    net.fit(dataset.prefetch(2), epochs=epochs, verbose=2,
            validation_data=(val.images.astype(np.float32), val.labels))
    export.mkdir(parents=True, exist_ok=True)
    net.save_weights(str(export / "model.weights.h5"))
    write_json_atomic(export / "model.json", spec)
    return export


# -- evaluation ------------------------------------------------------------------------------------

def evaluate(zip_path: Path, data: Path, split: str, seed: int, time_limit: float) -> dict:
    command = [sys.executable, str(REPO / "local_eval.py"), str(zip_path), "--data", str(data), "--split", split,
               "--seed", str(seed), "--profile", "none", "server", "--time-limit", str(time_limit),
               "--eval-dir", str(OUT / "eval"), "--leaderboard-file", str(OUT / "leaderboard.csv"),
               "--cache-dir", str(REPO / "build" / "shift_cache")]
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    folder = OUT / "eval" / zip_path.stem
    return {p: json.loads((folder / p / "metrics.json").read_text()) for p in ("none", "server")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--zips", nargs=2, type=Path, metavar=("PLAIN", "AUGMENTED"))
    mode.add_argument("--train-configs", nargs=2, metavar=("PLAIN", "AUGMENTED"))
    mode.add_argument("--quick-train", action="store_true", help="(default) small CNNs trained here")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--widths", default="32,64,128,256", help="quick mode: conv widths per block")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=3600)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: real data not found at {args.data}")
        return 0
    if args.zips:
        zips = list(args.zips)
    elif args.train_configs:
        zips = train_with_configs(args.train_configs, args.data)
    else:
        widths = [int(w) for w in args.widths.split(",")]
        zips = [build_zip(quick_train(name, augment, args.epochs, args.data, args.seed, widths),
                          OUT / "zips" / f"{name}.zip")
                for name, augment in (("quick_plain", False), ("quick_augmented", True))]
    results = {z.stem: evaluate(z, args.data, args.split, args.seed, args.time_limit) for z in zips}

    print(f"\n== shift gap on {args.data.name}[{args.split}], server profile seed {args.seed}")
    print(f"{'model':<28} {'clean':>7} {'server':>7} {'drop':>8}  {'bal.acc clean/server':>20}")
    drops = []
    for name, r in results.items():
        clean, shifted = r["none"].get("accuracy"), r["server"].get("accuracy")
        if clean is None or shifted is None:
            print(f"{name:<28} failed: {r['none']['status']} / {r['server']['status']}")
            continue
        drops.append(clean - shifted)
        print(f"{name:<28} {100 * clean:6.1f}% {100 * shifted:6.1f}% {100 * (shifted - clean):+7.1f}pt  "
              f"{100 * r['none']['balanced_accuracy']:9.1f}/{100 * r['server']['balanced_accuracy']:.1f}")
    if len(drops) == 2:
        print(f"drop of the first minus drop of the second: {100 * (drops[0] - drops[1]):+.1f} pt "
              f"(positive = the shift separates them as it should)")
    families = [f for f in next(iter(results.values()))["server"].get("families", {})]
    if families:
        print("\nserver profile, accuracy of the images each family touched (%):")
        print(f"{'family':<16}" + "".join(f"{n[:14]:>16}" for n in results))
        for family in families:
            cells = [r["server"].get("families", {}).get(family, {}).get("all") for r in results.values()]
            print(f"{family:<16}" + "".join(f"{100 * c[0]:>15.1f}%" if c else f"{'':>16}" for c in cells))
    print(f"\nreports: {OUT / 'eval'}/<zip>/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
