"""Competition submission: `from model import Model; Model().predict(X)`.

Self-contained on purpose: numpy and TensorFlow/Keras only (the server has TensorFlow
2.17 with Keras 3.4.1 and neither keras_cv nor this project's package). Files are found
next to this file, never in the working directory.

Each exported model is a pair at the zip's root: `<name>.json` (how to rebuild the
network) and its weights file (Keras `save_weights` format, float32 or float16). Whole
`.keras` files are not used: one saved by a newer Keras fails to load on the server's.
Several pairs form an ensemble (probabilities averaged).

Format bloodcells-model/2: the network is exactly `build_network(spec)` (keras.applications
built with weights=None, or model.py's own EfficientNet-Lite), whatever the training weights were; what Keras builds only for
`weights="imagenet"` (EfficientNetB0-B7's stem Rescaling) was folded into the weights at
training time. Format /1 exports load only for backbones whose Keras graph does not depend
on the weights source; for the others a one-line error asks to re-export.

Test-time augmentation: each JSON's "tta" (the one place it is set) gives the number of views (identity plus
flips, quarter turns, small shifts, mild brightness/contrast, fixed seeds; or the 8
flips/rotations), and the merge (softmax of the mean logits, or mean of probabilities).
All views of a batch go through the network in one compiled call; images stream in
batches, so memory does not grow with the number of images.
"""

from __future__ import annotations

import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC_FORMAT = "bloodcells-model/2"
LEGACY_FORMAT = "bloodcells-model/1"
SPEC_FORMATS = (LEGACY_FORMAT, SPEC_FORMAT)
NUM_CLASSES = 8
DEFAULT_HEAD = {"dense_units": 128, "dropout": 0.2, "bn_momentum": 0.9, "activation": "relu"}

# ---------------------------------------------------------------------------------------
# Network architecture: rebuilt from the JSON spec. Training builds the same network
# through this function, so the shipped weights always fit.
# ---------------------------------------------------------------------------------------

LITE_CONSTRUCTOR = "efficientnet_lite"  # model.py's own (keras.applications has no Lite)

# name -> (keras.applications constructor name, how it expects pixels in 0-255)
BACKBONES = {
    **{f"efficientnetb{i}": (f"EfficientNetB{i}", "raw") for i in range(8)},
    **{f"efficientnetv2{v.lower()}": (f"EfficientNetV2{v}", "raw")
       for v in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    "mobilenetv2": ("MobileNetV2", "tf"),
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    **{f"convnext_{s.lower()}": (f"ConvNeXt{s}", "raw")
       for s in ("Tiny", "Small", "Base", "Large", "XLarge")},
    **{f"efficientnet_lite{i}": (LITE_CONSTRUCTOR, "lite") for i in range(3)},
    "small_cnn": (None, "unit"),
}


class CaffePreprocess(keras.layers.Layer):
    """RGB 0-255 -> BGR minus the ImageNet means, as ResNet weights expect."""

    def call(self, x):
        mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        return x[..., ::-1] - mean


INPUT_NORMS = ("none", "image", "channel")  # small_cnn's backbone_options.input_norm


class ImageStandardization(keras.layers.Layer):
    """Per image: subtract the mean pixel value and divide by the standard deviation,
    taken over all pixels and channels ("image") or per channel ("channel"). Brightness
    and contrast changes (and, per channel, colour casts) cancel out before the network."""

    def __init__(self, per_channel=False, **kwargs):
        super().__init__(**kwargs)
        self.per_channel = bool(per_channel)

    def call(self, x):
        axes = (1, 2) if self.per_channel else (1, 2, 3)
        mean = keras.ops.mean(x, axis=axes, keepdims=True)
        variance = keras.ops.var(x, axis=axes, keepdims=True)
        return (x - mean) / keras.ops.sqrt(variance + 1e-4)

    def get_config(self):
        return {**super().get_config(), "per_channel": self.per_channel}


def preprocess_pixels(x, mode):
    """0-255 pixels into the range the backbone's weights expect (BACKBONES' mode)."""
    if mode == "tf":  # [-1, 1]
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(x)
    if mode == "lite":  # (x - 127) / 128, as Google's EfficientNet-Lite checkpoints were trained
        return keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="to_lite_range")(x)
    if mode == "caffe":
        return CaffePreprocess(name="caffe_preprocess")(x)
    if mode == "unit":  # [0, 1]
        return keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(x)
    return x  # the backbone normalises 0-255 itself


def _small_cnn(x, options):
    """A small CNN for CPUs and tests, trained from scratch.

    Plain (default): conv blocks of conv-BN-ReLU (`convs_per_block` times) then 2x2 pool.
    Residual (`residual: true`): an optional strided stem, then per width a stage of
    pre-activation-free basic blocks (conv-BN-ReLU-conv-BN + shortcut, ReLU), the
    first block of each later stage downsampling by stride 2."""
    widths = options.get("widths", [32, 64, 128, 256])
    momentum = options.get("bn_momentum", 0.9)
    L = keras.layers

    def conv_bn(x, width, stride, name, relu=True):
        x = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = L.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
        return L.Activation("relu", name=f"{name}_relu")(x) if relu else x

    if not options.get("residual", False):
        for block, width in enumerate(widths):
            for conv in range(options.get("convs_per_block", 2)):
                x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
                x = L.BatchNormalization(momentum=momentum, name=f"block{block}_bn{conv}")(x)
                x = L.Activation("relu", name=f"block{block}_relu{conv}")(x)
            if block < len(widths) - 1:
                x = L.MaxPooling2D(2, name=f"block{block}_pool")(x)
        return x

    x = conv_bn(x, int(options.get("stem_width", widths[0])), int(options.get("stem_stride", 1)), "stem")
    for stage, width in enumerate(widths):
        for block in range(int(options.get("blocks_per_stage", 1))):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage}_block{block}"
            shortcut = x
            y = conv_bn(x, width, stride, f"{name}_a")
            y = conv_bn(y, width, 1, f"{name}_b", relu=False)
            if stride != 1 or shortcut.shape[-1] != width:
                if stride != 1:
                    # = the 1x1 conv's own stride, but TF 2.21's oneDNN kernel for a strided
                    # 1x1 conv corrupts the heap in training; same weights, same output.
                    shortcut = L.MaxPooling2D(1, strides=stride, name=f"{name}_subsample")(shortcut)
                shortcut = L.Conv2D(width, 1, use_bias=False, name=f"{name}_proj")(shortcut)
                shortcut = L.BatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(shortcut)
            x = L.Add(name=f"{name}_add")([shortcut, y])
            x = L.Activation("relu", name=f"{name}_out")(x)
    return x


# EfficientNet-Lite (Google's EfficientNet for mobile: B0's blocks without squeeze-excite,
# ReLU6, the 32-channel stem and 1280-channel head not scaled), written here because
# keras.applications has none. Per stage: (kernel, stride, expand ratio, output channels,
# repeats), B0's layout; per model: (width, depth) multipliers.
LITE_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
               (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
LITE_SCALING = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1),
                "efficientnet_lite2": (1.1, 1.2)}
LITE_STEM, LITE_HEAD, LITE_BN_EPSILON = 32, 1280, 1e-3


def _lite_channels(channels, width, divisor=8):
    """Channels scaled by `width`, rounded to a multiple of 8, never down by more than 10 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def efficientnet_lite(name, input_shape):
    """The EfficientNet-Lite backbone `name` (inputs already in (x - 127) / 128), up to the
    head convolution; layers named as keras.applications names EfficientNet's (stem_*,
    block{stage}{letter}_*, top_*), so block-wise unfreezing works alike for both."""
    width, depth = LITE_SCALING[name]
    L = keras.layers

    def bn_relu6(x, prefix, relu=True):
        x = L.BatchNormalization(epsilon=LITE_BN_EPSILON, name=f"{prefix}bn")(x)
        return L.ReLU(6.0, name=f"{prefix}activation")(x) if relu else x

    inputs = keras.Input(input_shape, name="input")
    x = L.Conv2D(LITE_STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = bn_relu6(x, "stem_")
    channels = LITE_STEM
    for stage, (kernel, stride, expand, out, repeats) in enumerate(LITE_STAGES):
        out = _lite_channels(out, width)
        if 0 < stage < len(LITE_STAGES) - 1:  # the first and last stages keep one block
            repeats = int(np.ceil(depth * repeats))
        for block in range(repeats):
            prefix = f"block{stage + 1}{chr(ord('a') + block)}_"
            strides = stride if block == 0 else 1
            y = x
            if expand != 1:
                y = L.Conv2D(channels * expand, 1, padding="same", use_bias=False, name=f"{prefix}expand_conv")(y)
                y = bn_relu6(y, f"{prefix}expand_")
            y = L.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False, name=f"{prefix}dwconv")(y)
            y = bn_relu6(y, prefix)
            y = L.Conv2D(out, 1, padding="same", use_bias=False, name=f"{prefix}project_conv")(y)
            y = bn_relu6(y, f"{prefix}project_", relu=False)
            if strides == 1 and channels == out:
                y = L.Add(name=f"{prefix}add")([x, y])
            x, channels = y, out
    x = L.Conv2D(LITE_HEAD, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = bn_relu6(x, "top_")
    return keras.Model(inputs, x, name=name)


def build_dependent(backbone):
    """Whether keras.applications builds this backbone differently for weights="imagenet"
    (EfficientNetB0-B7 add a Rescaling after the stem Normalization)."""
    return backbone.lower().startswith("efficientnetb")


def backbone_constructor(spec):
    """(keras.applications constructor name, its keyword arguments) for the spec's backbone,
    or (None, {}) for the small CNN."""
    name = spec["backbone"].lower()
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{spec['backbone']}'; expected one of {sorted(BACKBONES)}")
    constructor, mode = BACKBONES[name]
    if constructor is None:
        return None, {}
    side = int(spec.get("resize_to") or spec.get("input_size", 96))
    extra = {"include_preprocessing": True} if mode == "raw" and "efficientnetb" not in name else {}
    return constructor, {"include_top": False, "input_shape": (side, side, 3), **extra}


def build_network(spec):
    """Backbone -> GAP -> Dense -> BN -> ReLU -> Dropout -> Dense(8) logits -> softmax.

    `spec` is the exported JSON as a dict. The backbone is built with weights=None: training
    builds this same graph and loads its pretrained weights into it (bloodcells.network)."""
    name = spec["backbone"].lower()
    if spec.get("format", SPEC_FORMAT) == LEGACY_FORMAT and build_dependent(name):
        raise ValueError(f"{spec.get('name', name)}: exported as {LEGACY_FORMAT}, whose {name} may lack the stem "
                         f"layer it was trained with; re-export it with the current bloodcells")
    constructor, kwargs = backbone_constructor(spec)
    mode = BACKBONES[name][1]
    size = int(spec.get("input_size", 96))
    resize_to = spec.get("resize_to")
    head = dict(DEFAULT_HEAD, **spec.get("head", {}))
    options = spec.get("backbone_options", {})

    inputs = keras.Input((size, size, 3), name="image")  # pixels in 0-255
    x = inputs
    if resize_to and int(resize_to) != size:
        x = keras.layers.Resizing(int(resize_to), int(resize_to), name="resize")(x)
    x = preprocess_pixels(x, mode)
    if constructor is None:
        norm = options.get("input_norm", "none")
        if norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm '{norm}'; expected one of {INPUT_NORMS}")
        if norm != "none":
            x = ImageStandardization(per_channel=norm == "channel", name="standardize")(x)
        x = _small_cnn(x, options)
    elif constructor == LITE_CONSTRUCTOR:
        x = efficientnet_lite(name, kwargs["input_shape"])(x)
    else:
        x = getattr(keras.applications, constructor)(weights=None, **kwargs)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(int(head["dense_units"]), name="head_dense")(x)
    x = keras.layers.BatchNormalization(momentum=head["bn_momentum"], name="head_bn")(x)
    x = keras.layers.Activation(head["activation"], name="head_act")(x)
    x = keras.layers.Dropout(float(head["dropout"]), name="head_dropout")(x)
    logits = keras.layers.Dense(int(spec.get("num_classes", NUM_CLASSES)), dtype="float32", name="logits")(x)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    return keras.Model(inputs, probs, name=spec.get("name", name))


# ---------------------------------------------------------------------------------------
# Inference: streaming batches, test-time augmentation (TTA) in one compiled call, ensemble
# ---------------------------------------------------------------------------------------

TTA_SEED = 20241126  # fixed: the same X always gives the same views, hence the same result
MAX_SHIFT = 4  # pixels; views shift by at most this much (reflected border)
MERGES = ("softmax_mean_logits", "mean_probs")
MODES = ("random", "dihedral")
DEFAULT_TTA = {"views": 10, "merge": "softmax_mean_logits", "mode": "random"}


def tta_plan(views, mode="random"):
    """The views as plain parameters, applied in this order: `flip` (left-right), `rot`
    (quarter turns counter-clockwise), shift by (`dx`, `dy`) pixels with a reflected
    border, then `contrast` around each image's channel means and `brightness` (added,
    0-255 scale), clipped to 0-255. View 0 is always the identity.

    "random": the first 8 views cover the 8 flips/rotations, each non-identity view adds
    a small shift and a mild brightness/contrast change drawn from a fixed seed, so the
    plan for N views is the first N of the plan for more. "dihedral": the 8 flips and
    rotations only (at most 8 views)."""
    views = int(views)
    if views < 1:
        raise ValueError(f"TTA views must be >= 1 (1 disables TTA), got {views}")
    if mode not in MODES:
        raise ValueError(f"TTA mode must be one of {MODES}, got {mode!r}")
    if mode == "dihedral":
        if views > 8:
            raise ValueError(f"dihedral TTA has at most 8 views, got {views}; use mode 'random' for more")
        return [dict(flip=k >= 4, rot=k % 4, dx=0, dy=0, contrast=1.0, brightness=0.0) for k in range(views)]
    rng = np.random.default_rng(TTA_SEED)
    plan = [dict(flip=False, rot=0, dx=0, dy=0, contrast=1.0, brightness=0.0)]
    for i in range(1, views):
        k = i % 8
        dx, dy = (int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2))
        contrast = float(rng.uniform(0.9, 1.1))
        brightness = float(rng.uniform(-12.0, 12.0))
        plan.append(dict(flip=k >= 4, rot=k % 4, dx=dx, dy=dy, contrast=contrast, brightness=brightness))
    return plan


def _apply_view(x, view):
    """One view of a batch (b, s, s, 3) float32 in 0-255, as TensorFlow ops."""
    if view["flip"]:
        x = tf.reverse(x, axis=[2])
    if view["rot"]:
        x = tf.image.rot90(x, k=view["rot"])
    dx, dy = view["dx"], view["dy"]
    if dx or dy:
        size = x.shape[1]
        padded = tf.pad(x, [[0, 0], [MAX_SHIFT, MAX_SHIFT], [MAX_SHIFT, MAX_SHIFT], [0, 0]], mode="REFLECT")
        x = padded[:, MAX_SHIFT - dy:MAX_SHIFT - dy + size, MAX_SHIFT - dx:MAX_SHIFT - dx + size, :]
    if view["contrast"] != 1.0 or view["brightness"] != 0.0:
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = tf.clip_by_value((x - mean) * view["contrast"] + mean + view["brightness"], 0.0, 255.0)
    return x


MANIFEST_NAME = "manifest.json"  # written by build_submission.py: lists the members


def _find_specs(folder):
    """[(path, spec)] of the ensemble's members: every *.json with a bloodcells-model format.
    A JSON that looks like a member (its name matches a weights file, or it names a
    bloodcells-model format) but cannot be read is an error, never a skipped member; when
    the manifest is there, the members must be exactly the ones it lists."""
    files = sorted(os.listdir(folder))
    weights_stems = {f.split(".")[0] for f in files if f.endswith(".h5")}
    specs = []
    for file in files:
        if not file.endswith(".json") or file == MANIFEST_NAME:
            continue
        with open(os.path.join(folder, file), "rb") as fh:
            raw = fh.read()
        looks_like_member = file[:-len(".json")] in weights_stems or b"bloodcells-model" in raw
        try:
            spec = json.loads(raw)
        except ValueError as exc:
            if looks_like_member:
                raise ValueError(f"{file} next to model.py: not valid JSON ({exc}); it is an ensemble member's "
                                 f"spec: rebuild the zip") from None
            continue
        form = spec.get("format") if isinstance(spec, dict) else None
        if form in SPEC_FORMATS:
            specs.append((os.path.join(folder, file), spec))
        elif looks_like_member:
            raise ValueError(f"{file} next to model.py: format {form!r}; expected {SPEC_FORMAT!r} "
                             f"(an ensemble member's spec): rebuild the zip")
    manifest_path = os.path.join(folder, MANIFEST_NAME)
    if os.path.isfile(manifest_path):
        try:
            with open(manifest_path) as fh:
                listed = {str(m["name"]) for m in json.load(fh)["models"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{MANIFEST_NAME} next to model.py: unreadable ({exc!r}); rebuild the zip") from None
        found = {os.path.basename(path)[:-len(".json")] for path, _ in specs}
        if found != listed:
            missing, extra = sorted(listed - found), sorted(found - listed)
            raise ValueError(f"{MANIFEST_NAME} next to model.py: members {sorted(listed)}; found "
                             f"{sorted(found)} ({'missing ' + ', '.join(missing) if missing else ''}"
                             f"{'; ' if missing and extra else ''}{'not listed ' + ', '.join(extra) if extra else ''})")
    return specs


def _load_weights(net, path):
    """Keras `load_weights`; weights stored in float16 (build_submission --half) are cast
    to the variables' float32 when assigned."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {os.path.basename(path)} not found next to model.py "
                                f"({os.path.dirname(path)}); ship it at the zip's root")
    net.load_weights(path)


# Pixel scales model.py accepts. The server hands 0-255 (uint8, possibly float); float
# images in 0-1 are recognised (over the whole X, never per batch) and scaled. Values
# slightly outside the range (resampling overshoot, rounding) are clipped; anything
# further out than RANGE_SLACK of the range is not an image in that scale and raises.
RANGE_SLACK = 1.0 / 8.0
CHECK_CHUNK = 1024  # images per chunk of the one pass over X (no full-size temporaries)


def pixel_scale(X):
    """Factor that brings X to 0-255 (1 or 255), from one chunked min/max pass over X.
    NaN and infinity propagate through min/max, so they cost no separate pass."""
    if X.dtype == np.uint8 or len(X) == 0:
        return 1.0
    lo, hi, bad = np.inf, -np.inf, None
    for start in range(0, len(X), CHECK_CHUNK):
        chunk = X[start:start + CHECK_CHUNK]
        c_lo, c_hi = chunk.min(), chunk.max()
        if not (np.isfinite(c_lo) and np.isfinite(c_hi)):
            rows = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
            bad = start + int(np.argmax(rows))
            raise ValueError(f"X contains NaN or infinite values (first in image {bad})")
        lo, hi = min(lo, float(c_lo)), max(hi, float(c_hi))
    if X.dtype.kind == "f" and hi <= 1.0 + RANGE_SLACK:
        if lo < -RANGE_SLACK:
            raise ValueError(f"X must hold pixels in 0-255 (or floats in 0-1), got values in [{lo:g}, {hi:g}]")
        return 255.0
    if lo < -255.0 * RANGE_SLACK or hi > 255.0 * (1.0 + RANGE_SLACK):
        raise ValueError(f"X must hold pixels in 0-255 (or floats in 0-1), got values in [{lo:g}, {hi:g}]")
    return 1.0


def _views_function(plan, size):
    """All views of a batch stacked view-major (views x batch rows), as one XLA-compiled
    gather and one fused multiply-add: the same values as `_apply_view` per view (which
    defines them and builds the tables here), at a fraction of the cost of its ops one by
    one, which matters beside a small network."""
    pixels = size * size
    # where each output pixel of each view comes from: _apply_view on an image of indices
    index_image = tf.constant(np.arange(pixels, dtype=np.float32).reshape(1, size, size, 1))
    geometry = [dict(view, contrast=1.0, brightness=0.0) for view in plan]
    sources = np.stack([_apply_view(index_image, view).numpy().reshape(-1) for view in geometry]).astype(np.int32)
    # each view's channel mean as a weighted sum of the original pixels (a reflected shift repeats some)
    mean_weights = np.zeros((len(plan), pixels), np.float32)
    for weights, source in zip(mean_weights, sources):
        np.add.at(weights, source, 1.0 / pixels)
    contrast = np.array([v["contrast"] for v in plan], np.float32).reshape(-1, 1, 1, 1)
    brightness = np.array([v["brightness"] for v in plan], np.float32).reshape(-1, 1, 1, 1)

    def stack(x):
        n = tf.shape(x)[0]
        flat = tf.reshape(x, [n, pixels, 3])
        rows = tf.gather(tf.reshape(flat, [-1, 3]), sources[:, None, :] + (tf.range(n) * pixels)[None, :, None])
        mean = tf.einsum("vp,npc->vnc", mean_weights, flat)[:, :, None, :]
        # contrast 1 and brightness 0 (the identity view) leave 0-255 pixels exactly as they are
        out = tf.clip_by_value(rows * contrast + (mean * (1.0 - contrast) + brightness), 0.0, 255.0)
        return tf.reshape(out, [-1, size, size, 3])

    return tf.function(stack, jit_compile=True, autograph=False)


def batch_bounds(n, images_per_call):
    """Start/stop of each call: as few calls as `images_per_call` allows, sizes within one
    image of each other (no short last batch)."""
    calls = -(-n // max(1, int(images_per_call)))
    return [(n * i // calls, n * (i + 1) // calls) for i in range(calls)]


class Model:
    """The server's entry point: `Model()` then `predict(X)` -> (n,) int64 labels.

    Every `*.json` next to this file with format bloodcells-model/2 (or /1) is a member (several:
    their probabilities are averaged). Each member applies its JSON's "tta" (views, mode,
    merge): that is the one place TTA is set (`build_submission.py --tta` rewrites it)."""

    batch_size = 128  # network rows per compiled call (images x views): memory does not grow with n

    def __init__(self):
        specs = _find_specs(HERE)
        if not specs:
            raise FileNotFoundError(f"no model spec (*.json with \"format\": \"{SPEC_FORMAT}\") "
                                    f"next to model.py in {HERE}")
        self.members = []
        for path, spec in specs:
            net = build_network(spec)
            _load_weights(net, os.path.join(os.path.dirname(path), spec["weights_file"]))
            logits = keras.Model(net.input, net.get_layer("logits").output, name=net.name + "_logits")
            tta = dict(DEFAULT_TTA, **spec.get("tta", {}))
            if tta["merge"] not in MERGES:
                raise ValueError(f"{os.path.basename(path)}: TTA merge must be one of {MERGES}, got {tta['merge']!r}")
            plan = tta_plan(int(tta["views"]), tta["mode"])
            self.members.append({"name": spec.get("name", os.path.basename(path)), "spec": spec, "network": logits,
                                 "plan": plan, "views": _views_function(plan, int(spec.get("input_size", 96))) if len(plan) > 1 else None,
                                 "tta": {"views": len(plan), "mode": tta["mode"], "merge": tta["merge"]}})
        self.input_size = int(specs[0][1].get("input_size", 96))
        self.num_classes = int(specs[0][1].get("num_classes", NUM_CLASSES))
        for _, spec in specs:
            if (int(spec.get("input_size", 96)), int(spec.get("num_classes", NUM_CLASSES))) != \
                    (self.input_size, self.num_classes):
                raise ValueError("ensemble members disagree on input_size or num_classes")
        self.max_views = max(len(m["plan"]) for m in self.members)
        signature = [tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32),
                     tf.TensorSpec([], tf.float32)]
        # One trace for every batch size and pixel scale: no retracing per batch or per call.
        self._forward = tf.function(self._forward_graph, input_signature=signature)

    def _forward_graph(self, x, scale):
        """Pixels to 0-255 (scaled, clipped), then all views of the batch through each
        network in one call (views x batch rows), merged per member, then the members'
        probabilities averaged."""
        x = tf.clip_by_value(x * scale, 0.0, 255.0)
        batch = tf.shape(x)[0]
        probs = []
        for member in self.members:
            plan = member["plan"]
            stacked = member["views"](x) if len(plan) > 1 else x
            logits = tf.cast(member["network"](stacked, training=False), tf.float32)
            logits = tf.reshape(logits, [len(plan), batch, self.num_classes])
            if member["tta"]["merge"] == "mean_probs":
                probs.append(tf.reduce_mean(tf.nn.softmax(logits, axis=-1), axis=0))
            else:
                probs.append(tf.nn.softmax(tf.reduce_mean(logits, axis=0), axis=-1))
        return tf.add_n(probs) / float(len(probs)) if len(probs) > 1 else probs[0]

    def _check_input(self, X):
        if not isinstance(X, np.ndarray):
            X = np.asarray(X)
        expected = (self.input_size, self.input_size, 3)
        if X.ndim != 4 or tuple(X.shape[1:]) != expected:
            hint = " (one image? pass X[None])" if tuple(X.shape) == expected else ""
            raise ValueError(f"X must have shape (n, {expected[0]}, {expected[1]}, 3), got {X.shape}{hint}")
        if X.dtype.kind not in "uif":
            raise ValueError(f"X must be uint8 or float pixels in 0-255 (or floats in 0-1), got dtype {X.dtype}")
        return X

    def predict_proba(self, X):
        """(n, 8) float32 class probabilities; X (n, 96, 96, 3) uint8 or float in 0-255
        (float in 0-1 is recognised and scaled)."""
        X = self._check_input(X)
        scale = tf.constant(pixel_scale(X), tf.float32)
        out = np.empty((len(X), self.num_classes), dtype=np.float32)
        for start, stop in batch_bounds(len(X), int(self.batch_size) // self.max_views):
            batch = tf.constant(np.asarray(X[start:stop], dtype=np.float32))
            out[start:stop] = self._forward(batch, scale).numpy()
        return out

    def predict(self, X):
        """(n,) int64 class labels."""
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)
