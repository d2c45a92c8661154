"""Faster CPU inference, proven equal: model.py's networks under Keras's mixed_bfloat16 policy against float32
(and an XLA-compiled forward pass against the plain one), side by side in one process,
best of `--rounds`, and the agreement with float32 on a real test split.

    PYTHONPATH=. python bench/bench_inference.py --networks tiny cpu b7 \\
        --export /work/main/weights/bench_cpu_pbc_s0 --data ../shared/data/pbc96_dev.npz --split val

Networks: tiny (bloodcells.untrained.export_tiny), cpu (configs/cpu_scratch.toml's network,
untrained), b7 (EfficientNetB7, untrained), plus each trained `--export`. Speed on
`--images` random images, 1 view; agreement on `--agreement-images` images of the split
(0 = all; b7 skips it unless --b7-agreement): labels identical on N of M, max |dp|.
Prints one table; asserts nothing. Idle check as in bench_tta.py."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_tta import IDLE_LOAD, IDLE_OTHERS, export_network, images, time_paths  # noqa: E402


def staged_model(export: Path, folder: Path, precision: str):
    """model.py's Model with its networks built under `precision`'s Keras dtype policy
    (model.py itself always builds float32: bfloat16 was not kept, bench/RESULTS.md)."""
    import importlib.util

    import keras

    from bloodcells.submission import stage

    stage([export], folder, tta=1)
    spec = importlib.util.spec_from_file_location(f"bench_inference_{folder.name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy({"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision])
    try:
        return module.Model()
    finally:
        keras.config.set_dtype_policy(previous)


def compare(name: str, export: Path, args, tmp: Path, real) -> dict:
    import numpy as np
    import tensorflow as tf

    f32 = staged_model(export, tmp / f"{name}_f32", "float32")
    bf16 = staged_model(export, tmp / f"{name}_bf16", "bfloat16")
    layers = bf16.members[0]["network"].layers
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in layers), "bfloat16 policy not applied"
    X = images(args.images)
    net = f32.members[0]["network"]
    ready = [tf.constant(X[s:s + f32.batch_size].astype(np.float32)) for s in range(0, len(X), f32.batch_size)]
    sig = [tf.TensorSpec([None, 96, 96, 3], tf.float32)]
    plain = tf.function(lambda x: net(x, training=False), input_signature=sig, autograph=False)
    xla = tf.function(lambda x: net(x, training=False), jit_compile=True, autograph=False)
    paths = {"float32": lambda: f32.predict_proba(X), "bfloat16": lambda: bf16.predict_proba(X)}
    if args.xla and name != "b7":  # XLA's compile of B7 on 2 cores takes minutes per batch shape
        paths.update({"network": lambda: [plain(x).numpy() for x in ready],
                      "network_xla": lambda: [xla(x).numpy() for x in ready]})
    t = time.perf_counter()
    for fn in paths.values():
        fn()
    warm = time.perf_counter() - t
    rates, others = time_paths(paths, args.rounds, args.images, name)
    row = {"name": name, "rates": rates, "others": others, "warm_s": warm}
    if real is not None and (name != "b7" or args.b7_agreement):
        p32, p16 = f32.predict_proba(real), bf16.predict_proba(real)
        row.update(same=int((p32.argmax(1) == p16.argmax(1)).sum()), of=len(real),
                   max_dp=float(np.abs(p32 - p16).max()))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", nargs="*", default=["tiny", "cpu", "b7"])
    ap.add_argument("--export", nargs="*", type=Path, default=[], help="trained export folders to compare too")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc96_dev.npz")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=128, help="images per timed pass (1 view)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--agreement-images", type=int, default=0, help="images of the split (0 = all)")
    ap.add_argument("--b7-agreement", action="store_true")
    ap.add_argument("--no-xla", dest="xla", action="store_false")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    real = None
    if args.data.is_file():
        from bloodcells.data import load_dataset

        real = load_dataset(args.data, args.split).images
        real = real[:args.agreement_images] if args.agreement_images else real
    else:
        print(f"{args.data} not found: speed only, no agreement", flush=True)
    import tensorflow as tf

    print(f"bench_inference: TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {load_before:.2f}, "
          f"best of {args.rounds}, {args.images} images per pass, agreement on "
          f"{len(real) if real is not None else 0} {args.split} images", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        tmp = Path(tmp)
        for name in args.networks:
            rows.append(compare(name, export_network(name, tmp / f"export_{name}"), args, tmp, real))
        for export in args.export:
            rows.append(compare(export.name, export, args, tmp, real))
    print("| network | path | best images/s | median | range | labels same as float32 | max abs dp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for path, v in r["rates"].items():
            agree = (f"{r['same']} of {r['of']}", f"{r['max_dp']:.2g}") if path == "bfloat16" and "same" in r \
                else ("", "")
            print(f"| {r['name']} | {path} | {max(v):.1f} | {statistics.median(v):.1f} | {min(v):.1f}-{max(v):.1f} "
                  f"| {agree[0]} | {agree[1]} |")
    for r in rows:
        best = {k: max(v) for k, v in r["rates"].items()}
        xla = f", XLA / plain network {best['network_xla'] / best['network']:.2f}x" if "network_xla" in best else ""
        print(f"{r['name']}: bfloat16 / float32 {best['bfloat16'] / best['float32']:.2f}x{xla}; other processes up to "
              f"{max(r['others']):.0%} of the CPUs" + (" -> CONTENDED" if max(r["others"]) > IDLE_OTHERS else ""))
    busy = load_before / (os.cpu_count() or 1) > IDLE_LOAD or any(max(r["others"]) > IDLE_OTHERS for r in rows)
    print("idle check: " + ("figures CONTENDED (other work was running)" if busy else "machine idle"))


if __name__ == "__main__":
    main()
