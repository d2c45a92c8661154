"""Shared fixtures. Real-data tests read ../shared/data/pbc96_dev.npz (or
$BLOODCELLS_PBC) and skip cleanly when it is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
PBC_PATH = Path(os.environ.get("BLOODCELLS_PBC", REPO.parent / "shared" / "data" / "pbc96_dev.npz"))


@pytest.fixture(scope="session")
def pbc_path() -> Path:
    if not PBC_PATH.is_file():
        pytest.skip(f"real PBC data not found at {PBC_PATH}")
    return PBC_PATH


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def snapshot(folder: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every file under folder: to prove nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def imagenet_standin(tmp_path_factory):
    """keras.applications' `weights="imagenet"` served offline by stand-in weight files
    (tests/standin_weights.py): only the download is replaced."""
    from types import SimpleNamespace

    from standin_weights import serve_standin_weights

    served = SimpleNamespace(folder=tmp_path_factory.mktemp("imagenet_standin"), calls=[])
    with serve_standin_weights(served.folder, served.calls):
        yield served


# -- shared by the augmentation tests (augment, augment_layers) ---------------------------------

@pytest.fixture(scope="module")
def batch():
    """Six blocky random images (12 x 12 blocks of 8 x 8 pixels) and labels 0-5."""
    rng = np.random.default_rng(0)
    # smooth random images (a flat random image is invariant to too much)
    base = rng.integers(0, 256, (6, 12, 12, 3)).astype(np.uint8)
    images = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)
    labels = np.array([0, 1, 2, 3, 4, 5])
    return images, labels


# -- shared by the evaluation tests (ingestion, local_eval, evaluate) -------------------------

@pytest.fixture
def pixel_zip(tmp_path):
    """The pixel model (tests/pixel_zips.py) zipped with its settings: class = red pixel (0, 0) // 30."""
    from pixel_zips import PIXEL_MODEL, make_zip

    return make_zip(tmp_path / "pixel.zip", PIXEL_MODEL, {"settings.json": json.dumps({"step": 30})})


@pytest.fixture
def test_set(tmp_path):
    """24 images, 3 of which the pixel model gets wrong: (path, labels, its predictions)."""
    from pixel_zips import encoded_images

    labels = np.arange(24) % 8
    predicted = labels.copy()
    predicted[:3] = (labels[:3] + 1) % 8  # 3 wrong: accuracy 21/24 on clean images
    path = tmp_path / "test.npz"
    np.savez(path, images=encoded_images(predicted), labels=labels)
    return path, labels, predicted


# -- shared by the submission tests (build, preflight, ingestion) -----------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An untrained tiny export named "tiny" (bloodcells.untrained), once per test file."""
    from bloodcells.untrained import export_tiny

    return export_tiny(tmp_path_factory.mktemp("export") / "tiny", name="tiny")


# -- shared by the EfficientNet-Lite tests (lite_weights, torch_pickle) ------------------------

@pytest.fixture(scope="module")
def checkpoint():
    """The registry package's EfficientNet-Lite0 checkpoint (.pth), installed with the requirements."""
    from bloodcells import lite_weights

    return lite_weights.packaged_checkpoint("efficientnet_lite0")
