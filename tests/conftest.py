"""Shared fixtures. Real-data tests read ../shared/data/pbc96_dev.npz (or
$BLOODCELLS_PBC) and skip cleanly when it is absent."""

from __future__ import annotations

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


# -- shared by the augmentation tests (test_augment, test_augment_layers) ----------------

@pytest.fixture(scope="module")
def batch():
    """Six blocky random images (12 x 12 blocks of 8 x 8 pixels) and labels 0-5."""
    rng = np.random.default_rng(0)
    # smooth random images (a flat random image is invariant to too much)
    base = rng.integers(0, 256, (6, 12, 12, 3)).astype(np.uint8)
    images = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)
    labels = np.array([0, 1, 2, 3, 4, 5])
    return images, labels
