"""bloodcells.second_opinion: the albumentations shift profile (determinism, severities,
the library doing the work, cache key, training refusing it, preview grid)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bloodcells import evaluate, second_opinion, shift
from bloodcells.cli import UserError
from cells import cell_images
from tests.conftest import REPO

IMAGES = cell_images(6, seed=5)


def test_profile_is_registered_and_training_cannot_use_it():
    from bloodcells.config import resolve_config

    assert "second_opinion" in shift.PROFILES and "second_opinion" not in shift.TRAINING_PROFILES
    assert shift.families("second_opinion") == second_opinion.FAMILIES
    with pytest.raises(UserError, match=r"shift\.profile: 'second_opinion' is held out for evaluation"):
        resolve_config({"shift": {"profile": "second_opinion"}}, "cfg.toml")
    assert resolve_config({"shift": {"profile": "server"}}).shift.profile == "server"


@pytest.mark.parametrize("family", second_opinion.FAMILIES)
def test_every_family_is_deterministic_and_stronger_at_severity_5(family):
    distances = []
    for severity in second_opinion.SEVERITIES:
        a = second_opinion.corrupt(IMAGES, family, severity, seed=3)
        assert a.dtype == np.uint8 and a.shape == IMAGES.shape
        assert np.array_equal(a, second_opinion.corrupt(IMAGES, family, severity, seed=3))
        distances.append(np.abs(a.astype(np.float64) - IMAGES).mean())
    assert distances[0] > 0, f"{family}: severity 1 left the images unchanged"
    assert distances[4] > distances[0], f"{family}: severity 5 no stronger than 1 ({distances})"


def test_the_library_does_the_corruption():
    """corrupt() equals the albumentations transform run directly with the same seed."""
    import albumentations as A

    image = IMAGES[2]
    seed = second_opinion._seed(11, 2, "corrupt", "gauss_noise", 4)
    direct = A.Compose([A.GaussNoise(std_range=(0.14, 0.14), per_channel=True, p=1.0)], p=1.0)
    direct.set_random_seed(seed)
    expected = direct(image=image)["image"]
    assert np.array_equal(second_opinion.corrupt(IMAGES, "gauss_noise", 4, seed=11)[2], expected)


def test_profile_depends_only_on_seed_and_index():
    images = cell_images(16, seed=2)
    full = shift.apply_shift(images, "second_opinion", seed=4)
    assert np.array_equal(full, shift.apply_shift(images, "second_opinion", seed=4))
    assert np.array_equal(shift.apply_shift(images[:5], "second_opinion", seed=4), full[:5])
    other = images.copy()
    other[[0, 1, 2, 4]] = cell_images(4, seed=99)
    assert np.array_equal(shift.apply_shift(other, "second_opinion", seed=4)[3], full[3])
    assert not np.array_equal(shift.apply_shift(images, "second_opinion", seed=5), full)
    assert not (full == images).all(axis=(1, 2, 3)).any(), "an image came out unchanged"


def test_plan_and_describe_say_what_ran():
    images = cell_images(16, seed=3)
    shifted = shift.apply_shift(images, "second_opinion", seed=2)
    texts = shift.describe(len(images), "second_opinion", seed=2)
    counts = set()
    for i, image in enumerate(images):
        steps = shift.plan(i, "second_opinion", seed=2)
        counts.add(len(steps))
        assert texts[i] == "+".join(f"{f}:{s}" for f, s in steps)
        assert all(f in second_opinion.FAMILIES and s in second_opinion.SEVERITIES for f, s in steps)
        for step, (family, severity) in enumerate(steps):
            image = second_opinion.run(image, family, severity, second_opinion._seed(2, i, "step", step))
        assert np.array_equal(image, shifted[i])
    assert counts == set(second_opinion.OPS_PER_IMAGE)
    with pytest.raises(ValueError, match="unknown second_opinion family"):
        second_opinion.corrupt(IMAGES, "volcano", 1)
    with pytest.raises(ValueError, match="severity must be 1-5"):
        second_opinion.corrupt(IMAGES, "fog", 6)


def test_the_family_table_counts_every_second_opinion_family():
    """The per-family table of an evaluation names the profile's own families: it used to
    keep only the names the second opinion shares with ours (jpeg, gamma)."""
    plans = [shift.plan(i, "second_opinion", seed=1) for i in range(60)]
    correct = np.random.default_rng(0).random(60) < 0.7
    table = evaluate.family_table(correct, plans, "second_opinion")
    used = {f for steps in plans for f, _ in steps}
    assert set(table) == used and len(used) > 10
    for family, cells in table.items():
        touched = [i for i, steps in enumerate(plans) if family in dict(steps)]
        assert cells["all"] == (pytest.approx(correct[touched].mean()), len(touched))
        assert sum(n for s, (_, n) in cells.items() if s != "all") == len(touched)


def test_cache_is_written_reused_and_keyed_on_code_and_library_version(tmp_path, monkeypatch):
    images = cell_images(4, seed=8)
    sha = evaluate.data_fingerprint(images, np.zeros(4))
    shifted, plans, _ = evaluate.cached_shift(images, "second_opinion", 0, sha, tmp_path)
    cache = tmp_path / f"{sha[:16]}_second_opinion_0.npz"
    assert cache.exists() and np.array_equal(shifted, shift.apply_shift(images, "second_opinion", 0))
    assert plans == [shift.plan(i, "second_opinion", 0) for i in range(4)]
    with np.load(cache) as cached:
        ops, code = cached["ops"], cached["shift_code"]
    planted = np.zeros_like(images)
    np.savez(cache, images=planted, ops=ops, shift_code=code)
    assert np.array_equal(evaluate.cached_shift(images, "second_opinion", 0, sha, tmp_path)[0], planted)
    # The key names the library's version: another albumentations gives another code.
    before = evaluate.shift_code()
    monkeypatch.setattr(second_opinion, "library_version", lambda: "9.9.9")
    assert evaluate.shift_code() != before


def test_cli_writes_the_family_by_severity_grid(tmp_path):
    labels = np.arange(8).repeat(2)
    data = tmp_path / "small.npz"
    np.savez(data, images=cell_images(16, seed=1), labels=labels)
    before = data.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "bloodcells.shift", "--data", str(data), "--profile", "second_opinion",
         "--out", str(tmp_path / "out.npz"), "--sweep-preview", str(tmp_path / "grid.png")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    with np.load(tmp_path / "out.npz") as out:
        assert list(out["ops"]) == shift.describe(16, "second_opinion", 0)
    assert data.read_bytes() == before
