"""bloodcells.shift: the profiles (their images and plans digest-pinned), determinism per
seed and image, the sweep, the command line (the corruption families alone:
tests/test_corruptions.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bloodcells import corruptions, shift
from bloodcells.data import load_dataset
from cells import cell_images
from tests.conftest import REPO, snapshot

IMAGES = cell_images(24)


def test_none_profile_returns_an_unchanged_copy():
    out = shift.apply_shift(IMAGES, "none", seed=3)
    assert np.array_equal(out, IMAGES) and out is not IMAGES


# Digests (sha256, 16 hex) of apply_shift's images and describe's ops text on
# cell_images(90, seed=5) (90 images: the sweep's 17 x 5 cycle and more), computed by the
# shift code before the profile registry (commit b40f199) with the pinned numpy, scipy,
# Pillow and albumentations of requirements.txt. A profile whose images or plans change
# is a new profile: cached shifted sets and leaderboard rows would stop being comparable.
BEFORE_REGISTRY = {
    ("none", 0): ("1c28460be07842cb", "e5dec9887c7805c8"),
    ("none", 1): ("1c28460be07842cb", "e5dec9887c7805c8"),
    ("none", 2): ("1c28460be07842cb", "e5dec9887c7805c8"),
    ("none", 3): ("1c28460be07842cb", "e5dec9887c7805c8"),
    ("server", 0): ("a79799490633341c", "31dc26d8c1509c5a"),
    ("server", 1): ("e00f35a90192377d", "7b8db5958d087840"),
    ("server", 2): ("d35fcfd28a5c88e5", "78362af55cba3a39"),
    ("server", 3): ("967a78e34f41d2c0", "df4dce75c5d1436c"),
    ("second_opinion", 0): ("0a2a6fd4a1090172", "5cf30615e16f84c0"),
    ("second_opinion", 1): ("1dd788d260775487", "2dfc8e1a87786bea"),
    ("second_opinion", 2): ("095c48079ad8f0f7", "163dddc5033e41ac"),
    ("second_opinion", 3): ("6d5b0c9c7736dae5", "dad41665e7775f51"),
    ("sweep", 0): ("d8dfc09627fd6790", "cd5424f71bff5554"),
    ("sweep", 1): ("0a8961d0f831e8bf", "cd5424f71bff5554"),
    ("sweep", 2): ("2dd0c433e472ee68", "cd5424f71bff5554"),
    ("sweep", 3): ("81aa607d705ce0ed", "cd5424f71bff5554"),
}
DIGEST_IMAGES = cell_images(90, seed=5)


def _digest(images_or_texts) -> str:
    import hashlib

    if isinstance(images_or_texts, np.ndarray):
        data = images_or_texts.tobytes()
    else:
        data = "\n".join(images_or_texts).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _digests(profile: str, seed: int) -> tuple[str, str]:
    return (_digest(shift.apply_shift(DIGEST_IMAGES, profile, seed)),
            _digest(shift.describe(len(DIGEST_IMAGES), profile, seed)))


def test_every_profile_shifts_images_byte_for_byte_as_before_the_registry():
    assert {profile for profile, _ in BEFORE_REGISTRY} == set(shift.PROFILES)
    now = {key: _digests(*key) for key in BEFORE_REGISTRY}
    changed = {key: digests for key, digests in now.items() if digests != BEFORE_REGISTRY[key]}
    assert not changed, f"(images, ops) digests changed: {changed}"


def test_the_digests_catch_a_changed_plan(monkeypatch):
    import dataclasses

    server = shift.REGISTRY["server"]
    milder = dataclasses.replace(server, plan=lambda i, seed: [(f, max(1, s - 1)) for f, s in server.plan(i, seed)])
    monkeypatch.setitem(shift.REGISTRY, "server", milder)
    images, ops = _digests("server", 1)
    assert images != BEFORE_REGISTRY[("server", 1)][0] and ops != BEFORE_REGISTRY[("server", 1)][1]


def test_ops_text_round_trips_and_set_names():
    plan = [("blur", 3), ("jpeg", 2)]
    assert shift.encode_ops(plan) == "blur:3+jpeg:2" and shift.decode_ops("blur:3+jpeg:2") == plan
    assert shift.encode_ops([]) == "" and shift.decode_ops("") == []
    for i in range(30):
        steps = shift.plan(i, "server", 4)
        assert shift.decode_ops(shift.encode_ops(steps)) == steps
    with pytest.raises(ValueError, match="'blur' is not family:severity"):
        shift.decode_ops("blur")
    assert shift.set_name("server", 2) == "server_seed2" and shift.set_name("none", None) == "none"


def test_registry_is_the_one_list_of_profiles():
    assert shift.PROFILES == ("none", "server", "second_opinion", "sweep")
    assert shift.TRAINING_PROFILES == ("none", "server", "sweep")
    assert [shift.label(p) for p in shift.PROFILES] == ["clean", "server-like", "second_opinion", "sweep"]
    assert shift.label("retired") == "retired"
    assert shift.families("none") == () and shift.families("sweep") == corruptions.FAMILIES


@pytest.mark.parametrize("profile", ["server", "sweep"])
def test_same_seed_same_images_other_seed_other_images(profile):
    a = shift.apply_shift(IMAGES, profile, seed=7)
    b = shift.apply_shift(IMAGES, profile, seed=7)
    c = shift.apply_shift(IMAGES, profile, seed=8)
    assert a.dtype == np.uint8 and a.shape == IMAGES.shape
    assert np.array_equal(a, b)
    if profile == "server":
        assert not np.array_equal(a, c)
        assert shift.describe(len(IMAGES), profile, 7) != shift.describe(len(IMAGES), profile, 8)


def test_image_result_depends_only_on_seed_index_and_profile():
    full = shift.apply_shift(IMAGES, "server", seed=1)
    # A prefix is shifted exactly as in the full batch ...
    assert np.array_equal(shift.apply_shift(IMAGES[:5], "server", seed=1), full[:5])
    # ... and changing other images does not change image 3's result.
    other = IMAGES.copy()
    other[[0, 1, 2, 4]] = cell_images(4, seed=99)
    assert np.array_equal(shift.apply_shift(other, "server", seed=1)[3], full[3])


def test_inputs_are_not_modified():
    before = IMAGES.copy()
    shift.apply_shift(IMAGES, "server", seed=0)
    for family in corruptions.FAMILIES:
        corruptions.corrupt(IMAGES[:2], family, 5, seed=0)
    assert np.array_equal(IMAGES, before)


def test_server_profile_gives_each_image_one_to_three_distinct_operations():
    plans = [shift.plan(i, "server", seed=0) for i in range(600)]
    counts = np.bincount([len(p) for p in plans], minlength=4)
    assert counts[0] == 0 and all(counts[k] > 100 for k in (1, 2, 3))
    for p in plans:
        assert len({family for family, _ in p}) == len(p)  # no family twice
        assert all(1 <= severity <= 5 for _, severity in p)
    used = {family for p in plans for family, _ in p}
    assert used == set(corruptions.FAMILIES)
    # Every shifted image differs from its clean self.
    out = shift.apply_shift(IMAGES, "server", seed=0)
    assert all(not np.array_equal(o, i) for o, i in zip(out, IMAGES))


def test_sweep_profile_cycles_through_families_and_severities():
    n = len(corruptions.FAMILIES) * 5
    seen = {tuple(shift.plan(i, "sweep", 0)[0]) for i in range(n)}
    assert seen == {(f, s) for f in corruptions.FAMILIES for s in corruptions.SEVERITIES}


def test_sweep_yields_every_family_and_severity_once():
    seen = [(f, s) for f, s, out in shift.sweep(IMAGES[:2], seed=0) if out.shape == (2, 96, 96, 3)]
    assert seen == [(f, s) for f in corruptions.FAMILIES for s in corruptions.SEVERITIES]
    some = list(shift.sweep(IMAGES[:2], seed=0, families=["blur"], severities=[2]))
    assert len(some) == 1 and np.array_equal(some[0][2], corruptions.corrupt(IMAGES[:2], "blur", 2, 0))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="profile"):
        shift.apply_shift(IMAGES, "wild")
    with pytest.raises(ValueError, match="family"):
        corruptions.corrupt(IMAGES, "sepia", 1)
    with pytest.raises(ValueError, match="severity"):
        corruptions.corrupt(IMAGES, "blur", 6)
    with pytest.raises(ValueError, match="uint8"):
        shift.apply_shift(IMAGES.astype(np.float32))


def test_module_does_not_import_tensorflow():
    code = "import sys, bloodcells.shift as s; s.apply_shift(s.np.zeros((1,96,96,3), s.np.uint8)); " \
           "print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "bloodcells.shift", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})


def test_cli_writes_a_loadable_shifted_set_and_a_preview(tmp_path):
    labels = np.arange(len(IMAGES)) % 8
    src = tmp_path / "in.npz"
    np.savez(src, images=IMAGES, labels=labels)
    out, png, sweep_png = tmp_path / "shifted.npz", tmp_path / "preview.png", tmp_path / "sweep.png"
    result = _cli("--data", src, "--profile", "server", "--seed", 4, "--out", out, "--preview", png,
                  "--sweep-preview", sweep_png)
    assert result.returncode == 0, result.stderr
    shifted = load_dataset(out, notify=None)
    assert np.array_equal(shifted.images, shift.apply_shift(IMAGES, "server", 4))
    assert np.array_equal(shifted.labels, labels)
    with np.load(out) as z:
        assert list(z["ops"]) == shift.describe(len(IMAGES), "server", 4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input_is_one_line_error_and_writes_nothing(tmp_path):
    before = snapshot(tmp_path)
    result = _cli("--data", tmp_path / "missing.npz", "--out", tmp_path / "o.npz")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "missing.npz" in result.stderr
    result = _cli("--data", tmp_path / "missing.npz", "--out", tmp_path / "o.txt")
    assert result.returncode == 2 and "--out" in result.stderr
    assert snapshot(tmp_path) == before


def test_real_images_keep_their_size_and_change(pbc_path):
    data = load_dataset(pbc_path, "val", notify=None).subset(np.arange(40))
    out = shift.apply_shift(data.images, "server", seed=0)
    assert out.shape == data.images.shape
    changed = [(o != i).mean() > 0.01 for o, i in zip(out, data.images)]
    assert np.mean(changed) > 0.9
