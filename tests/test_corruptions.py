"""bloodcells.corruptions: every family changes images at every severity, deterministically,
and the graded families damage more at each step (the profiles that combine them are
tests/test_shift.py's)."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcells import corruptions
from cells import cell_images

IMAGES = cell_images(24)


@pytest.mark.parametrize("family", corruptions.FAMILIES)
def test_every_family_changes_images_at_every_severity(family):
    for severity in corruptions.SEVERITIES:
        out = corruptions.corrupt(IMAGES[:4], family, severity, seed=0)
        assert out.dtype == np.uint8 and out.shape == (4, 96, 96, 3)
        assert not np.array_equal(out, IMAGES[:4]), (family, severity)
        assert np.array_equal(out, corruptions.corrupt(IMAGES[:4], family, severity, seed=0))


# Families whose damage grows with severity (flip has no "stronger"; geometry is a
# different view rather than a damage, so it is measured separately below).
GRADED = ("stain", "hue_saturation", "brightness", "contrast", "gamma", "noise", "blur", "jpeg",
          "grayscale", "channel_mix", "posterize", "solarize", "occlusion", "zoom", "translate", "rotate")


@pytest.mark.parametrize("family", GRADED)
def test_damage_grows_with_severity(family):
    damage = [np.abs(corruptions.corrupt(IMAGES, family, s, seed=2).astype(float) - IMAGES).mean()
              for s in corruptions.SEVERITIES]
    assert all(a < b for a, b in zip(damage, damage[1:])), (family, np.round(damage, 2))
