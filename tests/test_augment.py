"""bloodcells.augment, the augmentation stream: every option changes images as it should,
stays in range, is reproducible per (seed, epoch), and leaves the labels alone unless it
mixes (the layers on their own: tests/test_augment_layers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcells import augment

OFF = {"flip": False, "rot90": False}
# option set -> applied with probability 1 (ramp off)
SINGLE = {
    "flip": {"flip": True},
    "rot90": {"rot90": True},
    "geometry": {"rotation": 0.3, "zoom": 0.2, "translation": 0.1, "geometry_prob": 1.0},
    "color": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "color_prob": 1.0},
    "hue": {"hue": 0.2, "color_prob": 1.0},
    "stain": {"stain": 0.3, "stain_prob": 1.0},
    "gamma": {"gamma": 0.5, "gamma_prob": 1.0},
    "grayscale": {"grayscale_prob": 1.0},
    "field": {"field_prob": 1.0, "field_amplitude": 40.0},
    "overlay": {"overlay_prob": 1.0, "overlay_opacity": 0.8},
    "channel_mix": {"channel_mix": 1.0, "channel_mix_prob": 1.0},
    "randaugment": {"randaugment_prob": 1.0, "randaugment_num_ops": 2, "randaugment_factor": 0.8},
    "augmix": {"augmix_prob": 1.0},
    "blur": {"blur_prob": 1.0, "blur_sigma": 2.0},
    "noise": {"noise_prob": 1.0, "noise_std": 20.0},
    "erasing": {"erasing_prob": 1.0, "erasing_scale": [0.1, 0.2]},
    "erasing x2": {"erasing_prob": 1.0, "erasing_scale": [0.05, 0.1], "erasing_patches": 2},
    "solarize": {"solarize_prob": 1.0, "solarize_threshold": [0.0, 0.5]},
    "jpeg": {"jpeg_prob": 1.0, "jpeg_quality": [5, 10]},
    "resolution": {"resolution_prob": 1.0, "resolution_min_scale": 0.3},
}


def _stream(images, labels, options, seed=0, epoch=0, batch_size=6):
    out_x, out_y = [], []
    for x, y in augment.augmented_dataset(images, labels, options, seed=seed, epoch=epoch, batch_size=batch_size):
        out_x.append(np.asarray(x))
        out_y.append(np.asarray(y))
    return np.concatenate(out_x), np.concatenate(out_y)


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_each_augmentation_changes_images_and_keeps_range_and_labels(batch, name):
    images, labels = batch
    order = np.arange(len(labels))
    opts = {**OFF, **SINGLE[name]}
    ds = augment.augmented_dataset(images, labels, opts, seed=3, batch_size=6, order=order)
    x, y = (np.asarray(t) for t in next(iter(ds)))
    assert x.shape == images.shape and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 255
    changed = np.abs(x - images.astype(np.float32)).reshape(len(x), -1).max(axis=1) > 1.0
    assert changed.sum() >= 2, f"{name} changed only {changed.sum()} of 6 images"
    np.testing.assert_array_equal(y, np.eye(8)[labels])


def test_a_wider_blur_kernel_spreads_a_point_further():
    """blur_kernel 5 truncates a wide Gaussian at two pixels from the centre; 13 does not."""
    images = np.zeros((8, 32, 32, 3), np.uint8)
    images[:, 16, 16] = 255
    labels = np.zeros(8, np.int64)
    reach = {}
    for kernel in (5, 13):
        x, _ = _stream(images, labels, {**OFF, "blur_prob": 1.0, "blur_sigma": 3.0, "blur_kernel": kernel},
                       batch_size=8)
        lit = np.argwhere(x[..., 0] > 0)
        reach[kernel] = int(np.abs(lit[:, 1:] - 16).max())
    assert reach[5] == 2
    assert reach[13] >= 5


def test_smooth_field_is_low_frequency_within_its_amplitude_and_coloured():
    images = np.full((16, 96, 96, 3), 128, np.uint8)
    labels = np.zeros(16, np.int64)
    x, _ = _stream(images, labels, {**OFF, "field_prob": 1.0, "field_amplitude": 30.0}, batch_size=16)
    field = x - 128.0
    std = field.reshape(16, -1).std(axis=1)
    assert (std <= 30.0 + 1e-3).all() and (std > 1.0).sum() >= 12
    # neighbouring pixels nearly agree (noise of the same std would differ by ~1.4 std)
    step = np.concatenate([np.diff(field, axis=1).ravel(), np.diff(field, axis=2).ravel()]).std()
    assert step < 0.2 * field.std()
    # the channels differ (a colour part), yet move together (a shared light part)
    r, g = field[..., 0].ravel(), field[..., 1].ravel()
    assert np.abs(r - g).max() > 1.0 and np.corrcoef(r, g)[0, 1] > 0.5


def test_overlay_blends_part_of_each_image_towards_one_flat_colour():
    images = np.full((16, 96, 96, 3), 128, np.uint8)
    labels = np.zeros(16, np.int64)
    x, _ = _stream(images, labels, {**OFF, "overlay_prob": 1.0, "overlay_opacity": 0.8}, batch_size=16)
    partial = 0
    for shift in (x - 128.0).reshape(16, -1, 3):
        norm = np.linalg.norm(shift, axis=1)
        if norm.max() < 5.0:
            continue  # opacity drawn near 0
        # one colour per image: every pixel moved along the same direction, by its own amount
        direction = shift[norm.argmax()] / norm.max()
        assert np.abs(shift - np.outer(shift @ direction, direction)).max() < 1.0
        # and the mask covers part of the image, not all of it evenly
        partial += np.percentile(norm, 10) < 0.5 * norm.max()
    assert partial >= 10


def test_disabled_and_zero_probability_are_identity(batch):
    images, labels = batch
    order = np.arange(len(labels))
    for opts in ({"enabled": False}, {**OFF, "noise_prob": 0.0, "color_prob": 0.0, "brightness": 0.5}):
        x, _ = (np.asarray(t) for t in next(iter(augment.augmented_dataset(
            images, labels, opts, batch_size=6, order=order))))
        np.testing.assert_array_equal(x, images.astype(np.float32))


def test_probability_applies_to_a_fraction_of_images():
    images = np.full((200, 96, 96, 3), 128, np.uint8)
    labels = np.zeros(200, np.int64)
    x, _ = _stream(images, labels, {**OFF, "noise_prob": 0.3, "noise_std": 30.0}, batch_size=100)
    fraction = (np.abs(x - 128).reshape(200, -1).max(axis=1) > 0).mean()
    assert 0.15 < fraction < 0.45


def test_cutmix_and_mixup_mix_labels_per_batch(batch):
    images, labels = batch
    for opts in ({**OFF, "cutmix_prob": 1.0}, {**OFF, "mixup_prob": 1.0, "mixup_alpha": 1.0}):
        x, y = _stream(images, labels, opts, seed=1)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
        assert (y.max(axis=1) < 0.999).any(), opts  # some labels are mixtures
        assert x.min() >= 0 and x.max() <= 255
    x, y = _stream(images, labels, {**OFF, "cutmix_prob": 0.0, "mixup_prob": 0.0})
    assert set(np.unique(y)) == {0.0, 1.0}


def test_stream_is_reproducible_per_seed_and_epoch(batch):
    images, labels = batch
    opts = {**OFF, **SINGLE["geometry"], **SINGLE["noise"], "flip": True, "cutmix_prob": 0.5,
            "mixup_prob": 0.5, "stain": 0.2, "stain_prob": 0.5}
    a = _stream(images, labels, opts, seed=5, epoch=2, batch_size=3)
    b = _stream(images, labels, opts, seed=5, epoch=2, batch_size=3)
    c = _stream(images, labels, opts, seed=5, epoch=3, batch_size=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_an_added_augmentation_leaves_the_other_steps_draws_unchanged(batch):
    """Every generator is seeded from (seed, epoch, its step's name), not from its place
    in the build: a stream with a step added before the others (stain, never applied at
    probability 1e-9, so only its seeds could matter) is the same stream, batch mixing
    included, and a later step alone draws the same on the same images."""
    images, labels = batch
    opts = {**SINGLE["geometry"], **SINGLE["randaugment"], "noise_prob": 0.5, "noise_std": 20.0,
            "erasing_prob": 0.5, "cutmix_prob": 0.5, "mixup_prob": 0.5}
    plain = augment.TrainingStream(images, labels, opts, seed=5, batch_size=3)
    added = augment.TrainingStream(images, labels, {**opts, "stain": 0.3, "stain_prob": 1e-9}, seed=5, batch_size=3)
    assert list(added.augmenter.steps) == ["flip", "rot90", "geometry", "stain", "randaugment", "noise", "erasing"]
    for epoch in (0, 3):
        (x, y), (x_added, y_added) = _epoch(plain, epoch), _epoch(added, epoch)
        assert not np.array_equal(x, images[plain.default_order(epoch)])  # augmented
        np.testing.assert_array_equal(x_added, x)
        np.testing.assert_array_equal(y_added, y)
    pixels = images.astype(np.float32)
    noise = []
    for stream in (plain, added):
        stream.augmenter.start_epoch(2)
        noise.append(np.asarray(stream.augmenter.steps["noise"](pixels, training=True)))
    np.testing.assert_array_equal(noise[0], noise[1])
    assert not np.array_equal(noise[0], pixels)


def test_ramp_scales_probabilities_up_to_full():
    opts = augment.resolve({"ramp_epochs": 4, "ramp_start": 0.2})
    values = [augment.ramp(opts, e) for e in range(6)]
    assert values[0] == pytest.approx(0.2)
    assert values == sorted(values) and values[4] == values[5] == 1.0
    assert augment.ramp(augment.resolve({}), 0) == 1.0


def test_unknown_option_is_rejected():
    with pytest.raises(KeyError, match="hue_jiter"):
        augment.resolve({"hue_jiter": 0.1})


def test_augmentation_grid_png(tmp_path, batch):
    images, labels = batch
    path = tmp_path / "grid.png"
    stream = augment.TrainingStream(images, labels, {"cutmix_prob": 0.5}, batch_size=4)
    augment.save_augmentation_grid(path, stream, n=6)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _epoch(stream, epoch):
    batches = [(np.asarray(x), np.asarray(y)) for x, y in stream.epoch(epoch)]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_an_epoch_does_not_depend_on_the_epochs_run_before_it(batch):
    """One stream (traced once) re-seeds per epoch: epoch 2 after epochs 0, 1 and a
    grid equals epoch 2 of a fresh stream, as a resumed run needs."""
    images, labels = batch
    opts = {**SINGLE["geometry"], **SINGLE["noise"], **SINGLE["randaugment"], "cutmix_prob": 0.5,
            "mixup_prob": 0.5}
    used = augment.TrainingStream(images, labels, opts, seed=4, batch_size=2)
    augment.sample_batch(used, epoch=0, n=3)
    first = [_epoch(used, e) for e in range(3)]
    fresh = _epoch(augment.TrainingStream(images, labels, opts, seed=4, batch_size=2), 2)
    np.testing.assert_array_equal(first[2][0], fresh[0])
    np.testing.assert_array_equal(first[2][1], fresh[1])
    assert not np.array_equal(first[1][0], first[2][0])
    # traced once for the whole run, not once per epoch
    assert used.augmenter.traced(images.shape[1:]).experimental_get_tracing_count() == 1


def test_ramp_takes_effect_in_a_traced_stream():
    images = np.full((200, 96, 96, 3), 128, np.uint8)
    labels = np.zeros(200, np.int64)
    stream = augment.TrainingStream(images, labels, {**OFF, "noise_prob": 1.0, "noise_std": 30.0,
                                                     "ramp_epochs": 4, "ramp_start": 0.25}, batch_size=50)
    fractions = []
    for epoch in (0, 4):
        x, _ = _epoch(stream, epoch)
        fractions.append((np.abs(x - 128).reshape(200, -1).max(axis=1) > 0).mean())
    assert 0.1 < fractions[0] < 0.4 and fractions[1] == 1.0


def test_rot90_gives_exact_quarter_turns_of_every_kind():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 5, 5, 3)).astype(np.uint8)
    x = np.asarray(next(iter(augment.augmented_dataset(images, np.zeros(64, np.int64), {"flip": False, "rot90": True},
                                                       batch_size=64, order=np.arange(64))))[0])
    turns = []
    for original, out in zip(images, x):
        matches = [k for k in range(4) if np.array_equal(np.rot90(original, k, axes=(0, 1)), out)]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}


def test_one_pipeline_over_many_epochs_equals_the_epochs_one_by_one(batch):
    """A run feeds all its epochs through one pipeline (the epoch's ramp and seeds are
    set in-graph at its first batch, whatever was prefetched before); each epoch must be
    what a fresh stream gives for it alone, sample weights included."""
    images, labels = batch
    opts = {**SINGLE["geometry"], **SINGLE["noise"], **SINGLE["randaugment"], "cutmix_prob": 0.5,
            "mixup_prob": 0.5, "ramp_epochs": 3, "ramp_start": 0.2}
    weights = np.linspace(0.5, 2.0, len(labels)).astype(np.float32)
    orders = {e: np.random.default_rng(e).permutation(len(labels))[: 5 - e % 2] for e in range(1, 5)}

    def stream():
        return augment.TrainingStream(images, labels, opts, seed=6, batch_size=2, weights=weights)

    together = [tuple(np.asarray(t) for t in b) for b in stream().epochs([(e, orders[e]) for e in range(1, 5)])]
    alone = []
    for e in range(1, 5):
        alone += [tuple(np.asarray(t) for t in b) for b in stream().epoch(e, order=orders[e])]
    assert len(together) == len(alone) == sum(-(-len(o) // 2) for o in orders.values())
    for got, expected in zip(together, alone):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in together]),
                                  np.concatenate([weights[orders[e]] for e in range(1, 5)]))


# -- AugMix views for the Jensen-Shannon consistency loss -----------------------------------


def test_augmix_views_follow_each_image_and_leave_its_own_row_unchanged(batch):
    """With augmix_views k every image's row is followed by k AugMix views of it with
    its label (and weight); the images' own rows equal the stream without views; the
    views are re-seeded per epoch like the rest (epoch 1 again, after epoch 0, is the same)."""
    images, labels = batch
    weights = np.arange(1, 7, dtype=np.float32)
    opts = {**SINGLE["geometry"], **SINGLE["noise"], "cutmix_prob": 0.5, "mixup_prob": 0.5}
    plain = augment.TrainingStream(images, labels, opts, seed=2, batch_size=3, weights=weights)
    viewed = augment.TrainingStream(images, labels, {**opts, "augmix_views": 2}, seed=2, batch_size=3,
                                    weights=weights)
    # epochs 1, 0 and 1 again through one pipeline (a pipeline per epoch costs seconds each)
    batches = [tuple(np.asarray(t) for t in b) for b in viewed.epochs([1, 0, 1])]
    per_epoch = len(batches) // 3
    changes = []
    for (x, y, w), (xv, yv, wv) in zip(plain.epoch(1), batches[:per_epoch], strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert xv.shape == (3 * len(x), *x.shape[1:])
        np.testing.assert_array_equal(xv[0::3], x)
        np.testing.assert_array_equal(yv, np.repeat(y, 3, axis=0))
        np.testing.assert_array_equal(wv, np.repeat(np.asarray(w), 3))
        assert xv.min() >= 0 and xv.max() <= 255
        for k in (1, 2):
            changes.extend(np.abs(xv[k::3] - x).reshape(len(x), -1).max(axis=1))
        assert not np.array_equal(xv[1::3], xv[2::3])
    # a view is the image blended with its mix by a Beta(1, 1) weight: a few land near it
    assert np.mean(np.array(changes) > 1.0) > 0.6, np.round(changes, 2)
    for first, again in zip(batches[:per_epoch], batches[2 * per_epoch:], strict=True):
        np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(batches[0][0], batches[per_epoch][0])
