"""A stand-in for the ImageNet weights download, at Keras's own boundary.

keras.applications fetch their weights with `keras.src.utils.file_utils.get_file(name,
url, cache_subdir="models", file_hash=...)` and load the returned `.h5` (the legacy h5
format). `serve_standin_weights()` replaces only that call: it generates a weights file
of the requested architecture locally (built with weights=None, every constant-initialised
variable given distinct non-trivial values, the stem Normalization given ImageNet's
statistics like the real files) so `weights="imagenet"` runs everything else for real.

    python tests/standin_weights.py b7 --out build/b7_standin   # the B7 one-off (see README)
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import numpy as np

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_VARIANCE = [0.229 ** 2, 0.224 ** 2, 0.225 ** 2]

# keras.applications' no-top weight file names -> constructor
_FILES = (
    (r"efficientnetb([0-7])_notop\.h5", lambda m: f"EfficientNetB{m[1]}"),
    (r"efficientnetv2-(b[0-3]|s|m|l)_notop\.h5", lambda m: f"EfficientNetV2{m[1].upper()}"),
    (r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1\.0_\d+_no_top\.h5", lambda m: "MobileNetV2"),
    (r"resnet(50|101|152)_weights_tf_dim_ordering_tf_kernels_notop\.h5", lambda m: f"ResNet{m[1]}"),
    (r"convnext_(tiny|small|base|large|xlarge)_notop\.h5",
     lambda m: "ConvNeXt" + {"xlarge": "XLarge"}.get(m[1], m[1].capitalize())),
)


def constructor_for(file_name: str) -> str:
    for pattern, name in _FILES:
        match = re.fullmatch(pattern, file_name)
        if match:
            return name(match)
    raise ValueError(f"stand-in weights: no architecture known for {file_name}")


def write_standin(file_name: str, path: Path, size: int = 64) -> Path:
    """A legacy-h5 weights file for `file_name`'s architecture with seeded, distinct values."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    seed = int(hashlib.sha256(file_name.encode()).hexdigest()[:8], 16)
    keras.utils.set_random_seed(seed % 2**31)
    rng = np.random.default_rng(seed)
    net = getattr(keras.applications, constructor_for(file_name))(
        include_top=False, weights=None, input_shape=(size, size, 3))
    for layer in net.layers:
        for var in layer.weights:
            value = np.asarray(var.numpy())
            if value.dtype.kind != "f":
                continue
            if isinstance(layer, keras.layers.Normalization):
                value = np.asarray(IMAGENET_MEAN if var.name.endswith("mean") else IMAGENET_VARIANCE
                                   if var.name.endswith("variance") else value, value.dtype).reshape(value.shape)
            elif "variance" in var.name:
                value = rng.uniform(0.5, 1.5, value.shape)
            elif value.size and np.all(value == value.flat[0]):  # zeros, ones, 1e-6 layer scales
                value = (rng.normal(0.0, 0.05, value.shape) if value.flat[0] == 0
                         else value * rng.uniform(0.7, 1.3, value.shape))
            var.assign(value.astype(var.dtype))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, net)
    return path


@contextlib.contextmanager
def serve_standin_weights(folder, calls=None):
    """Within the block, keras.applications' weight downloads return stand-in files from
    `folder` (generated once per file name). `calls` (a list) records the names asked for."""
    from keras.src.utils import file_utils

    real = file_utils.get_file
    folder = Path(folder)

    def fake_get_file(fname=None, origin=None, *args, **kwargs):
        if calls is not None:
            calls.append(fname)
        path = folder / fname
        if not path.is_file():
            write_standin(fname, path)
        return str(path)

    file_utils.get_file = fake_get_file
    try:
        yield folder
    finally:
        file_utils.get_file = real


def b7_main(argv=None):
    """The B7 one-off: configs/b7_reference.toml through the real `imagenet` path (stand-in
    download), one training step on a few images, exported; then build and server-check
    the zip (printed commands). float32 on a CPU (mixed_float16 is for GPUs)."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bloodcells import train

    ap = argparse.ArgumentParser(description=b7_main.__doc__)
    ap.add_argument("--out", type=Path, default=Path("build/b7_standin"))
    ap.add_argument("--data", default="../shared/data/pbc96_dev.npz")
    ap.add_argument("--mixed", action="store_true", help="keep the config's mixed_float16")
    args = ap.parse_args(argv)
    overrides = {"data.max_train": 16, "data.max_val": 8, "train.batch_size": 8, "train.steps_per_epoch": 1,
                 "train.eval_batch_size": 8, "phase1.epochs": 1, "phase2.epochs": 0}
    if not args.mixed:
        overrides["train.mixed_precision"] = False
    cfg = train.load_config(Path(__file__).resolve().parents[1] / "configs" / "b7_reference.toml", overrides)
    with serve_standin_weights(args.out / "standin"):
        train.Trainer(cfg, args.data, args.out / "run", args.out / "export").run()
    print(args.out / "export")


if __name__ == "__main__":
    b7_main()
