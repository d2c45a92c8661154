"""bloodcells.synth_draw: the drawn cells look like their classes (nuclei, granules,
cytoplasm colour) and an outlier shows several cells (the data set assembled from them is
tests/test_synth.py's)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bloodcells import IMAGE_SHAPE, NUM_CLASSES, synth_draw


def _nucleus_blobs(img, min_area=25):
    """Count dark (nucleus-coloured) connected regions."""
    dark = img.astype(float).mean(axis=2) < 110
    regions, n = ndimage.label(dark)
    areas = ndimage.sum(dark, regions, range(1, n + 1))
    return int((np.asarray(areas) >= min_area).sum())


def test_outliers_show_several_cells():
    rng = np.random.default_rng(0)
    round_nuclei = [synth_draw.ERYTHROBLAST, synth_draw.LYMPHOCYTE]
    singles = [_nucleus_blobs(synth_draw.render_cell(c, rng)) for c in round_nuclei * 4]
    multis = [_nucleus_blobs(synth_draw.render_outlier(round_nuclei, rng)) for _ in range(8)]
    assert np.median(singles) == 1 and np.median(multis) >= 2
    assert synth_draw.render_outlier([0, 3, 5], rng).shape == IMAGE_SHAPE


def _largest_dark_region(img):
    dark = img[..., 1] < 120  # nuclei and dark granules absorb green most
    regions, n = ndimage.label(dark)
    return float(np.max(ndimage.sum(dark, regions, range(1, n + 1)), initial=0))


def _orange_pixels(img):
    f = img.astype(float)
    return float(((f[..., 0] - f[..., 2] > 45) & (f[..., 1] < 150)).sum())


def _blue_pixels(img):
    f = img.astype(float)
    return float(((f[..., 2] - f[..., 0] > 10) & (f[..., 1] < 190)).sum())


def test_morphology_follows_the_classes():
    rng = np.random.default_rng(2)
    images = {c: synth_draw.render_cells([c] * 16, rng) for c in range(NUM_CLASSES)}
    median = lambda fn, c: np.median([fn(img) for img in images[c]])  # noqa: E731
    dark = {c: median(_largest_dark_region, c) for c in images}
    orange = {c: median(_orange_pixels, c) for c in images}
    blue = {c: median(_blue_pixels, c) for c in images}
    others = [c for c in images if c != synth_draw.PLATELET]
    # platelets: no white cell, only small fragments
    assert dark[synth_draw.PLATELET] < 0.4 * min(dark[c] for c in others)
    # basophils: dense dark granules over the nucleus make the largest dark area
    assert dark[synth_draw.BASOPHIL] == max(dark.values())
    # eosinophils: orange-red granules, far more than any other class
    assert orange[synth_draw.EOSINOPHIL] > 3 * max(v for c, v in orange.items() if c != synth_draw.EOSINOPHIL)
    # blue cytoplasm: lymphocytes, monocytes, immature granulocytes, not granulocytes
    for c in (synth_draw.LYMPHOCYTE, synth_draw.MONOCYTE, synth_draw.IMMATURE_GRANULOCYTE):
        assert blue[c] > 1.5 * max(blue[synth_draw.NEUTROPHIL], blue[synth_draw.EOSINOPHIL])
