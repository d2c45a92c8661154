"""bloodcells.augment_layers: the seeded layers on their own (resolution loss, the lazy
RandAugment equal to Keras's, AugMix drawn per image, the solarize threshold); the stream
that chains them is tests/test_augment.py's."""

from __future__ import annotations

import numpy as np


def test_resolution_loss_removes_detail_finer_than_the_drawn_scale():
    from bloodcells.augment_layers import RandomResolution

    checkerboard = (np.indices((32, 32)).sum(axis=0) % 2 * 255.0).astype(np.float32)
    images = np.repeat(checkerboard[None, :, :, None], 3, axis=3).repeat(4, axis=0)
    layer = RandomResolution(min_scale=0.3, seed=0)
    kinds = set()
    for _ in range(20):  # several sizes, both upsampling kinds
        out = np.asarray(layer(images))
        assert out.shape == images.shape
        # one-pixel detail does not survive the drawn sides: the pattern averages out
        assert out.std() < 0.5 * images.std()
        assert 0 <= out.min() and out.max() <= 255
        # nearest upsampling repeats pixels: most horizontal neighbours are equal
        kinds.add("blocky" if np.mean(out[:, :, 1:] == out[:, :, :-1]) > 0.5 else "smooth")
    assert kinds == {"blocky", "smooth"}


def test_randaugment_computes_only_the_chosen_operations_yet_equals_keras_randaugment(batch):
    import keras
    images = batch[0].astype(np.float32)
    from bloodcells.augment_layers import LazyRandAugment

    lazy = LazyRandAugment(num_ops=2, factor=0.8, seed=11)
    reference = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.8, seed=11)
    outputs = []
    for _ in range(4):  # successive draws keep matching
        ours = np.asarray(lazy(images, training=True))
        np.testing.assert_array_equal(ours, np.asarray(reference(images, training=True)))
        outputs.append(ours)
    assert not np.array_equal(outputs[0], outputs[1])


def test_augmix_draws_its_operations_per_image_in_a_traced_graph():
    """keras.layers.AugMix picks its chains with Python's random while tracing: every
    image of every batch then gets the same operations. RandomAugMix draws per image:
    on 64 copies of one image (traced once, called twice) it gives 64 different images
    per call and different images on the second call, all in range."""
    import tensorflow as tf

    from bloodcells.augment_layers import RandomAugMix

    rng = np.random.default_rng(1)
    one = np.repeat(np.repeat(rng.integers(30, 230, (1, 12, 12, 3)), 8, axis=1), 8, axis=2)
    copies = np.repeat(one, 64, axis=0).astype(np.float32)
    layer = RandomAugMix(0.3, seed=7)
    apply = tf.function(lambda x: layer(x, training=True))
    first, second = apply(copies).numpy(), apply(copies).numpy()
    assert apply.experimental_get_tracing_count() == 1
    for out in (first, second):
        assert out.min() >= 0 and out.max() <= 255
        assert len({row.tobytes() for row in np.round(out, 3)}) == 64
    assert not np.allclose(first, second)
    # each image is the input blended with its chains' mix: some near it, some far
    change = np.abs(first - copies).mean(axis=(1, 2, 3))
    assert change.min() < 3.0 < change.max()


def test_augmix_solarises_above_the_papers_threshold_at_its_severity():
    """Severity 0.3 is the paper's level 3: thresholds 256 - 256 u, u in [0.01, 0.3],
    i.e. in [179.2, 253.44]: a pixel of 178 is never inverted, one of 254 always."""
    from bloodcells.augment_layers import RandomAugMix

    layer = RandomAugMix(0.3, seed=7)
    solarize = layer.OPS.index("solarize")
    for value, expected in ((178.0, 178.0), (254.0, 1.0)):
        out = np.asarray(layer._op(solarize, np.full((256, 4, 4, 3), value, np.float32)))
        np.testing.assert_array_equal(out, expected)
    between = np.asarray(layer._op(solarize, np.full((256, 4, 4, 3), 216.0, np.float32)))[:, 0, 0, 0]
    assert 0.2 < np.mean(between == 39.0) < 0.8 and set(np.unique(between)) == {39.0, 216.0}


def test_solarize_threshold_range_is_a_fraction_of_255():
    """keras.layers.Solarization leaves the range's lower end unscaled: (0.55, 1.0)
    inverted a grey-100 pixel 4 times in 10. A threshold in [140, 255] never does; one
    in [0, 77] always does."""
    from bloodcells.augment_layers import RandomSolarize

    grey = np.full((400, 2, 2, 3), 100.0, np.float32)
    never = np.asarray(RandomSolarize((0.55, 1.0), seed=1)(grey))
    always = np.asarray(RandomSolarize((0.0, 0.3), seed=1)(grey))
    np.testing.assert_array_equal(never, grey)
    np.testing.assert_array_equal(always, 255.0 - grey)
    spread = np.asarray(RandomSolarize((0.0, 1.0), seed=1)(grey))[:, 0, 0, 0]
    assert 0.3 < (spread == 155.0).mean() < 0.5  # thresholds at most 100: 100/255 of them
