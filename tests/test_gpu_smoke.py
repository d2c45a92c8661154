"""bench/gpu_smoke.py on a machine without a GPU: says so, exits 0 (its GPU path needs a GPU;
bench/RESULTS.md has the command for one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu_smoke.py", "gpu_real_weights.py"])
def test_gpu_benches_without_a_gpu_say_so_and_exit_0(script):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip(f"this machine has a GPU: run bench/{script} itself")
    result = subprocess.run([sys.executable, str(REPO / "bench" / script)], capture_output=True, text=True,
                            cwd=REPO, timeout=300,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("no GPU:")
    assert "|" not in result.stdout  # no table without measurements


def test_gpu_smoke_measuring_path_runs_end_to_end_on_a_cpu_for_a_tiny_network():
    """The path a lent GPU runs (training steps through the real augmentation stream, mixed
    precision + XLA, export, Model.predict with TTA), forced onto the CPU with a tiny
    network: a renamed library function breaks it here, not on the lent GPU."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_smoke.py"), "--allow-cpu", "--backbone",
                             "small_cnn", "--sizes", "96", "--train-steps", "2", "--predict-images", "16",
                             "--batch", "16"],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 96 px |")]
    assert len(rows) == 1, result.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert float(cells[2]) > 0 and float(cells[4]) > 0  # train and predict images/s were measured
