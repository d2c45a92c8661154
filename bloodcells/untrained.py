"""UNTRAINED exports in contract-1 layout (model.json + model.weights.h5), so the
submission path can be exercised without training: tests, CI (`make server-check-tiny`)
and size/speed checks. Trained exports are written by bloodcells.train.

    python -m bloodcells.untrained --out DIR [--backbone small_cnn] [--widths 8 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bloodcells.cli import run_cli
from bloodcells.network import export, make_spec, shipped_model_module


def default_spec(**overrides) -> dict:
    """A complete contract-1 model.json dict for a small CNN; `overrides` replace top-level keys."""
    spec = make_spec({"backbone": "small_cnn"}, name="model", source_run="untrained")
    spec.update(overrides)
    return spec


def export_untrained(folder, seed: int = 0, logit_scale: float = 1.0, **overrides) -> Path:
    """Write an UNTRAINED network in contract-1 layout (tests, CI, size/speed checks).
    Trained exports are written by bloodcells.train; this only exists so the submission
    path can be exercised without training. `logit_scale` multiplies the last layer's
    weights: an untrained network's probabilities are nearly uniform, which would hide
    the differences tests look for."""
    import keras

    spec = default_spec(**overrides)
    keras.utils.set_random_seed(seed)
    net = shipped_model_module().build_network(spec)
    if logit_scale != 1.0:
        layer = net.get_layer("logits")
        layer.set_weights([w * logit_scale for w in layer.get_weights()])
    return export(net, spec, folder)


TINY_BACKBONE = {"residual": True, "stem_stride": 2, "input_norm": "image"}


def export_tiny(folder, seed: int = 0, **overrides) -> Path:
    """An untrained tiny small_cnn export (logits scaled up so its probabilities are far
    from uniform): fast enough for tests and CI."""
    overrides.setdefault("logit_scale", 20.0)
    # the CPU recipe's layers in miniature (residual blocks, subsampling shortcut, input
    # standardisation), so server checks exercise what configs/cpu_scratch.toml ships
    overrides.setdefault("backbone_options", dict(TINY_BACKBONE, widths=[8, 16]))
    overrides.setdefault("head", dict(shipped_model_module().DEFAULT_HEAD, dense_units=16))
    return export_untrained(folder, seed=seed, **overrides)


def export_main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bloodcells.untrained", description=(
        "Write an UNTRAINED model in export layout (model.json + model.weights.h5): to exercise "
        "the submission path (CI, size and speed checks) without training."))
    ap.add_argument("--out", type=Path, required=True, help="folder to write")
    ap.add_argument("--backbone", default="small_cnn", help="small_cnn (tiny, default) or e.g. efficientnetb7")
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16], help="small_cnn widths (default 8 16)")
    ap.add_argument("--name", default="untrained")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.backbone == "small_cnn":
        folder = export_tiny(args.out, seed=args.seed, name=args.name,
                             backbone_options=dict(TINY_BACKBONE, widths=args.widths))
    else:
        folder = export_untrained(args.out, seed=args.seed, name=args.name, backbone=args.backbone)
    print(folder)




if __name__ == "__main__":
    run_cli(export_main)()
