"""Real-data check of the CPU configuration: train configs/cpu.toml on the train split
of pbc96_dev.npz, then print clean and shifted (server profile) accuracy on its val
split and the wall time. Target: >= 93 % clean, >= 85 % shifted, < 45 minutes on the
2-core machine.

    PYTHONPATH=. python bench/bench_train_pbc.py [--data PATH] [--config configs/cpu.toml]
        [--out runs/bench_cpu_pbc] [--epochs N]

Timings on a machine shared with other jobs are pessimistic.
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = os.environ.get("BLOODCELLS_PBC", str(REPO.parent / "shared" / "data" / "pbc96_dev.npz"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu.toml"))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_cpu_pbc"))
    parser.add_argument("--export", default=str(REPO / "weights" / "bench_cpu_pbc"))
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    if not Path(args.data).is_file():
        print(f"skip: real data not found at {args.data} (set BLOODCELLS_PBC)")
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    command = [sys.executable, "-m", "bloodcells.train", "--config", args.config, "--data", args.data,
               "--out", args.out, "--export", args.export]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    print("command:", " ".join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"TF_ENABLE_ONEDNN_OPTS={env.get('TF_ENABLE_ONEDNN_OPTS', 'unset (on)')}", flush=True)
    start = time.monotonic()
    subprocess.run(command, check=True, cwd=REPO, env=env)
    minutes = (time.monotonic() - start) / 60
    metrics = json.loads((Path(args.out) / "metrics.json").read_text())
    print(f"wall time: {minutes:.1f} min (target < 45; machine shared, pessimistic)")
    print(f"epochs run: {metrics['epochs_run']}, best epoch {metrics['best_epoch']} (monitor {metrics['monitor']}); "
          f"{metrics['train_seconds'] / max(metrics['epochs_run'], 1):.1f} s per epoch on average, validation included")
    print(f"val accuracy (clean): {metrics['val_acc']:.4f} (target >= 0.93)")
    print(f"val accuracy (shift '{metrics['shift_profile']}'): {metrics['val_shifted_acc']:.4f} (target >= 0.85)")
    for name in metrics["val_recall"]:
        print(f"  recall {name:<22} clean {metrics['val_recall'][name]:.3f}  "
              f"shifted {metrics['val_shifted_recall'][name]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
