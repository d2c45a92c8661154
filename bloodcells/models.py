"""Networks for training: built by model.py's `build_network` (the same code that
rebuilds them on the server, so shipped weights always fit), plus what only
training needs: ImageNet/None/file backbone weights, freezing for the head phase,
partial unfreezing for fine-tuning, and exporting the best model in the
`bloodcells-model/1` format (model.json + model.weights.h5).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from .cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_FORMAT = "bloodcells-model/1"
HEAD_DEFAULTS = {"dense_units": 128, "dropout": 0.2, "bn_momentum": 0.9, "activation": "relu"}
TTA_DEFAULTS = {"views": 10, "merge": "softmax_mean_logits", "mode": "random"}


def shipped_model_module():
    """The top-level model.py, loaded by path (it is self-contained and never imports
    this package; importing it by name could pick up another model.py on sys.path)."""
    name = "_bloodcells_shipped_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def backbone_names():
    return sorted(shipped_model_module().BACKBONES)


def make_spec(model_cfg: dict, name: str = "model", source_run: str = "") -> dict:
    """The model.json dict (contract 1) from the config's [model] table."""
    import keras

    backbone = str(model_cfg.get("backbone", "efficientnetb7")).lower()
    if backbone not in shipped_model_module().BACKBONES:
        raise UserError(f"config: model.backbone: unknown '{backbone}'; expected one of {backbone_names()}")
    norms = shipped_model_module().INPUT_NORMS
    norm = model_cfg.get("backbone_options", {}).get("input_norm", "none")
    if norm not in norms:
        raise UserError(f"config: model.backbone_options.input_norm: unknown '{norm}'; expected one of {norms}")
    head = {**HEAD_DEFAULTS, **model_cfg.get("head", {})}
    tta = {**TTA_DEFAULTS, **model_cfg.get("tta", {})}
    resize = model_cfg.get("resize_to") or None
    return {
        "format": SPEC_FORMAT,
        "name": name,
        "weights_file": "model.weights.h5",
        "backbone": backbone,
        "backbone_options": dict(model_cfg.get("backbone_options", {})),
        "input_size": IMAGE_SIZE,
        "resize_to": int(resize) if resize else None,
        "num_classes": NUM_CLASSES,
        "head": head,
        "tta": tta,
        "class_names": list(CLASS_NAMES),
        "source_run": source_run,
        "keras_version": keras.__version__,
    }


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
    if not path.is_file():
        raise UserError(f"{path}: model.weights: file not found; expected 'imagenet', 'none' "
                        f"or a backbone weights file (.h5)")
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


def build(spec: dict, weights=None, cache_dir=None):
    """The training network (same graph as the shipped one)."""
    resolved = resolve_backbone_weights(weights, spec["backbone"], cache_dir)
    return shipped_model_module().build_network(spec, backbone_weights=resolved)


# -- freezing ----------------------------------------------------------------------------

HEAD_LAYERS = ("gap", "head_dense", "head_bn", "head_act", "head_dropout", "logits", "probs")


def backbone_layers(model):
    """The backbone's layers in order: the keras.applications sub-model's layers, or the
    small CNN's own layers (everything between the input preprocessing and the head)."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        return list(nested[0].layers)
    skip = set(HEAD_LAYERS) | {"image", "resize", "to_unit_range", "caffe_preprocess", "to_unit"}
    return [layer for layer in model.layers if layer.name not in skip and not isinstance(layer, keras.layers.InputLayer)]


def _set_backbone_container(model, trainable: bool) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layer.trainable = trainable


def freeze_backbone(model) -> None:
    """Phase 1: only the head learns."""
    _set_backbone_container(model, False)
    for layer in backbone_layers(model):
        layer.trainable = False


def unfreeze_top(model, n="all", freeze_batchnorm: bool = True) -> int:
    """Phase 2: the top `n` backbone layers (or 'all') learn; BatchNormalization layers
    stay frozen when asked (their statistics would drift on a small set). Returns the
    number of backbone layers left trainable."""
    import keras

    layers = backbone_layers(model)
    _set_backbone_container(model, True)
    count = len(layers) if str(n).lower() == "all" else max(0, min(int(n), len(layers)))
    first = len(layers) - count
    trainable = 0
    for i, layer in enumerate(layers):
        on = i >= first and not (freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization))
        layer.trainable = on
        trainable += bool(on and layer.weights)
    return trainable


# -- export ------------------------------------------------------------------------------

def export(model, spec: dict, out_dir) -> Path:
    """Write `out_dir/model.json` + `out_dir/model.weights.h5` (contract 1). The pair is
    written in a temporary sibling folder and swapped into place, so a reader never sees
    a half-written export or a json without its weights."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "weights_file": "model.weights.h5"}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    old = None
    try:
        model.save_weights(str(tmp / "model.weights.h5"))
        (tmp / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_export(folder) -> tuple[dict, Path]:
    """(spec, weights path) of an exported model folder, or a UserError saying what is missing."""
    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; expected an exported model folder (model.json + model.weights.h5) "
                        f"as written by `python -m bloodcells.train ... --export {folder}`")
    try:
        spec = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); re-export the model") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else spec
        raise UserError(f"{path}: format: expected \"{SPEC_FORMAT}\", got {found!r}")
    for key in ("backbone", "weights_file"):
        if key not in spec:
            raise UserError(f"{path}: {key}: missing; expected a {SPEC_FORMAT} model.json")
    weights = folder / spec["weights_file"]
    if not weights.is_file():
        raise UserError(f"{weights}: weights file missing (model.json's weights_file); re-export the model")
    return spec, weights


def load_exported(folder):
    """Rebuild an exported model exactly as model.py does: (network, spec). Weights that
    do not fit the network described by model.json are a UserError."""
    spec, weights = read_export(folder)
    net = shipped_model_module().build_network(spec)
    try:
        net.load_weights(str(weights))
    except Exception as exc:  # Keras raises several types for a mismatched file
        raise UserError(f"{weights}: weights: do not fit the network in model.json "
                        f"({' '.join(str(exc).split())[:160]})") from None
    return net, spec
