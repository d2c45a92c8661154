"""Blood-smear-like test images made with numpy alone, for the tests of several modules
(shift, corruptions, second_opinion, budget, ensemble_select, embeddings, cleaning)."""

from __future__ import annotations

import numpy as np


def cell_images(n: int, seed: int = 0) -> np.ndarray:
    """Blood-smear-like test images: pink textured background, a dark purple disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    out = np.empty((n, 96, 96, 3), dtype=np.uint8)
    for i in range(n):
        img = np.array([235.0, 200.0, 190.0]) + rng.normal(0, 6, (96, 96, 3))
        cy, cx, r = rng.uniform(35, 60), rng.uniform(35, 60), rng.uniform(12, 25)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img[disc] = np.array([90.0, 50.0, 140.0]) + rng.normal(0, 15, (int(disc.sum()), 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def edge_shift(img, dy, dx):
    """`img` (96, 96, 3) moved by (dy, dx) pixels, at most 3, the edge pixels repeated."""
    padded = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[3 - dy:3 - dy + 96, 3 - dx:3 - dx + 96])
