"""Training-time augmentation: Keras core preprocessing layers run inside `tf.data`.

Only the training stream is augmented. Every per-image augmentation is applied with
its own probability (strong augmentation on every image underfits a small set), and
the probabilities can ramp up over the first epochs. CutMix and MixUp act on whole
batches, each with its own probability. The layers are built and traced once per run,
and one tf.data pipeline carries all the epochs of a training phase; each epoch's first
batch re-seeds every generator from (run seed, epoch, its step's name), in-graph, so an
epoch's augmented stream is the same whether the run was interrupted or not, and adding
an augmentation leaves the other steps' draws as they were.

Independent of bloodcells.shift and bloodcells.corruptions on purpose: training on the
exact corruptions the shifted validation uses would make that validation meaningless.
The layers Keras lacks are in bloodcells.augment_layers.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os

import numpy as np

from . import NUM_CLASSES

# Every key the [augment] table accepts, with its default. Probabilities are per image
# unless the name says batch.
DEFAULTS = {
    "enabled": True,
    "flip": True,                 # horizontal and vertical flips
    "rot90": True,                # random multiple of 90 degrees
    "rotation": 0.0,              # RandomRotation factor (fraction of a full turn)
    "translation": 0.0,           # RandomTranslation factor (fraction of the side)
    "zoom": 0.0,                  # RandomZoom factor
    "geometry_prob": 1.0,         # probability of the rotation/translation/zoom step
    "fill_mode": "reflect",
    "brightness": 0.0,            # RandomColorJitter factors (0 = off)
    "contrast": 0.0,
    "saturation": 0.0,            # saturation range around 1, e.g. 0.2 -> [0.8, 1.2]
    "hue": 0.0,                   # off by default: hue blurs the eosinophil/neutrophil cue
    "color_prob": 0.0,
    "stain": 0.0,                 # stain jitter strength in optical-density space
    "stain_prob": 0.0,
    "gamma": 0.0,                 # log-gamma jitter range, e.g. 0.3 -> gamma in [0.74, 1.35]
    "gamma_prob": 0.0,
    "field_prob": 0.0,            # a random smooth (low-frequency) field added: light and colour
    "field_amplitude": 40.0,      # its standard deviation, drawn per image up to this (0-255 scale)
    "overlay_prob": 0.0,          # part of the image blended towards a flat colour (smooth mask)
    "overlay_opacity": 0.8,       # the blend's largest weight, drawn per image up to this
    "grayscale_prob": 0.0,
    "channel_mix": 1.0,           # max blend towards a channel permutation
    "channel_mix_prob": 0.0,
    "randaugment_prob": 0.0,      # RandAugment (num_ops, factor)
    "randaugment_num_ops": 2,
    "randaugment_factor": 0.5,
    "augmix_prob": 0.0,           # AugMix applied in place (augment_layers.RandomAugMix)
    "augmix_severity": 0.3,       # 0.3 = the AugMix paper's level 3
    "augmix_views": 0,            # k > 0: each image is followed by k AugMix views of it, for
                                  # train.consistency_weight's Jensen-Shannon loss (k + 1 rows each)
    "blur_prob": 0.0,             # RandomGaussianBlur
    "blur_sigma": 1.5,
    "blur_kernel": 5,             # kernel side in px (odd); 5 truncates a sigma above ~1.2
    "noise_prob": 0.0,            # additive Gaussian noise, std up to noise_std (0-255 scale)
    "noise_std": 12.0,
    "erasing_prob": 0.0,          # RandomErasing (cutout-style patches)
    "erasing_scale": [0.02, 0.15],
    "erasing_patches": 1,         # independent erasing steps, each with erasing_prob
    "solarize_prob": 0.0,         # Solarization: invert pixels above a random threshold
    "solarize_threshold": [0.5, 1.0],  # threshold range as a fraction of 255
    "jpeg_prob": 0.0,             # JPEG re-encoding at a random quality
    "jpeg_quality": [10, 70],
    "resolution_prob": 0.0,       # downsample and upsample back (resolution loss)
    "resolution_min_scale": 0.35,  # smallest side as a fraction of the input's
    "cutmix_prob": 0.0,           # batch level
    "cutmix_alpha": 1.0,
    "mixup_prob": 0.0,            # batch level
    "mixup_alpha": 0.2,
    "ramp_epochs": 0,             # probabilities grow linearly from ramp_start to 1x
    "ramp_start": 0.3,
}

PROBABILITY = "[0, 1]"
# The range each option accepts (bloodcells.config checks them, typed like the default;
# the on/off switches need none). Intervals as in mathematics; a pair [low, high] has
# both ends in the range.
LIMITS = {
    "rotation": "[0, 1]",
    "translation": "[0, 1]",
    "zoom": "[0, 1)",             # a scale of 1 - zoom must stay positive
    "geometry_prob": PROBABILITY,
    "fill_mode": ("reflect", "wrap", "constant", "nearest", "mirror"),  # keras.ops.image.affine_transform's
    "brightness": "[0, 1]",       # Keras's colour-jitter factors
    "contrast": "[0, 1]",
    "saturation": "[0, 1]",
    "hue": "[0, 1]",
    "color_prob": PROBABILITY,
    "stain": "[0, inf)",
    "stain_prob": PROBABILITY,
    "gamma": "[0, inf)",
    "gamma_prob": PROBABILITY,
    "field_prob": PROBABILITY,
    "field_amplitude": "[0, inf)",
    "overlay_prob": PROBABILITY,
    "overlay_opacity": "[0, 1]",
    "grayscale_prob": PROBABILITY,
    "channel_mix": "[0, 1]",
    "channel_mix_prob": PROBABILITY,
    "randaugment_prob": PROBABILITY,
    "randaugment_num_ops": "[1, inf)",
    "randaugment_factor": "[0, 1]",
    "augmix_prob": PROBABILITY,
    "augmix_severity": "[0, 1]",
    "augmix_views": "[0, inf)",
    "blur_prob": PROBABILITY,
    "blur_sigma": "[0.3, inf)",   # sigma is drawn in [0.3, blur_sigma]
    "blur_kernel": "odd [3, inf)",
    "noise_prob": PROBABILITY,
    "noise_std": "[0, inf)",
    "erasing_prob": PROBABILITY,
    "erasing_scale": "(0, 1]",    # of the image's area
    "erasing_patches": "[0, inf)",
    "solarize_prob": PROBABILITY,
    "solarize_threshold": "[0, 1]",
    "jpeg_prob": PROBABILITY,
    "jpeg_quality": "[0, 100]",
    "resolution_prob": PROBABILITY,
    "resolution_min_scale": "(0, 1]",
    "cutmix_prob": PROBABILITY,
    "cutmix_alpha": "(0, inf)",
    "mixup_prob": PROBABILITY,
    "mixup_alpha": "(0, inf)",
    "ramp_epochs": "[0, inf)",
    "ramp_start": "[0, 1]",
}


def resolve(options: dict | None) -> dict:
    """Defaults overlaid with `options`; unknown keys raise KeyError naming them."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise KeyError(", ".join(unknown))
    resolved = copy.deepcopy(DEFAULTS)
    resolved.update(options)
    return resolved


def ramp(options: dict, epoch: int) -> float:
    """Multiplier on every augmentation probability at `epoch` (0-based)."""
    epochs = int(options.get("ramp_epochs", 0))
    if epochs <= 0 or epoch >= epochs:
        return 1.0
    start = float(options.get("ramp_start", 0.3))
    return start + (1.0 - start) * epoch / epochs


def stable_seed(*parts) -> int:
    """A 31-bit seed from integers and strings, stable across processes (a string
    enters by its SHA-256: Python's hash() of a str is salted per process)."""
    words = [int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little") if isinstance(p, str)
             else int(p) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)


def generator_states(layer) -> list:
    """The state variables of a layer's random generators, sublayers' included, in the
    layer's own order: Keras's Layer.variables holds them and Layer.weights does not."""
    weights = {id(w) for w in layer.weights}
    return [v for v in layer.variables if id(v) not in weights]


class Augmenter:
    """The training augmentation, built (and traced) once: `augmenter(images,
    onehot_labels)` on a float32 batch in 0-255 returns the augmented (images, labels).
    Every random layer is a named step (`steps`, then "cutmix", "mixup", "batch_mixing"
    and "augmix_views"). `start_epoch(epoch)` sets the epoch's ramp and re-seeds each
    generator from (seed, epoch, its step's name, its place in the step), so an epoch's
    draws do not depend on what ran before it nor on which other steps exist."""

    def __init__(self, options: dict, seed: int = 0, num_classes: int = NUM_CLASSES):
        import tensorflow as tf

        self.options = resolve(options)
        self.seed, self.num_classes = int(seed), num_classes
        self.scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="augment_ramp")
        enabled = self.options["enabled"]
        self._batch_generator = None  # draws which of CutMix and MixUp a batch gets
        self.steps = self._build() if enabled else {}
        self.cutmix, self.mixup = self._build_mixing() if enabled else (None, None)
        self.views = int(self.options["augmix_views"]) if enabled else 0
        self.view_layer = None
        if self.views:
            from .augment_layers import RandomAugMix
            self.view_layer = RandomAugMix(self.options["augmix_severity"], seed=self._initial_seed("augmix_views"),
                                           name="augmix_views")
        named = {**self.steps, "cutmix": self.cutmix, "mixup": self.mixup, "augmix_views": self.view_layer}
        self._seed_states = {f"{name}/{k}": state for name, layer in named.items() if layer is not None
                             for k, state in enumerate(generator_states(layer))}
        if enabled:
            self._seed_states["batch_mixing"] = self._batch_generator.state
        self._traced = None
        self.start_epoch(0)

    def _initial_seed(self, name: str) -> int:
        """A step's seed at construction (start_epoch replaces it before any draw)."""
        return stable_seed(self.seed, name)

    def epoch_state(self, epoch: int):
        """The epoch's (ramp multiplier, one seed per random generator): everything the
        stream's randomness depends on besides the data order."""
        seeds = np.array([stable_seed(self.seed, epoch, key) for key in self._seed_states], np.int64)
        return np.float32(ramp(self.options, epoch)), seeds

    def start_epoch(self, epoch: int) -> None:
        """Set the epoch's state from Python (the traced stream sets it in-graph)."""
        scale, seeds = self.epoch_state(epoch)
        self._assign_epoch_state(scale, seeds)

    def _assign_epoch_state(self, scale, seeds):
        import tensorflow as tf
        self.scale.assign(scale)
        for k, state in enumerate(self._seed_states.values()):
            state.assign(tf.stack([tf.cast(seeds[k], state.dtype), tf.constant(0, state.dtype)]))

    def _p(self, name):
        """The epoch's probability for option `name` (a tensor: base x ramp, at most 1)."""
        import tensorflow as tf
        return tf.minimum(1.0, float(self.options[name]) * self.scale)

    def _build(self) -> dict:
        """The per-image steps in order, by name: {name: layer named so}."""
        import keras

        from .augment_layers import (LazyRandAugment, RandomAffine, RandomAugMix, RandomChannelMix, RandomGamma,
                                     RandomGaussianNoise, RandomJpeg, RandomOverlay, RandomResolution, RandomRot90,
                                     RandomSmoothField, RandomSolarize, RandomStain, WithProbability)

        L = keras.layers
        o = self.options
        steps = {}

        def add(name, probability, make_layer):
            """Step `name`: make_layer(seed), applied per image with option `probability` if above 0."""
            if float(o[probability]) > 0:
                seed = self._initial_seed(name)
                steps[name] = WithProbability(make_layer(seed), lambda: self._p(probability), seed=seed, name=name)

        if o["flip"]:
            steps["flip"] = L.RandomFlip("horizontal_and_vertical", seed=self._initial_seed("flip"), name="flip")
        if o["rot90"]:
            steps["rot90"] = RandomRot90(seed=self._initial_seed("rot90"), name="rot90")
        if o["rotation"] or o["translation"] or o["zoom"]:
            add("geometry", "geometry_prob", lambda seed: RandomAffine(o["rotation"], o["zoom"], o["translation"],
                                                                       fill_mode=o["fill_mode"], seed=seed))
        jitter = {k: o[k] for k in ("brightness", "contrast", "saturation", "hue") if o[k]}
        if jitter:
            args = {}
            if "brightness" in jitter:
                args["brightness_factor"] = o["brightness"]
            if "contrast" in jitter:
                args["contrast_factor"] = o["contrast"]
            if "saturation" in jitter:
                # Keras' saturation factor maps 0.5 to "unchanged"; keep near it.
                args["saturation_factor"] = (0.5 - o["saturation"] / 2, 0.5 + o["saturation"] / 2)
            if "hue" in jitter:
                args["hue_factor"] = o["hue"]
            add("color", "color_prob", lambda seed: L.RandomColorJitter(value_range=(0, 255), seed=seed, **args))
        if o["stain"]:
            add("stain", "stain_prob", lambda seed: RandomStain(o["stain"], seed=seed))
        if o["gamma"]:
            add("gamma", "gamma_prob", lambda seed: RandomGamma(o["gamma"], seed=seed))
        add("field", "field_prob", lambda seed: RandomSmoothField(o["field_amplitude"], seed=seed))
        add("overlay", "overlay_prob", lambda seed: RandomOverlay(o["overlay_opacity"], seed=seed))
        add("grayscale", "grayscale_prob", lambda seed: L.RandomGrayscale(factor=1.0, seed=seed))
        add("channel_mix", "channel_mix_prob", lambda seed: RandomChannelMix(o["channel_mix"], seed=seed))
        add("randaugment", "randaugment_prob",
            lambda seed: LazyRandAugment(num_ops=int(o["randaugment_num_ops"]), factor=float(o["randaugment_factor"]),
                                         seed=seed))
        add("augmix", "augmix_prob", lambda seed: RandomAugMix(o["augmix_severity"], seed=seed))
        add("blur", "blur_prob", lambda seed: L.RandomGaussianBlur(factor=(1.0, 1.0), kernel_size=int(o["blur_kernel"]),
                                                                   sigma=(0.3, float(o["blur_sigma"])),
                                                                   value_range=(0, 255), seed=seed))
        add("noise", "noise_prob", lambda seed: RandomGaussianNoise(o["noise_std"], seed=seed))
        add("solarize", "solarize_prob", lambda seed: RandomSolarize(tuple(o["solarize_threshold"]), seed=seed))
        add("jpeg", "jpeg_prob", lambda seed: RandomJpeg(tuple(o["jpeg_quality"]), seed=seed))
        add("resolution", "resolution_prob", lambda seed: RandomResolution(o["resolution_min_scale"], seed=seed))
        for patch in range(int(o["erasing_patches"])):  # "erasing", "erasing_2", ...: a patch added keeps the others'
            add("erasing" if patch == 0 else f"erasing_{patch + 1}", "erasing_prob",
                lambda seed: L.RandomErasing(factor=(1.0, 1.0), scale=tuple(o["erasing_scale"]), value_range=(0, 255),
                                             seed=seed))
        return steps

    def _build_mixing(self):
        import keras

        o = self.options
        cutmix = mixup = None
        if o["cutmix_prob"] > 0:
            cutmix = keras.layers.CutMix(factor=float(o["cutmix_alpha"]), seed=self._initial_seed("cutmix"),
                                         name="cutmix")
        if o["mixup_prob"] > 0:
            mixup = keras.layers.MixUp(alpha=float(o["mixup_alpha"]), seed=self._initial_seed("mixup"), name="mixup")
        self._batch_generator = keras.random.SeedGenerator(self._initial_seed("batch_mixing"), name="batch_mixing")
        return cutmix, mixup

    def images_only(self, images):
        """Per-image augmentations (no batch mixing), float32 0-255 in and out."""
        for step in self.steps.values():
            images = step(images, training=True)
        return self._clip(images)

    def _clip(self, images):
        import keras

        return keras.ops.clip(keras.ops.cast(images, "float32"), 0.0, 255.0)

    def __call__(self, images, labels):
        """The augmented batch; with `augmix_views` k, each image's row is followed by k
        AugMix views of it (same label), n (k + 1) rows in all."""
        images, labels = self._mixed(self.images_only(images), labels)
        if not self.views:
            return images, labels
        import keras

        rows = [images] + [self._clip(self.view_layer(images, training=True)) for _ in range(self.views)]
        interleaved = keras.ops.reshape(keras.ops.stack(rows, axis=1), (-1, *images.shape[1:]))
        return interleaved, keras.ops.repeat(labels, self.views + 1, axis=0)

    def _mixed(self, images, labels):
        import keras
        import tensorflow as tf

        if self.cutmix is None and self.mixup is None:
            return images, labels
        draw = keras.random.uniform((), seed=self._batch_generator)
        p_cut = self._p("cutmix_prob") if self.cutmix is not None else 0.0
        p_mix = self._p("mixup_prob") if self.mixup is not None else 0.0

        def cut():
            out = self.cutmix({"images": images, "labels": labels}, training=True)
            return self._clip(out["images"]), tf.cast(out["labels"], labels.dtype)

        def mix():
            out = self.mixup({"images": images, "labels": labels}, training=True)
            return self._clip(out["images"]), tf.cast(out["labels"], labels.dtype)

        def keep():
            return images, labels

        # At most one of the two per batch: CutMix with p_cut, else MixUp with p_mix.
        if self.cutmix is not None and self.mixup is not None:
            return tf.cond(draw < p_cut, cut, lambda: tf.cond(draw < p_cut + p_mix, mix, keep))
        if self.cutmix is not None:
            return tf.cond(draw < p_cut, cut, keep)
        return tf.cond(draw < p_mix, mix, keep)

    def traced(self, image_shape, dtype="uint8"):
        """The augmentation as one tf.function of (images, one-hot labels, first, ramp,
        seeds), traced on first use and reused by every dataset of the run (tracing the
        Keras layers costs seconds). When `first` is true (an epoch's first batch) it
        first sets the epoch's ramp and generator seeds (`epoch_state`), in-graph, so
        one pipeline can run many epochs and prefetch across their boundaries."""
        import tensorflow as tf

        if self._traced is None:
            def augment_batch(images, labels, first, scale, seeds):
                def set_state():
                    self._assign_epoch_state(scale, seeds)
                    return tf.constant(True)

                # the random layers read the states after this (automatic control
                # dependencies order the ops on the same variables)
                tf.cond(first, set_state, lambda: tf.constant(False))
                return self(tf.cast(images, tf.float32), labels)

            self._traced = tf.function(augment_batch, input_signature=(
                tf.TensorSpec((None, *image_shape), tf.as_dtype(dtype)),
                tf.TensorSpec((None, self.num_classes), tf.float32), tf.TensorSpec((), tf.bool),
                tf.TensorSpec((), tf.float32), tf.TensorSpec((len(self._seed_states),), tf.int64)))
        return self._traced


class TrainingStream:
    """The augmented training stream of a run: one Augmenter, traced once, re-seeded
    per epoch. The stream depends on (images, options, seed, epoch, order), never on
    timing or on the epochs before.

    `epochs(plan)` runs many epochs through one tf.data pipeline: creating a pipeline
    instantiates the augmentation graph, which once per epoch would cost more than the
    augmentation itself (bench/RESULTS.md)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, options: dict, *, seed: int = 0,
                 batch_size: int = 32, weights: np.ndarray | None = None, num_classes: int = NUM_CLASSES):
        self.images, self.labels = images, np.asarray(labels)
        self.weights = None if weights is None else np.asarray(weights, np.float32)
        self.batch_size, self.num_classes, self.seed = int(batch_size), num_classes, seed
        self.augmenter = Augmenter(options, seed=seed, num_classes=num_classes)

    def default_order(self, epoch: int) -> np.ndarray:
        """The epoch's index order when none is given: a permutation seeded by (seed, epoch)."""
        return np.random.default_rng(stable_seed(self.seed, epoch, 0)).permutation(len(self.labels))

    def epochs(self, plan):
        """The stream over the epochs in `plan` (epoch numbers, or (epoch, order) pairs)
        as one tf.data.Dataset of (float32 images 0-255, one-hot float32 labels[, sample
        weights]); an epoch's batches are the same as from `epoch(e, order)`."""
        import tensorflow as tf

        plan = [item if isinstance(item, tuple) else (item, None) for item in plan]
        onehot = np.eye(self.num_classes, dtype=np.float32)
        shape = self.images.shape[1:]
        rows = self.augmenter.views + 1

        def batches():
            for epoch, order in plan:
                order = self.default_order(epoch) if order is None else np.asarray(order)
                scale, seeds = self.augmenter.epoch_state(epoch)
                for start in range(0, len(order), self.batch_size):
                    index = order[start:start + self.batch_size]
                    batch = (self.images[index], onehot[self.labels[index]], start == 0, scale, seeds)
                    # a weight per row: an image's AugMix views (augmix_views) carry its weight
                    yield batch if self.weights is None else (*batch, np.repeat(self.weights[index], rows))

        signature = (tf.TensorSpec((None, *shape), tf.as_dtype(self.images.dtype)),
                     tf.TensorSpec((None, self.num_classes), tf.float32), tf.TensorSpec((), tf.bool),
                     tf.TensorSpec((), tf.float32), tf.TensorSpec((None,), tf.int64))
        if self.weights is not None:
            signature += (tf.TensorSpec((None,), tf.float32),)
        function = self.augmenter.traced(shape, self.images.dtype)

        def apply(x, y, first, scale, seeds, *w):
            x, y = function(x, y, first, scale, seeds)
            return (x, y, *w)

        # One batch at a time keeps the random draws in order (reproducible); each op may
        # use every core (tf.data's default is one, which halves the stream's rate here).
        options = tf.data.Options()
        options.threading.max_intra_op_parallelism = os.cpu_count() or 1
        ds = tf.data.Dataset.from_generator(batches, output_signature=signature).map(apply)
        return ds.prefetch(2).with_options(options)

    def epoch(self, epoch: int, order: np.ndarray | None = None):
        """One epoch (see `epochs`); `order` defaults to `default_order(epoch)`."""
        return self.epochs([(epoch, order)])


def augmented_dataset(images: np.ndarray, labels: np.ndarray, options: dict, *, seed: int = 0,
                      epoch: int = 0, batch_size: int = 32, weights: np.ndarray | None = None,
                      num_classes: int = NUM_CLASSES, order: np.ndarray | None = None):
    """One epoch of a new TrainingStream (see there); for a whole run, keep one stream
    and call its `epochs` so the augmentation is traced and instantiated once."""
    stream = TrainingStream(images, labels, options, seed=seed, batch_size=batch_size, weights=weights,
                            num_classes=num_classes)
    return stream.epoch(epoch, order=order)


def sample_batch(stream: TrainingStream, epoch: int = 0, n: int = 40):
    """The first n augmented images of an epoch (for the augmentation grid): uint8
    images and soft labels. Only those batches are computed, and the pipeline is done
    when this returns (nothing left running that could touch the generators' state)."""
    order = stream.default_order(epoch)
    count = math.ceil(n / stream.batch_size) * stream.batch_size  # whole batches: mixing is per batch
    xs, ys = [], []
    for batch in stream.epoch(epoch, order=order[:count]):
        xs.append(np.asarray(batch[0]))
        ys.append(np.asarray(batch[1]))
    x, y = np.concatenate(xs)[:n], np.concatenate(ys)[:n]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y


def save_augmentation_grid(path, stream: TrainingStream, *, epoch: int = 0, n: int = 40) -> None:
    """PNG grid of augmented training samples with their (possibly mixed) labels."""
    from .figures import SHORT_NAMES, save_image_grid

    x, y = sample_batch(stream, epoch=epoch, n=n)
    titles = []
    for row in y:
        top = np.argsort(row)[::-1][:2]
        if row[top[1]] > 0.05:
            titles.append(f"{SHORT_NAMES[top[0]]} {row[top[0]]:.2f}/{SHORT_NAMES[top[1]]}")
        else:
            titles.append(SHORT_NAMES[top[0]])
    save_image_grid(path, x, titles=titles, title=f"Augmented training samples (epoch {epoch + 1})")
