"""The augmentation layers Keras does not have, and the wrappers the training stream needs.

Each random layer owns one `keras.random.SeedGenerator` (`SeededLayer`): the Augmenter
(bloodcells.augment) finds every generator's state (`generator_states`) and re-seeds it
at each epoch, so an epoch's draws depend only on (run seed, epoch, the step's name).
Images are float32 in 0-255, batched.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


class SeededLayer(keras.layers.Layer):
    """A layer with its own random generator, and per-image draws from it."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.generator = keras.random.SeedGenerator(seed)

    def per_image(self, images, low, high, channels: int = 1):
        """One uniform draw in [low, high) per image (per channel when `channels` > 1),
        shaped to broadcast over the batch (N, 1, 1, channels)."""
        return keras.random.uniform((ops.shape(images)[0], 1, 1, channels), low, high, seed=self.generator)


class RandomRot90(SeededLayer):
    """Rotate each image by a random multiple of 90 degrees (square images)."""

    def call(self, images):
        k = keras.random.randint((ops.shape(images)[0],), 0, 4, seed=self.generator)
        k = ops.reshape(k, (-1, 1, 1, 1))
        # k x 90 degrees as transpose (k odd), then flips of rows (k = 2, 3) and of
        # columns (k = 1, 2): three passes over the batch instead of three rotated copies
        x = ops.where(k % 2 == 1, ops.transpose(images, (0, 2, 1, 3)), images)
        x = ops.where(k >= 2, ops.flip(x, axis=1), x)
        return ops.where((k == 1) | (k == 2), ops.flip(x, axis=2), x)


class RandomGaussianNoise(SeededLayer):
    """Additive Gaussian noise, std drawn per image in [0, max_std] (0-255 scale)."""

    def __init__(self, max_std=12.0, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.max_std = float(max_std)

    def call(self, images):
        std = self.per_image(images, 0.0, self.max_std)
        noise = keras.random.normal(ops.shape(images), seed=self.generator)
        return images + noise * std


class RandomStain(SeededLayer):
    """Stain jitter: scale and shift each channel's optical density
    OD = -log((I+1)/256), the way stain concentration varies between slides."""

    def __init__(self, strength=0.1, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.strength = float(strength)

    def call(self, images):
        s = self.strength
        scale = self.per_image(images, 1.0 - s, 1.0 + s, channels=3)
        shift = self.per_image(images, -s / 2, s / 2, channels=3)
        od = -ops.log((ops.clip(images, 0.0, 255.0) + 1.0) / 256.0)
        od = ops.maximum(od * scale + shift, 0.0)
        return ops.exp(-od) * 256.0 - 1.0


class RandomGamma(SeededLayer):
    """Gamma jitter: I' = 255 (I/255)^g with log g uniform in [-r, r]."""

    def __init__(self, log_range=0.3, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.log_range = float(log_range)

    def call(self, images):
        g = ops.exp(self.per_image(images, -self.log_range, self.log_range))
        return 255.0 * ops.power(ops.clip(images, 0.0, 255.0) / 255.0, g)


class RandomSolarize(SeededLayer):
    """Invert the pixels at or above a threshold drawn per image in
    [low, high] x 255. keras.layers.Solarization draws its threshold from
    [threshold_factor[0], threshold_factor[1] x 255] (the lower end unscaled, Keras 3.15),
    so a range of (0.55, 1.0) inverted a mid-grey pixel 4 times in 10 instead of never."""

    def __init__(self, threshold=(0.5, 1.0), seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.low, self.high = (float(v) for v in threshold)

    def call(self, images):
        threshold = self.per_image(images, 255.0 * self.low, 255.0 * self.high)
        return ops.where(images < threshold, images, 255.0 - images)


class RandomAffine(SeededLayer):
    """Rotation, zoom and translation as one affine warp (one resampling instead of
    three; RandomRotation/RandomZoom/RandomTranslation each resample the image).
    Factors as in those layers: rotation as a fraction of a full turn, zoom as a
    relative scale change, translation as a fraction of the side."""

    def __init__(self, rotation=0.0, zoom=0.0, translation=0.0, fill_mode="reflect", seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.rotation, self.zoom, self.translation = float(rotation), float(zoom), float(translation)
        self.fill_mode = fill_mode

    def call(self, images):
        shape = ops.shape(images)
        n, h, w = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
        angle = keras.random.uniform((n,), -self.rotation, self.rotation, seed=self.generator) * 2 * np.pi
        scale = keras.random.uniform((n,), 1.0 - self.zoom, 1.0 + self.zoom, seed=self.generator)
        tx = keras.random.uniform((n,), -self.translation, self.translation, seed=self.generator) * w
        ty = keras.random.uniform((n,), -self.translation, self.translation, seed=self.generator) * h
        cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
        cx, cy = (w - 1) / 2, (h - 1) / 2
        # output (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
        a2 = cx - cos * cx + sin * cy - tx
        b2 = cy - sin * cx - cos * cy - ty
        zeros = ops.zeros_like(cos)
        transform = ops.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
        return ops.image.affine_transform(images, transform, interpolation="bilinear",
                                          fill_mode=self.fill_mode)


class RandomChannelMix(SeededLayer):
    """Blend each image towards a random permutation of its channels, by a weight
    drawn in [0, max_blend] (scanner/camera channel differences)."""

    PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(self, max_blend=1.0, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.max_blend = float(max_blend)

    def call(self, images):
        n = ops.shape(images)[0]
        which = keras.random.randint((n, 1, 1, 1), 0, len(self.PERMUTATIONS), seed=self.generator)
        blend = self.per_image(images, 0.0, self.max_blend)
        permuted = images
        for k, perm in enumerate(self.PERMUTATIONS):
            permuted = ops.where(which == k, ops.take(images, list(perm), axis=-1), permuted)
        return (1.0 - blend) * images + blend * permuted


class RandomJpeg(SeededLayer):
    """Re-encode each image as JPEG at a quality drawn in [low, high] (compression
    blocks and ringing, as in images passed through web uploads and viewers)."""

    def __init__(self, quality=(10, 70), seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.low, self.high = int(quality[0]), int(quality[1])

    def call(self, images):
        quality = keras.random.randint((ops.shape(images)[0],), self.low, self.high + 1, seed=self.generator)
        pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)

        def encode(args):
            image, q = args
            return tf.image.adjust_jpeg_quality(image, tf.cast(q, tf.int32))

        out = tf.map_fn(encode, (pixels, quality), fn_output_signature=tf.uint8)
        return tf.cast(tf.reshape(out, tf.shape(images)), tf.float32)


class RandomResolution(SeededLayer):
    """Lose resolution and get it back: downsample to a side drawn in [min_scale, 1) of
    the input's, then upsample to the input size, smoothly (bilinear) or blockily
    (nearest), as images from a lower-magnification objective, a cheaper camera or a
    resized upload look. One draw per call (a batch's chosen images share it): the
    resize needs one target size for the whole tensor."""

    def __init__(self, min_scale=0.35, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.min_scale = float(min_scale)

    def call(self, images):
        size = tf.shape(images)[1:3]
        scale = keras.random.uniform((), self.min_scale, 1.0, seed=self.generator)
        small = tf.cast(tf.maximum(tf.round(tf.cast(size, tf.float32) * scale), 4.0), tf.int32)
        blocky = keras.random.uniform((), seed=self.generator) < 0.3
        down = tf.image.resize(images, small, method="area")
        return tf.cond(blocky, lambda: tf.image.resize(down, size, method="nearest"),
                       lambda: tf.image.resize(down, size, method="bilinear"))


def smooth_noise(generator, n, size, grids, channels, weights):
    """Gaussian noise drawn on each coarse grid (cells a side), resized bilinearly to `size`
    and summed with per-image `weights` (n, len(grids)): a random low-frequency pattern."""
    total = 0.0
    for k, grid in enumerate(grids):
        coarse = keras.random.normal((n, grid, grid, channels), seed=generator)
        total += tf.image.resize(coarse, size, method="bilinear") * ops.reshape(weights[:, k], (-1, 1, 1, 1))
    return total


def standardised(x):
    """Each image's values shifted and scaled to mean 0 and standard deviation 1."""
    x = x - ops.mean(x, axis=(1, 2, 3), keepdims=True)
    return x / ops.sqrt(ops.mean(ops.square(x), axis=(1, 2, 3), keepdims=True) + 1e-6)


class RandomSmoothField(SeededLayer):
    """Add a random smooth field: Gaussian noise drawn on coarse grids (2, 4 and 8 cells a
    side), resized bilinearly to the image and summed with random weights per image, part
    shared by the channels (light) and part per channel (colour, `colour` of the light
    part's weight). The field is scaled to a standard deviation drawn per image in
    [0, amplitude] (0-255 scale): uneven illumination, haze, glare and uneven staining
    are changes of this kind, and training on noise, blur and compression alone leaves a
    model fragile to low-frequency changes (Yin et al., NeurIPS 2019, "A Fourier
    perspective on model robustness")."""

    GRIDS = (2, 4, 8)

    def __init__(self, amplitude=40.0, colour=0.5, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.amplitude, self.colour = float(amplitude), float(colour)

    def call(self, images):
        shape = tf.shape(images)
        n, size = shape[0], shape[1:3]
        weights = keras.random.uniform((n, len(self.GRIDS)), seed=self.generator)
        field = smooth_noise(self.generator, n, size, self.GRIDS, 4, weights)
        field = standardised(field[..., :1] + self.colour * field[..., 1:])
        return images + field * self.per_image(images, 0.0, self.amplitude)


class RandomOverlay(SeededLayer):
    """Blend part of each image towards a flat colour through a random smooth mask: haze,
    glare, bubbles, stain deposits, drops and dropout patches all hide part of the cell behind
    something of one colour. The mask is Gaussian noise on coarse grids (3 to 24 cells a side,
    random weights per image, so blobs from a quarter of the image down to a few pixels),
    resized bilinearly, standardised and passed through a sigmoid with a random threshold
    (coverage) and sharpness (soft haze to hard-edged patches). The colour is one per image,
    mostly light (fog, glare) and sometimes dark, with a small tint; the opacity is drawn per
    image up to `opacity`."""

    GRIDS = (3, 6, 12, 24)

    def __init__(self, opacity=0.8, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.opacity = float(opacity)

    def call(self, images):
        shape = tf.shape(images)
        n, size = shape[0], shape[1:3]
        # squared weights: usually one scale dominates, so the blobs have a size
        weights = ops.square(keras.random.uniform((n, len(self.GRIDS)), seed=self.generator))
        mask = standardised(smooth_noise(self.generator, n, size, self.GRIDS, 1, weights))
        threshold = self.per_image(images, -0.5, 1.5)          # ~70 % down to ~7 % covered
        sharpness = self.per_image(images, 1.0, 10.0)
        alpha = ops.sigmoid((mask - threshold) * sharpness) * self.per_image(images, 0.0, self.opacity)
        level = 255.0 * ops.sqrt(self.per_image(images, 0.0, 1.0))  # leans light
        colour = level + self.per_image(images, -30.0, 30.0, channels=3)
        return images * (1.0 - alpha) + colour * alpha


class RandomAugMix(SeededLayer):
    """AugMix (Hendrycks et al., ICLR 2020) with every choice drawn per image, in-graph:
    `chains` chains of 1 to `depth` operations, each picked uniformly from auto-contrast,
    equalise, posterise, solarise, rotate, shear and translate (the paper's list: it
    leaves out contrast, colour, brightness and sharpness, which overlap common test
    corruptions), mixed with Dirichlet(1) weights, the mix blended with the input by a
    Beta(1, 1) weight. `severity` 0.3 is the paper's level 3 (rotation up to 9 degrees,
    shear 0.09, translation a tenth of the side, 3-4 bits, solarise above 179).

    keras.layers.AugMix picks its chain's operations with Python's `random` once per
    trace, so in a tf.data pipeline every image of every batch gets the same chain."""

    OPS = ("auto_contrast", "equalize", "posterize", "solarize", "rotate", "shear", "translate")

    def __init__(self, severity=0.3, chains=3, depth=3, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.severity, self.chains, self.depth = float(severity), int(chains), int(depth)
        s = self.severity
        sub = (lambda k: None) if seed is None else (lambda k: (int(seed) * 7919 + k) % (2 ** 31 - 1))
        L = keras.layers
        self.equalization = L.Equalization(value_range=(0, 255))
        self.rotation = L.RandomRotation(30.0 * s / 360.0, fill_mode="reflect", seed=sub(1))
        self.shear = L.RandomShear(x_factor=0.3 * s, y_factor=0.3 * s, fill_mode="reflect", seed=sub(2))
        self.translation = L.RandomTranslation(s / 3.0, s / 3.0, fill_mode="reflect", seed=sub(3))
        # the paper's threshold 256 - 256 u, u uniform in [0.01, severity]
        self.solarization = RandomSolarize(((256.0 - 256.0 * s) / 255.0, (256.0 - 2.56) / 255.0), seed=sub(4))

    def _auto_contrast(self, x):
        low = ops.min(x, axis=(1, 2), keepdims=True)
        high = ops.max(x, axis=(1, 2), keepdims=True)
        stretched = (x - low) * 255.0 / ops.maximum(high - low, 1.0)
        return ops.where(high > low, stretched, x)

    def _posterize(self, x):
        # bits = 4 - int(4 u), u uniform in [0.1, 10 severity] (the paper's sample_level)
        u = self.per_image(x, 0.1, max(10.0 * self.severity, 0.1 + 1e-6))
        bits = 4.0 - ops.floor(4.0 * u / 10.0)
        step = ops.power(2.0, 8.0 - ops.clip(bits, 1.0, 8.0))
        return ops.floor(ops.clip(x, 0.0, 255.0) / step) * step

    def _op(self, k, x):
        name = self.OPS[k]
        if name == "auto_contrast":
            return self._auto_contrast(x)
        if name == "equalize":
            return self.equalization(x)
        if name == "posterize":
            return self._posterize(x)
        layer = {"solarize": self.solarization, "rotate": self.rotation, "shear": self.shear,
                 "translate": self.translation}[name]
        return layer(x, training=True)

    def _apply_chosen(self, images, choice):
        """Operation choice[i] on image i (-1: unchanged); each operation runs on the
        images that chose it only."""
        for k in range(len(self.OPS)):
            chosen = tf.where(choice == k)[:, 0]

            def apply(k=k, chosen=chosen, images=images):
                changed = tf.cast(self._op(k, tf.gather(images, chosen)), images.dtype)
                return tf.tensor_scatter_nd_update(images, chosen[:, None], changed)

            images = tf.cond(tf.size(chosen) > 0, apply, lambda images=images: images)
        return images

    def call(self, images):
        images = tf.cast(images, tf.float32)
        n = tf.shape(images)[0]
        weights = keras.random.gamma((n, self.chains), alpha=1.0, seed=self.generator)
        weights = weights / ops.sum(weights, axis=1, keepdims=True)
        mix = tf.zeros_like(images)
        for c in range(self.chains):
            depth = keras.random.randint((n,), 1, self.depth + 1, seed=self.generator)
            x = images
            for step in range(self.depth):
                op = keras.random.randint((n,), 0, len(self.OPS), seed=self.generator)
                x = ops.clip(self._apply_chosen(x, tf.where(step < depth, op, -1)), 0.0, 255.0)
            mix = mix + weights[:, c, None, None, None] * x
        blend = keras.random.uniform((n, 1, 1, 1), seed=self.generator)  # Beta(1, 1)
        return blend * images + (1.0 - blend) * mix


class WithProbability(SeededLayer):
    """Apply `layer` to each image independently with probability `probability()`
    (a callable, read at every call: the Augmenter's ramped probability)."""

    def __init__(self, layer, probability, seed=None, **kwargs):
        super().__init__(seed, **kwargs)
        self.layer = layer
        self.probability = probability

    def call(self, images):
        pick = keras.random.uniform((ops.shape(images)[0],), seed=self.generator) < self.probability()
        chosen = tf.where(pick)[:, 0]

        # Only the chosen images go through the layer: at probability 0.1 that is a
        # tenth of the work of transforming the batch and keeping a tenth.
        def apply():
            changed = tf.cast(self.layer(tf.gather(images, chosen), training=True), images.dtype)
            return tf.tensor_scatter_nd_update(images, chosen[:, None], changed)

        return tf.cond(tf.size(chosen) > 0, apply, lambda: images)


class LazyRandAugment(keras.layers.Layer):
    """keras.layers.RandAugment, computing only the chosen operations: Keras' layer
    draws every operation's parameters and the `num_ops` choices, then computes every
    operation at every step and keeps one, which starves a CPU training loop.
    This draws the same (with Keras' own `get_random_transformation`) and computes
    only the chosen operation per step: the output equals Keras' for the same seed."""

    def __init__(self, num_ops=2, factor=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.reference = keras.layers.RandAugment(value_range=(0, 255), num_ops=num_ops,
                                                  factor=factor, seed=seed)

    def build(self, input_shape):
        self.reference.build(input_shape)

    def call(self, images):
        reference = self.reference
        transformation = reference.get_random_transformation(images, training=True)
        chosen = tf.cast(transformation["layer_idxes"], tf.int32)
        transforms = transformation["transforms"]  # ordered as reference._AUGMENT_LAYERS
        for step in range(reference.num_ops):
            # branches hold no random draws (those are above): a switch over branches
            # with generator variables costs time even for untaken branches
            branches = [(lambda name=name, x=images: tf.cast(getattr(reference, name).transform_images(
                x, transforms[name], training=True), tf.float32)) for name in transforms]
            images = tf.switch_case(chosen[step], branches)
        return images
