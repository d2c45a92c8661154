"""Networks for training: built by model.py's `build_network` (the same code that
rebuilds them on the server, so shipped weights always fit), plus what only
training needs: freezing for the head phase, partial unfreezing for fine-tuning, and
exporting the best model in the `bloodcells-model/2` format (model.json +
model.weights.h5). Pretrained backbone weights: bloodcells.pretrained.

The export rebuilds the network as model.py will, loads the written weights and must
reproduce the training model's probabilities on the validator's probe images (stored
in model.json as the reference the submission checks compare against)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from . import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from .cli import UserError
from .lite_weights import is_lite, load_lite_backbone
from .pretrained import finalize_states, load_pretrained_backbone, resolve_backbone_weights  # noqa: F401
from .shipped import PROBE_IMAGES, REFERENCE_TOLERANCE, probe_images, shipped_model_module





# model.py's, the one source: the formats the server reads
SPEC_FORMAT, LEGACY_FORMAT = shipped_model_module().SPEC_FORMAT, shipped_model_module().LEGACY_FORMAT


def backbone_names():
    return sorted(shipped_model_module().BACKBONES)


def make_spec(model_cfg, name: str = "model", source_run: str = "") -> dict:
    """The model.json dict (contract 1) from the config's [model] table (a dict or a
    bloodcells.config.ModelConfig); head and TTA default to model.py's."""
    import keras

    if dataclasses.is_dataclass(model_cfg):
        model_cfg = dataclasses.asdict(model_cfg)
    backbone = str(model_cfg.get("backbone", "efficientnetb7")).lower()
    if backbone not in shipped_model_module().BACKBONES:
        raise UserError(f"config: model.backbone: unknown '{backbone}'; expected one of {backbone_names()}")
    norms = shipped_model_module().INPUT_NORMS
    norm = model_cfg.get("backbone_options", {}).get("input_norm", "none")
    if norm not in norms:
        raise UserError(f"config: model.backbone_options.input_norm: unknown '{norm}'; expected one of {norms}")
    head = {**shipped_model_module().DEFAULT_HEAD, **model_cfg.get("head", {})}
    tta = {**shipped_model_module().DEFAULT_TTA, **model_cfg.get("tta", {})}
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
        "pretrained": _weights_kind(model_cfg.get("weights", "none")),
        "source_run": source_run,
        "keras_version": keras.__version__,
    }


def _weights_kind(weights) -> str:
    """Where the backbone's starting weights came from, for the record in model.json."""
    text = str(weights if weights is not None else "none")
    if text.lower() in ("none", "", "imagenet"):
        return text.lower() or "none"
    return f"file:{Path(text).name}"


def build(spec: dict, weights=None, cache_dir=None):
    """The training network: model.py's graph, with pretrained backbone weights loaded
    into it when `weights` is 'imagenet' or a file."""
    resolved = resolve_backbone_weights(weights, spec["backbone"], cache_dir)
    net = shipped_model_module().build_network(spec)
    if resolved is not None and is_lite(spec["backbone"]):
        load_lite_backbone(net, spec["backbone"], resolved, cache_dir or None)
    elif resolved is not None:
        load_pretrained_backbone(net, spec, resolved)
    return net


# -- freezing ----------------------------------------------------------------------------

HEAD_LAYERS = ("gap", "head_dense", "head_bn", "head_act", "head_dropout", "logits", "probs")


def backbone_layers(model):
    """The backbone's layers in order: the keras.applications sub-model's layers, or the
    small CNN's own layers (everything between the input preprocessing and the head)."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        return list(nested[0].layers)
    skip = set(HEAD_LAYERS) | {"image", "resize", "to_unit_range", "to_lite_range", "caffe_preprocess", "to_unit"}
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


def layer_block(name: str) -> str:
    """The block a backbone layer belongs to: its name's first part (keras.applications'
    EfficientNets and model.py's Lite: stem, block1a ... block7a, top; the small CNN: stem,
    stage0 ... or block0 ...)."""
    return name.split("_")[0]


def top_layer_count(layers, n) -> int:
    """How many of the backbone's last layers `unfreeze = n` covers: 'all', a layer count,
    or 'blocks:K' (the last K whole blocks and what follows them, e.g. the head convolution)."""
    text = str(n).lower()
    if text == "all":
        return len(layers)
    if text.startswith("blocks:"):
        wanted = int(text.split(":", 1)[1])
        blocks = list(dict.fromkeys(layer_block(layer.name) for layer in layers))
        kept = [b for b in blocks if b not in ("top", "stem")][-wanted:] if wanted > 0 else []
        if not kept:
            return sum(layer_block(layer.name) == "top" for layer in layers)
        return len(layers) - next(i for i, layer in enumerate(layers) if layer_block(layer.name) == kept[0])
    return max(0, min(int(n), len(layers)))


def unfreeze_top(model, n="all", freeze_batchnorm: bool = True) -> int:
    """Phase 2: the top `n` backbone layers ('all', a count, or 'blocks:K' whole blocks)
    learn; BatchNormalization layers stay frozen when asked (their statistics would drift
    on a small set). Returns the number of backbone layers left trainable."""
    import keras

    layers = backbone_layers(model)
    _set_backbone_container(model, True)
    count = top_layer_count(layers, n)
    first = len(layers) - count
    trainable = 0
    for i, layer in enumerate(layers):
        on = i >= first and not (freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization))
        layer.trainable = on
        trainable += bool(on and layer.weights)
    return trainable


# -- export ------------------------------------------------------------------------------

def network_probabilities(net, images, batch_size: int = 16):
    """Single-view class probabilities, softmax of the logits layer in float64 (as the
    submission checks compute them from a zip's networks)."""
    import keras
    import numpy as np

    logits = keras.Model(net.input, net.get_layer("logits").output)
    z = np.concatenate([np.asarray(logits(images[i:i + batch_size].astype("float32"), training=False), np.float64)
                        for i in range(0, len(images), batch_size)])
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


@contextlib.contextmanager
def float32_policy():
    """Build under the float32 policy within the block: model.py runs in float32 whatever
    the training policy (mixed_float16 on GPUs), and so does the augmentation."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def reference_probabilities(model, spec: dict, images):
    """The training model's probabilities; a mixed-precision model is evaluated as its
    float32 twin (same graph, same variables), the computation model.py will run."""
    if all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in model.layers):
        return network_probabilities(model, images)
    with float32_policy():
        twin = shipped_model_module().build_network(spec)
    twin.set_weights(model.get_weights())
    finalize_states(twin)
    return network_probabilities(twin, images)


def check_rebuild(spec: dict, weights_path, images, reference, where, save_to=None) -> float:
    """Rebuild as model.py does, load the written weights, compare with `reference`; with
    `save_to`, write the rebuilt network's weights there (the network alone: a compiled
    training model's file also holds its optimizer's state)."""
    import numpy as np

    with float32_policy():
        rebuilt = shipped_model_module().build_network(spec)
        rebuilt.load_weights(str(weights_path))
        diff = float(np.abs(network_probabilities(rebuilt, images) - reference).max())
    if not diff <= REFERENCE_TOLERANCE:
        raise UserError(f"{where}: export: the network model.py rebuilds from it differs from the training "
                        f"model by max |dp| = {diff:.3g} on {len(images)} probe images (tolerance "
                        f"{REFERENCE_TOLERANCE:g}); not exported (a graph that depends on how it was built)")
    if save_to is not None:
        rebuilt.save_weights(str(save_to))
    return diff


def export(model, spec: dict, out_dir) -> Path:
    """Write `out_dir/model.json` + `out_dir/model.weights.h5` (contract 1). The pair is
    written in a temporary sibling folder, rebuilt as model.py will rebuild it and checked
    against the training model (whose probabilities on the validator's probe images are
    stored in model.json as "reference"), then swapped into place, so a reader never sees
    a half-written or unfaithful export or a json without its weights."""

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    probe = probe_images(PROBE_IMAGES)
    reference = reference_probabilities(model, spec, probe)
    spec = {**spec, "format": SPEC_FORMAT, "weights_file": "model.weights.h5",
            "reference": {"probe_images": PROBE_IMAGES, "probs": reference.tolist()}}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    old = None
    try:
        model.save_weights(str(tmp / "training.weights.h5"))
        check_rebuild(spec, tmp / "training.weights.h5", probe, reference, out_dir, save_to=tmp / "model.weights.h5")
        os.remove(tmp / "training.weights.h5")
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
    if not isinstance(spec, dict) or spec.get("format") not in (SPEC_FORMAT, LEGACY_FORMAT):
        found = spec.get("format") if isinstance(spec, dict) else spec
        raise UserError(f"{path}: format: expected \"{SPEC_FORMAT}\", got {found!r}")
    if spec["format"] == LEGACY_FORMAT and shipped_model_module().build_dependent(str(spec.get("backbone", ""))):
        raise UserError(f"{path}: format: {LEGACY_FORMAT} export of {spec['backbone']}, whose network may differ "
                        f"from the trained one; re-export it: train it again with the current bloodcells (--export)")
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
    _load_weights_file(net, weights)
    return net, spec


def _load_weights_file(net, weights) -> None:
    try:
        net.load_weights(str(weights))
    except Exception as exc:  # Keras raises several types for a mismatched file
        raise UserError(f"{weights}: weights: do not fit the network in model.json "
                        f"({' '.join(str(exc).split())[:160]})") from None


# the model.json fields that decide the network (and so whether weights fit it)
NETWORK_FIELDS = ("backbone", "backbone_options", "input_size", "resize_to", "num_classes", "head", "pretrained")


def load_into(net, spec: dict, folder) -> None:
    """Start `net` (built from `spec`) from an exported model's weights: model.init_from.
    The export must describe the same network, field by field (a network can depend on
    how it was built, not only on its weights)."""
    other, weights = read_export(folder)
    for key in NETWORK_FIELDS:
        if other.get(key) != spec.get(key):
            raise UserError(f"{Path(folder) / 'model.json'}: {key}: {other.get(key)!r}; expected the config's "
                            f"{spec.get(key)!r} (model.init_from must be the same network)")
    _load_weights_file(net, weights)
