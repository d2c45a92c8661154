"""bloodcells.distribute, training under tf.distribute and the precision options: mirrored on
two logical CPU devices and two local multi-worker processes train the one-device model
(same global batch); only the chief writes; --resume continues from the chief's checkpoint;
mixed precision with XLA trains and exports float32 weights; exports load in model.py;
a TPU strategy without a TPU is a one-line error. (Resuming under mixed precision is
tests/test_train.py's.)

Every strategy run is a subprocess (tests/distributed_job.py): logical devices and a cluster
must be configured before TensorFlow starts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bloodcells.cli import UserError
from bloodcells.distribute import make_strategy
from bloodcells.submission import stage
from shipped_folder import load_shipped
from tests import distributed_job
from tests.conftest import snapshot

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "tests" / "distributed_job.py"
TIMEOUT = 420  # seconds per job: generous, the machine is shared; processes are killed after it
# Adam turns float rounding in near-zero gradients into steps of up to ~lr, so weights
# agree to ~1e-4 after 4 steps at lr 1e-3; unsynchronised BatchNorm (per-replica
# statistics) or a wrong batch split moves them by >= 4e-3.
WEIGHTS_ATOL = 5e-4


def job_env(**extra):
    env = {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra)
    return env


def run_job(*args, **env):
    result = subprocess.run([sys.executable, str(JOB), *map(str, args)], capture_output=True, text=True,
                            cwd=REPO, env=job_env(**env), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist_data") / "tiny.npz"
    distributed_job.write_data(path)
    return path


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory, data):
    """The default (one device) and mirrored runs, in one process split into 2 logical CPUs."""
    out = tmp_path_factory.mktemp("mirrored")
    run_job("mirrored", data, out)
    return out


def model_variables(run: Path) -> list:
    with np.load(run / "checkpoint.npz") as archive:
        return [archive[k] for k in sorted(archive.files) if k.startswith("model_")]


def history(run: Path) -> list:
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


def assert_same_training(reference: Path, run: Path) -> None:
    ref_rows, rows = history(reference), history(run)
    assert len(ref_rows) == len(rows) == 2
    for a, b in zip(ref_rows, rows):
        for key in ("loss", "accuracy", "val_loss", "val_acc", "val_shifted_acc", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
    for a, b in zip(model_variables(reference), model_variables(run), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=WEIGHTS_ATOL)


def shipped_probabilities(export: Path, folder: Path, images: np.ndarray) -> np.ndarray:
    stage([export], folder, tta=1)  # one view: the JSON is where TTA is set
    return load_shipped(folder).Model().predict_proba(images)


def test_mirrored_on_two_devices_trains_the_one_device_model(mirrored, data, tmp_path):
    info = json.loads((mirrored / "run_mirrored" / "config.json").read_text())["strategy"]
    assert info["kind"] == "MirroredStrategy" and info["replicas"] == 2
    assert json.loads((mirrored / "run_default" / "config.json").read_text())["strategy"]["replicas"] == 1
    assert_same_training(mirrored / "run_default", mirrored / "run_mirrored")

    images = np.load(data)["images"][:12]
    one = shipped_probabilities(mirrored / "export_default", tmp_path / "one", images)
    two = shipped_probabilities(mirrored / "export_mirrored", tmp_path / "two", images)
    assert one.shape == (12, 8) and np.allclose(one.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(one, two, atol=1e-4)


def free_ports(n: int) -> list:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_cluster(data, folders, *extra) -> list:
    """Two worker processes on 127.0.0.1 (worker 0 is the chief); both always ended.
    folders: per worker (run, export, TMPDIR). Returns the exit codes and output."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, logs = [], []
    try:
        for index, (run, export, tmp) in enumerate(folders):
            tmp.mkdir(parents=True, exist_ok=True)
            log = open(tmp.parent / f"worker{index}_{len(extra)}.log", "w+")
            logs.append(log)
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen([sys.executable, str(JOB), "worker", str(data), str(run), str(export),
                                           *extra], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                          env=job_env(TF_CONFIG=tf_config, TMPDIR=str(tmp))))
        for proc in procs:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return [p.returncode for p in procs], outputs


def left_in(tmp: Path) -> list:
    """What a process left in its TMPDIR, less TensorFlow's autograph cache (__pycache__),
    which every TensorFlow process writes there."""
    return sorted(p.name for p in tmp.iterdir() if p.name != "__pycache__")


def test_multiworker_chief_alone_writes_resumes_and_trains_the_one_device_model(mirrored, data, tmp_path):
    chief = (tmp_path / "chief_run", tmp_path / "chief_export", tmp_path / "chief_tmp")
    # the other worker gets its own folders, as on another machine
    worker = (tmp_path / "worker_run", tmp_path / "worker_export", tmp_path / "worker_tmp")

    # Both workers stop right after epoch 1's checkpoint (the machines went away).
    codes, out = run_cluster(data, [chief, worker], "--stop-after-epoch", "1")
    assert codes == [3, 3], out[0][-3000:] + out[1][-3000:]
    assert len(history(chief[0])) == 1 and (chief[0] / "checkpoint.npz").is_file()
    assert not chief[1].exists()
    assert not worker[0].exists() and not worker[1].exists()
    assert left_in(worker[2]) == [], "the worker left files in its temporary folder"

    # Resume: every worker reads the chief's run folder (here a copy, as if synced).
    shutil.copytree(chief[0], worker[0])
    before = snapshot(worker[0])
    codes, out = run_cluster(data, [chief, worker], "--resume")
    assert codes == [0, 0], out[0][-3000:] + out[1][-3000:]
    assert "resume: from epoch 1" in out[0] and "resume: from epoch 1" in out[1]
    assert snapshot(worker[0]) == before, "the worker wrote into the run folder"
    assert not worker[1].exists(), "the worker wrote the export"
    assert left_in(worker[2]) == [], "the worker left files in its temporary folder"
    assert (chief[1] / "model.json").is_file() and (chief[0] / "metrics.json").is_file()
    info = json.loads((chief[0] / "config_resume.json").read_text())["strategy"]
    assert info["workers"] == 2 and info["replicas"] == 2 and info["chief"]

    # Interrupted and resumed on two workers == uninterrupted on one device.
    assert_same_training(mirrored / "run_default", chief[0])
    images = np.load(data)["images"][:12]
    np.testing.assert_allclose(shipped_probabilities(chief[1], tmp_path / "shipped", images),
                               shipped_probabilities(mirrored / "export_default", tmp_path / "one", images),
                               atol=1e-4)


# mixed_float16 computes activations with an 11-bit mantissa (relative rounding ~5e-4
# per op); through this network the probabilities stay within 1e-2 of the float32
# rebuild (measured: ~1e-4, bench/RESULTS.md).
FLOAT16_PROBS_ATOL = 1e-2


def test_mixed_precision_and_xla_train_and_export_float32_weights(data, tmp_path):
    result = run_job("precision", data, tmp_path)
    # float16 inside, float32 weights and output; compile added dynamic loss scaling
    assert "compute dtype float16 weights dtype float32 probs dtype float32 optimizer LossScaleOptimizer" \
        in result.stdout
    assert len(history(tmp_path / "run")) == 2
    import h5py

    with h5py.File(tmp_path / "export" / "model.weights.h5") as h5:
        dtypes = set()
        h5.visititems(lambda name, item: dtypes.add(str(item.dtype)) if isinstance(item, h5py.Dataset) else None)
    assert "float32" in dtypes and "float16" not in dtypes  # (int64: random-generator states)
    images = np.load(data)["images"][:16]
    training = np.load(tmp_path / "training_model_probs.npy")
    shipped = shipped_probabilities(tmp_path / "export", tmp_path / "shipped", images)
    np.testing.assert_allclose(shipped, training, rtol=0, atol=FLOAT16_PROBS_ATOL)


def test_tpu_strategy_without_a_tpu_is_a_clear_error():
    with pytest.raises(UserError, match="train.strategy: 'tpu'"):
        make_strategy("tpu", "")
