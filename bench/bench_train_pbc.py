"""Real-data check of a training configuration, measured on data that chose nothing.

    PYTHONPATH=. python bench/bench_train_pbc.py [--data PATH] [--config configs/cpu.toml]
        [--out runs/bench_cpu_pbc] [--epochs N] [--seed S] [--skip-train] [--no-eval]

The dev file's train split is the only thing training sees: the configuration carves its
selection split (`data.val_fraction`, the set that picks the best epoch, shifted with the
config's shift seed) out of it. The dev file's val split is then an untouched test: the
exported model is zipped and scored by `local_eval.py` (the shipped model.py with its TTA,
in a fresh process) clean and under the `server` profile with shift seeds that training
never used, with 95 % intervals. Prints the wall time and seconds per epoch: our 2-core
machines differ by up to 2x, so quote both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = os.environ.get("BLOODCELLS_PBC", str(REPO.parent / "shared" / "data" / "pbc96_dev.npz"))


def train_split_only(data: Path, out: Path) -> Path:
    """The dev file's train split alone, in the AN2DL layout (so training carves its own
    selection split and never sees the val split)."""
    with np.load(data, allow_pickle=False) as archive:
        images, labels = archive["train_images"], archive["train_labels"].reshape(-1)
    sys.path.insert(0, str(REPO))
    from bloodcells.files import save_npz_atomic

    # a temporary name of its own: two runs started together each write and rename theirs
    save_npz_atomic(out, compress=False, images=images, labels=labels)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu.toml"))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_cpu_pbc"))
    parser.add_argument("--export", nargs="+", default=[str(REPO / "weights" / "bench_cpu_pbc")],
                        help="export folder; with --skip-train several folders are scored as one ensemble")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="training seed (override the config's)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate an existing --export only")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--eval-args", default="", help="extra local_eval.py arguments, e.g. '--seeds 1 2 3'")
    args = parser.parse_args()
    if len(args.export) > 1 and not args.skip_train:
        parser.error("--export: one folder to train into (several only with --skip-train, as an ensemble)")
    data = Path(args.data)
    if not data.is_file():
        print(f"skip: real data not found at {data} (set BLOODCELLS_PBC)")
        return 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if not args.skip_train:
        train_file = train_split_only(data, REPO / "build" / "bench_pbc" / "train_split.npz")
        shutil.rmtree(args.out, ignore_errors=True)
        command = [sys.executable, "-m", "bloodcells.train", "--config", args.config, "--data", str(train_file),
                   "--out", args.out, "--export", args.export[0]]
        if args.epochs is not None:
            command += ["--epochs", str(args.epochs)]
        if args.seed is not None:
            command += ["--seed", str(args.seed)]
        print("command:", " ".join(command), flush=True)
        start = time.monotonic()
        subprocess.run(command, check=True, cwd=REPO, env=env)
        minutes = (time.monotonic() - start) / 60
        metrics = json.loads((Path(args.out) / "metrics.json").read_text())
        per_epoch = metrics["train_seconds"] / max(metrics["epochs_run"], 1)
        print(f"wall time: {minutes:.1f} min; {metrics['epochs_run']} epochs, {per_epoch:.1f} s per epoch on "
              f"average, validation included (our 2-core machines differ by up to 2x)")
        print(f"best epoch {metrics['best_epoch']} (monitor {metrics['monitor']}, on the selection split "
              f"carved from train: a development figure, not a test one): clean {metrics['val_acc']:.4f}, "
              f"shifted {metrics['val_shifted_acc']:.4f}")
    if args.no_eval:
        return 0
    # The untouched test: the dev val split, through the shipped model.py in a fresh process.
    zips = REPO / "build" / "bench_pbc"
    with np.load(data, allow_pickle=False) as archive:
        test_images = len(archive["val_labels"])
    # the time check for this test's size (the default projects a 20,000-image server test)
    built = subprocess.run([sys.executable, "build_submission.py", "--weights", *args.export, "--out", str(zips),
                            "--test-images", str(test_images)],
                           check=True, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True).stdout
    zip_path = built.strip().splitlines()[-1]
    command = [sys.executable, "local_eval.py", zip_path, "--data", str(data), "--split", "val",
               *args.eval_args.split()]
    print("test command:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO, env=env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
