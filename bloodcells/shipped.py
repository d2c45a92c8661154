"""The shipped contract, stated once: where model.py is and how the library loads it, the
probe images every check predicts, how many, and how closely a shipped network must
reproduce the training model (a leaf module: anything may import it without a circle)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from . import IMAGE_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_PY = REPO_ROOT / "model.py"
PROBE_IMAGES = 64  # probe images an export stores its reference on and the pre-upload check predicts
REFERENCE_TOLERANCE = 1e-5  # largest |p_zip - p_training model| (single view, float32)


def shipped_model_module():
    """The top-level model.py, loaded by path (it is self-contained and never imports
    this package; importing it by name could pick up another model.py on sys.path)."""
    name = "_bloodcells_shipped_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MODEL_PY)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def probe_images(n: int = PROBE_IMAGES, seed: int = 0) -> np.ndarray:
    """Deterministic cell-like probe images: a dark blob on a light, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(30, 66, size=2)
        r = rng.uniform(10, 30)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        colour = rng.uniform(60, 200, size=3)
        img = 225 - blob * (225 - colour) + rng.normal(0, 8, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images
