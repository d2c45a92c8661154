"""bloodcells.data, the data layer: every format, every malformed input, conversions and
splits."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bloodcells import IMAGE_SHAPE
from bloodcells.data import DataError, load_dataset, stratified_split, train_val
from conftest import REPO, snapshot


def images(n, rng, shape=IMAGE_SHAPE, dtype=np.uint8):
    return rng.integers(0, 256, size=(n, *shape)).astype(dtype)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def run_data_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bloodcells.data", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=120)


# -- formats --------------------------------------------------------------------------

def test_an2dl_file_with_flat_and_column_labels(tmp_path, rng):
    x = images(12, rng)
    for labels in (np.arange(12) % 8, (np.arange(12) % 8)[:, None]):
        path = write_npz(tmp_path / "t.npz", images=x, labels=labels.astype(np.uint8))
        data = load_dataset(path, notify=None)
        assert data.images.dtype == np.uint8 and data.images.shape == (12, 96, 96, 3)
        assert data.labels.dtype == np.int64 and data.labels.shape == (12,)
        np.testing.assert_array_equal(data.images, x)
        np.testing.assert_array_equal(data.labels, np.arange(12) % 8)


def test_medmnist_file_picks_split_by_name(tmp_path, rng):
    path = write_npz(tmp_path / "m.npz", train_images=images(8, rng), train_labels=np.arange(8)[:, None],
                     val_images=images(5, rng), val_labels=np.arange(5)[:, None])
    assert len(load_dataset(path, "train", notify=None)) == 8
    assert len(load_dataset(path, "val", notify=None)) == 5
    assert len(load_dataset(path, notify=None)) == 8  # train by default
    with pytest.raises(DataError, match=r"m\.npz: split: 'test' not in the file; expected one of \['train', 'val'\]"):
        load_dataset(path, "test", notify=None)


def test_folder_of_class_folders(tmp_path, rng):
    for label, name in ((0, "basophil"), (6, "6"), (3, "ig")):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(images(1, rng, shape=(120, 110, 3))[0]).save(tmp_path / name / f"{i}.png")
    (tmp_path / "6" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    data = load_dataset(tmp_path, notify=None)
    assert data.images.shape == (6, 96, 96, 3)
    assert sorted(data.labels.tolist()) == [0, 0, 3, 3, 6, 6]


def test_folder_errors_name_the_file(tmp_path, rng):
    (tmp_path / "monocyte").mkdir()
    (tmp_path / "monocyte" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: image: unreadable or truncated"):
        load_dataset(tmp_path, notify=None)
    (tmp_path / "monocyte" / "broken.jpg").unlink()
    (tmp_path / "dragons").mkdir()
    with pytest.raises(DataError, match=r"dragons: class folder: unknown name 'dragons'; expected 0-7"):
        load_dataset(tmp_path, notify=None)


# -- conversions announced as notices ---------------------------------------------------

def test_float_images_in_unit_range_are_scaled(tmp_path, rng):
    x = images(4, rng)
    path = write_npz(tmp_path / "f.npz", images=x.astype(np.float32) / 255.0, labels=np.arange(4))
    seen = []
    data = load_dataset(path, notify=seen.append)
    np.testing.assert_array_equal(data.images, x)
    assert any("0-1 scaled to 0-255" in line for line in seen)


def test_float_images_in_byte_range_are_rounded(tmp_path, rng):
    x = images(4, rng)
    path = write_npz(tmp_path / "f.npz", images=x.astype(np.float64) + 0.2, labels=np.arange(4))
    seen = []
    data = load_dataset(path, notify=seen.append)
    np.testing.assert_array_equal(data.images, x)
    assert any("float64 images in 0-255 converted to uint8" in line for line in seen)


def test_other_sizes_are_resized_with_a_notice(tmp_path, rng):
    path = write_npz(tmp_path / "big.npz", images=images(3, rng, shape=(128, 128, 3)), labels=np.arange(3))
    seen = []
    data = load_dataset(path, notify=seen.append)
    assert data.images.shape == (3, 96, 96, 3)
    assert any("128x128, resized to 96x96" in line for line in seen)


def test_one_hot_labels_are_converted(tmp_path, rng):
    labels = np.eye(8, dtype=np.float32)[[3, 1, 7]]
    path = write_npz(tmp_path / "o.npz", images=images(3, rng), labels=labels)
    assert load_dataset(path, notify=None).labels.tolist() == [3, 1, 7]


# -- malformed inputs: one line naming file and field, nothing written -------------------

def _bad_files(tmp_path, rng):
    x = images(4, rng)
    ok = np.arange(4)
    truncated = tmp_path / "truncated.npz"
    write_npz(truncated, images=x, labels=ok)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    return {
        "missing images key": (write_npz(tmp_path / "a.npz", pictures=x, labels=ok),
                               r"a\.npz: images: key missing; expected 'images'"),
        "missing labels key": (write_npz(tmp_path / "b.npz", images=x),
                               r"b\.npz: labels: key missing; expected integer labels 0-7"),
        "length mismatch": (write_npz(tmp_path / "c.npz", images=x, labels=np.arange(3)),
                            r"c\.npz: labels: 3 labels for 4 images; expected one label per image"),
        "wrong rank": (write_npz(tmp_path / "d.npz", images=x[..., 0].reshape(4, -1), labels=ok),
                       r"d\.npz: images: rank 2 with shape \(4, 9216\); expected \(N, 96, 96, 3\)"),
        "wrong channels": (write_npz(tmp_path / "e.npz", images=x[..., :1], labels=ok),
                           r"e\.npz: images: 1 channels in shape \(4, 96, 96, 1\); expected 3 \(RGB\)"),
        "labels outside 0-7": (write_npz(tmp_path / "f.npz", images=x, labels=np.array([0, 1, 8, 2])),
                               r"f\.npz: labels: 1 values outside 0-7 \(e\.g\. 8\); expected integers 0-7"),
        "negative labels": (write_npz(tmp_path / "g.npz", images=x, labels=np.array([0, -1, 2, 2])),
                            r"g\.npz: labels: 1 values outside 0-7 \(e\.g\. -1\)"),
        "non-integer labels": (write_npz(tmp_path / "h.npz", images=x, labels=np.array([0, 1.5, 2, 3])),
                               r"h\.npz: labels: non-integer values \(e\.g\. 1\.5\); expected integers 0-7"),
        "string labels": (write_npz(tmp_path / "i.npz", images=x, labels=np.array(["a", "b", "c", "d"])),
                          r"i\.npz: labels: dtype <U1; expected integer class labels 0-7"),
        "NaN pixels": (write_npz(tmp_path / "j.npz", images=np.where(x > 250, np.nan, x / 255.0), labels=ok),
                       r"j\.npz: images: \d+ NaN or infinite values; expected finite pixels in 0-255"),
        "inf pixels": (write_npz(tmp_path / "k.npz", images=np.full(x.shape, np.inf, np.float32), labels=ok),
                       r"k\.npz: images: \d+ NaN or infinite values"),
        "pixels out of range": (write_npz(tmp_path / "l.npz", images=x.astype(np.int32) * 2, labels=ok),
                                r"l\.npz: images: values span 0\.\.\d+; expected 0-255"),
        "empty set": (write_npz(tmp_path / "m.npz", images=x[:0], labels=ok[:0]),
                      r"m\.npz: images: empty set \(0 images\); expected at least one image"),
        "unreadable file": (garbage, r"garbage\.npz: file: unreadable or truncated"),
        "truncated file": (truncated, r"truncated\.npz: (file|images|labels): unreadable or truncated"),
        "missing file": (tmp_path / "nope.npz", r"nope\.npz: file not found"),
    }


def test_every_malformed_input_raises_a_one_line_error(tmp_path, rng):
    for case, (path, pattern) in _bad_files(tmp_path, rng).items():
        with pytest.raises(DataError) as info:
            load_dataset(path, notify=None)
        message = str(info.value)
        assert "\n" not in message, case
        assert __import__("re").search(pattern, message), f"{case}: {message}"


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, rng):
    cases = _bad_files(tmp_path, rng)
    before = snapshot(tmp_path)
    for case, (path, pattern) in cases.items():
        result = run_data_cli(path, cwd=tmp_path)
        assert result.returncode == 2, (case, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.stderr)
        assert __import__("re").search(pattern, lines[0]), (case, lines[0])
    assert snapshot(tmp_path) == before  # inputs untouched, nothing new written


# -- splits -----------------------------------------------------------------------------

def test_stratified_split_is_seeded_and_keeps_class_shares():
    labels = np.repeat(np.arange(8), [10, 30, 15, 28, 10, 14, 33, 23])
    train_a, val_a = stratified_split(labels, 0.2, seed=1)
    train_b, val_b = stratified_split(labels, 0.2, seed=1)
    _, val_c = stratified_split(labels, 0.2, seed=2)
    np.testing.assert_array_equal(val_a, val_b)
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.array_equal(val_a, val_c)
    assert set(train_a).isdisjoint(val_a) and len(train_a) + len(val_a) == len(labels)
    for label, count in enumerate(np.bincount(labels)):
        assert np.sum(labels[val_a] == label) == round(0.2 * count)


def test_train_val_uses_medmnist_splits_or_a_stratified_split(tmp_path, rng):
    med = write_npz(tmp_path / "m.npz", train_images=images(16, rng), train_labels=np.arange(16) % 8,
                    val_images=images(8, rng), val_labels=np.arange(8))
    train, val = train_val(med, notify=None)
    assert (len(train), len(val)) == (16, 8)
    flat = write_npz(tmp_path / "a.npz", images=images(40, rng), labels=np.arange(40) % 8)
    train, val = train_val(flat, val_fraction=0.25, seed=0, notify=None)
    assert (len(train), len(val)) == (32, 8)
    assert sorted(val.labels.tolist()) == list(range(8))


# -- the real images --------------------------------------------------------------------

@pytest.mark.realdata
def test_reads_real_pbc_splits_and_an_an2dl_file_built_from_them(pbc_path, tmp_path):
    train = load_dataset(pbc_path, "train", notify=None)
    val = load_dataset(pbc_path, "val", notify=None)
    assert train.images.shape == (3587, 96, 96, 3) and val.images.shape == (1707, 96, 96, 3)
    assert train.class_counts().tolist() == [255, 653, 326, 608, 255, 298, 699, 493]
    assert val.class_counts().tolist() == [121, 311, 155, 289, 121, 142, 333, 235]
    an2dl = tmp_path / "training_set.npz"
    np.savez_compressed(an2dl, images=val.images[:300], labels=val.labels[:300, None].astype(np.uint8))
    data = load_dataset(an2dl, notify=None)
    np.testing.assert_array_equal(data.images, val.images[:300])
    np.testing.assert_array_equal(data.labels, val.labels[:300])


def test_holdout_cli_writes_a_stratified_split_and_leaves_the_input(tmp_path, rng):
    source = write_npz(tmp_path / "all.npz", images=images(80, rng), labels=np.arange(80) % 8)
    original = source.read_bytes()
    result = run_data_cli(source, "--holdout", "0.2", "--out-train", tmp_path / "tr.npz",
                          "--out-test", tmp_path / "te.npz", "--seed", "3")
    assert result.returncode == 0, result.stderr
    train = load_dataset(tmp_path / "tr.npz", notify=None)
    test = load_dataset(tmp_path / "te.npz", notify=None)
    assert (len(train), len(test)) == (64, 16)
    assert test.class_counts().tolist() == [2] * 8
    assert not set(map(bytes, test.images)) & set(map(bytes, train.images))
    assert source.read_bytes() == original
    clash = run_data_cli(source, "--holdout", "0.25", "--out-train", source, "--out-test", tmp_path / "x.npz")
    assert clash.returncode == 2 and "would overwrite the input" in clash.stderr
    assert source.read_bytes() == original and not (tmp_path / "x.npz").exists()


# -- issue 27: bool images, outputs checked before reading, no empty side ------------------

def test_bool_images_are_refused(tmp_path, rng):
    path = write_npz(tmp_path / "bool.npz", images=images(4, rng) > 128, labels=np.arange(4))
    with pytest.raises(DataError, match=r"bool\.npz: images: bool images; expected uint8 or float pixels"):
        load_dataset(path, notify=None)
    result = run_data_cli(path, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {path}: images: bool images; expected uint8 or float pixels"]


def test_holdout_outputs_are_checked_before_the_input_is_read(tmp_path, rng):
    source = write_npz(tmp_path / "all.npz", images=images(40, rng), labels=np.arange(40) % 8)
    (tmp_path / "a_file").write_text("x")
    before = snapshot(tmp_path)
    cases = {
        "same file twice": (["--out-train", tmp_path / "X.npz", "--out-test", tmp_path / "X.npz"],
                            "--out-test: the same file as --out-train"),
        "a file for a folder": (["--out-train", tmp_path / "a_file" / "tr.npz", "--out-test", tmp_path / "te.npz"],
                                "--out-train: .*a_file is a file, not a folder"),
        "a folder for a file": (["--out-train", tmp_path, "--out-test", tmp_path / "te.npz"],
                                "--out-train: is a folder; expected a file name"),
        "no holdout": (["--out-train", tmp_path / "tr.npz"], "--out-train/--out-test: given without --holdout"),
    }
    for case, (outputs, pattern) in cases.items():
        holdout = [] if case == "no holdout" else ["--holdout", "0.15"]
        result = run_data_cli(source, *holdout, *outputs, cwd=tmp_path)
        assert result.returncode == 2, (case, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and __import__("re").search(pattern, lines[0]), (case, lines)
        assert result.stdout == "", case  # refused before the input was read
    assert snapshot(tmp_path) == before


def test_a_holdout_or_validation_split_with_an_empty_side_is_refused(tmp_path, rng):
    one = write_npz(tmp_path / "one.npz", images=images(1, rng), labels=np.array([3]))
    result = run_data_cli(one, "--holdout", "0.15", "--out-train", tmp_path / "tr.npz", "--out-test",
                          tmp_path / "te.npz")
    assert result.returncode == 2 and "0 to hold out; expected at least one on each side" in result.stderr
    assert not (tmp_path / "tr.npz").exists() and not (tmp_path / "te.npz").exists()
    from bloodcells.data import check_train_val

    for check in (lambda: train_val(one, 0.2, notify=None), lambda: check_train_val(one, 0.2)):
        with pytest.raises(DataError, match=r"one\.npz: images: 1 images split into 1 for training and 0 for "
                                            r"validation \(data\.val_fraction 0\.2\); expected at least one"):
            check()


def test_train_val_of_a_truncated_file_is_a_one_line_error(tmp_path, rng):
    path = write_npz(tmp_path / "t.npz", images=images(8, rng), labels=np.arange(8))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"t\.npz: file: unreadable or truncated"):
        train_val(path, 0.2, notify=None)
    from bloodcells.data import check_train_val

    with pytest.raises(DataError, match=r"t\.npz: file: unreadable or truncated"):
        check_train_val(path, 0.2)


def test_check_train_val_reads_headers_and_agrees_with_train_val(tmp_path, rng):
    from bloodcells.data import check_train_val

    an2dl = write_npz(tmp_path / "a.npz", images=images(40, rng), labels=np.arange(40) % 8)
    med = write_npz(tmp_path / "m.npz", train_images=images(12, rng), train_labels=np.arange(12)[:, None] % 8,
                    val_images=images(5, rng), val_labels=np.arange(5)[:, None])
    for path in (an2dl, med):
        train, val = train_val(path, 0.25, seed=2, notify=None)
        assert check_train_val(path, 0.25, seed=2) == (len(train), len(val))
    for bad, pattern in (({"images": images(4, rng)[..., :1], "labels": np.arange(4)}, "1 channels"),
                         ({"images": images(4, rng) > 1, "labels": np.arange(4)}, "bool images"),
                         ({"images": images(4, rng), "labels": np.arange(3)}, "3 labels for 4 images")):
        with pytest.raises(DataError, match=pattern):
            check_train_val(write_npz(tmp_path / "bad.npz", **bad), 0.2)


# -- issue 26: the selection split for build_submission.py --select -------------------------

def test_out_selection_writes_exactly_the_images_training_chooses_its_epoch_on(tmp_path, rng):
    source = write_npz(tmp_path / "train.npz", images=images(80, rng), labels=np.arange(80) % 8)
    original = source.read_bytes()
    result = run_data_cli(source, "--out-selection", tmp_path / "sel.npz", "--val-fraction", "0.25",
                          "--seed", "2")
    assert result.returncode == 0, result.stderr
    selection = load_dataset(tmp_path / "sel.npz", notify=None)
    _, val = train_val(source, 0.25, 2, notify=None)
    assert selection.images.tobytes() == val.images.tobytes()
    assert selection.labels.tolist() == val.labels.tolist() and 0 < len(selection) < 80
    assert source.read_bytes() == original
    other_seed = run_data_cli(source, "--out-selection", tmp_path / "sel3.npz", "--val-fraction", "0.25",
                              "--seed", "3")
    assert other_seed.returncode == 0
    assert load_dataset(tmp_path / "sel3.npz", notify=None).images.tobytes() != val.images.tobytes()
    from bloodcells.ensemble_select import load_selection_set  # --select accepts it (not a held-out test)

    assert len(load_selection_set(tmp_path / "sel.npz", None, "server", 0)[1]) == len(selection)


def test_out_selection_refuses_the_held_out_test_and_bad_arguments(tmp_path, rng):
    source = write_npz(tmp_path / "all.npz", images=images(80, rng), labels=np.arange(80) % 8)
    assert run_data_cli(source, "--holdout", "0.2", "--out-train", tmp_path / "tr.npz",
                        "--out-test", tmp_path / "te.npz").returncode == 0
    before = snapshot(tmp_path)
    cases = {
        "the held-out test": ([tmp_path / "te.npz", "--out-selection", tmp_path / "s.npz"],
                              r"te\.npz: written by .*--holdout.* as the held-out test.*expected the training file"),
        "a fraction of 1.5": ([source, "--out-selection", tmp_path / "s.npz", "--val-fraction", "1.5"],
                              r"--val-fraction: 1\.5; expected a fraction between 0 and 1"),
        "the input itself": ([source, "--out-selection", source], r"--out-selection: would overwrite the input"),
        "with --holdout": ([source, "--out-selection", tmp_path / "s.npz", "--holdout", "0.2"],
                           r"--out-selection: given with --holdout"),
    }
    for case, (arguments, pattern) in cases.items():
        result = run_data_cli(*arguments, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (case, result.stderr)
        assert __import__("re").search(pattern, lines[0]), (case, lines)
    assert snapshot(tmp_path) == before


def test_make_train_cpu_selects_on_the_fraction_both_members_train_with():
    import re
    import tomllib

    fraction = re.search(r"^CPU_VAL_FRACTION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    for config in ("cpu.toml", "cpu_scratch.toml"):
        with open(REPO / "configs" / config, "rb") as f:
            assert tomllib.load(f)["data"]["val_fraction"] == float(fraction.group(1)), config


def make_plan(target, *variables):
    """What `make -n TARGET VARIABLES...` would run in the repository (nothing is run)."""
    return subprocess.run(["make", "-n", "-C", str(REPO), target, *variables],
                          capture_output=True, text=True, timeout=60)


def test_make_train_cpu_adds_the_scratch_cnn_only_when_asked(tmp_path, rng):
    """Lite1 alone by default, zipped with the views that fit; CPU_SCRATCH_EPOCHS=N trains the CNN too and lets --select decide."""
    train = write_npz(tmp_path / "mine.npz", images=images(8, rng), labels=np.arange(8))

    def plan(*variables):
        done = make_plan("train-cpu", f"TRAIN_SET={train}", *variables)
        assert done.returncode == 0, done.stderr
        return done.stdout

    alone = plan()
    assert "configs/cpu.toml" in alone and "cpu_scratch" not in alone and "--select" not in alone
    assert "build_submission.py --weights weights/cpu --fit-budget" in alone  # Lite1's 8 views pass 600 s on 20,000 images
    both = plan("CPU_SCRATCH_EPOCHS=45")
    assert "configs/cpu_scratch.toml" in both and "--epochs 45" in both
    assert "--select weights/cpu weights/cpu_scratch --selection-data build/selection_seed0.npz --fit-budget" in both
    assert "--out-selection build/selection_seed0.npz" in both


def test_make_train_uses_an_existing_training_file_without_cleaning(tmp_path, rng):
    """A TRAIN_SET that exists is trained on as it is; only a missing one is made by `make split`."""
    train = write_npz(tmp_path / "mine.npz", images=images(8, rng), labels=np.arange(8))
    for target in ("train", "train-cpu"):
        plan = make_plan(target, f"TRAIN_SET={train}")
        assert plan.returncode == 0, plan.stderr
        assert "bloodcells.clean" not in plan.stdout and "--holdout" not in plan.stdout, target
        assert f"--data {train}" in plan.stdout, target
    missing = make_plan("train", f"TRAIN_SET={tmp_path / 'none.npz'}")
    assert "split" in missing.stdout
