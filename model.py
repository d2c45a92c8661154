"""Competition submission: `from model import Model; Model().predict(X)`.

Self-contained on purpose: numpy and TensorFlow/Keras only (the server has TensorFlow
2.17 with Keras 3.4.1 and neither keras_cv nor this project's package). Files are found
next to this file, never in the working directory.

Each exported model is a pair at the zip's root: `<name>.json` (how to rebuild the
network) and its weights file (Keras `save_weights` format). Whole `.keras` files are
not used: one saved by a newer Keras fails to load on the server's.
"""

from __future__ import annotations

import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC_FORMAT = "bloodcells-model/1"
NUM_CLASSES = 8

# ---------------------------------------------------------------------------------------
# Network architecture: rebuilt from the JSON spec. Training builds the same network
# through this function, so the shipped weights always fit.
# ---------------------------------------------------------------------------------------

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
    "small_cnn": (None, "unit"),
}


class CaffePreprocess(keras.layers.Layer):
    """RGB 0-255 -> BGR minus the ImageNet means, as ResNet weights expect."""

    def call(self, x):
        mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        return x[..., ::-1] - mean


def _preprocess(x, mode):
    if mode == "tf":  # [-1, 1]
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(x)
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
                shortcut = L.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
                shortcut = L.BatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(shortcut)
            x = L.Add(name=f"{name}_add")([shortcut, y])
            x = L.Activation("relu", name=f"{name}_out")(x)
    return x


def build_network(spec, backbone_weights=None):
    """Backbone -> GAP -> Dense -> BN -> ReLU -> Dropout -> Dense(8) logits -> softmax.

    `spec` is the exported JSON as a dict; `backbone_weights` is passed to
    keras.applications (None at inference: the trained weights are loaded after)."""
    name = spec["backbone"].lower()
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{spec['backbone']}'; expected one of {sorted(BACKBONES)}")
    constructor, mode = BACKBONES[name]
    size = int(spec.get("input_size", 96))
    resize_to = spec.get("resize_to")
    head = spec.get("head", {})
    options = spec.get("backbone_options", {})

    inputs = keras.Input((size, size, 3), name="image")  # pixels in 0-255
    x = inputs
    if resize_to and int(resize_to) != size:
        x = keras.layers.Resizing(int(resize_to), int(resize_to), name="resize")(x)
    x = _preprocess(x, mode)
    if constructor is None:
        x = _small_cnn(x, options)
    else:
        side = int(resize_to or size)
        extra = {"include_preprocessing": True} if mode == "raw" and "efficientnetb" not in name else {}
        backbone = getattr(keras.applications, constructor)(
            include_top=False, weights=backbone_weights, input_shape=(side, side, 3), **extra)
        x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(int(head.get("dense_units", 128)), name="head_dense")(x)
    x = keras.layers.BatchNormalization(momentum=head.get("bn_momentum", 0.9), name="head_bn")(x)
    x = keras.layers.Activation(head.get("activation", "relu"), name="head_act")(x)
    x = keras.layers.Dropout(float(head.get("dropout", 0.2)), name="head_dropout")(x)
    logits = keras.layers.Dense(int(spec.get("num_classes", NUM_CLASSES)), dtype="float32", name="logits")(x)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    return keras.Model(inputs, probs, name=spec.get("name", name))


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------

def _find_specs(folder):
    specs = []
    for file in sorted(os.listdir(folder)):
        if not file.endswith(".json"):
            continue
        with open(os.path.join(folder, file)) as fh:
            try:
                spec = json.load(fh)
            except ValueError:
                continue
        if isinstance(spec, dict) and spec.get("format") == SPEC_FORMAT:
            specs.append((os.path.join(folder, file), spec))
    return specs


class Model:
    """The server's entry point: `Model()` then `predict(X)` -> (n,) int labels."""

    def __init__(self):
        specs = _find_specs(HERE)
        if not specs:
            raise FileNotFoundError(f"no model spec (*.json with format {SPEC_FORMAT}) next to {__file__}")
        self.networks = []
        for path, spec in specs:
            net = build_network(spec)
            net.load_weights(os.path.join(os.path.dirname(path), spec["weights_file"]))
            self.networks.append(net)

    def predict_proba(self, X):
        X = np.asarray(X, dtype=np.float32)
        probs = [net.predict(X, batch_size=64, verbose=0) for net in self.networks]
        return np.mean(probs, axis=0)

    def predict(self, X):
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)
