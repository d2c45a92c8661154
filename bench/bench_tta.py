"""TTA cost in model.py: `predict` with N views against N plain forward passes of the same
network on the same images, and peak memory (RSS) against the number of images.

    PYTHONPATH=. python bench/bench_tta.py                      # EfficientNetB7, CPU (~10 min)
    PYTHONPATH=. python bench/bench_tta.py --backbone efficientnetb0 --images 64

Prints figures; asserts nothing. Weights are untrained (`weights=None`): speed and memory
do not depend on their values. Throughput: both paths use the same compiled network and
the same rows per call (Model.batch_size); each is timed `--rounds` times in ABBA order
and the totals are compared (the machine is shared, so timings are pessimistic).
Memory: each point is a fresh process; images are made batch by batch inside `predict`'s
caller only as a numpy array (the caller's X is part of RSS, so it is reported apart)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shipped_model(backbone: str, folder: Path, views: int, widths=None):
    """Export an untrained `backbone`, stage it like a submission, import its model.py."""
    import importlib.util

    from bloodcells.submission import export_tiny, export_untrained, stage

    export = folder / "export"
    if not (export / "model.json").is_file():
        if backbone == "small_cnn":
            export_tiny(export, name=backbone, backbone_options={"widths": widths or [8, 16]})
        else:
            export_untrained(export, name=backbone, backbone=backbone)
    staged = folder / f"staged_{views}"
    if not (staged / "model.py").is_file():
        stage([export], staged, tta=views)
    spec = importlib.util.spec_from_file_location("bench_shipped_model", staged / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Model()


def images(n: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux
    that survives exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(args, folder: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    t = time.perf_counter()
    m = shipped_model(args.backbone, folder, args.views)
    load_s = time.perf_counter() - t
    net = m.members[0]["network"]
    rows = m.batch_size
    X = images(args.images)

    @tf.function(input_signature=[tf.TensorSpec([None, 96, 96, 3], tf.float32)])
    def plain(x):
        return net(x, training=False)

    def run_plain():  # N plain passes over the same images, `rows` images per call
        out = None
        for _ in range(args.views):
            out = [plain(tf.constant(X[s:s + rows].astype(np.float32))).numpy() for s in range(0, len(X), rows)]
        return out

    def run_tta():
        return m.predict_proba(X)

    t = time.perf_counter()
    m.predict_proba(X[:2])
    plain(tf.constant(X[:2].astype(np.float32)))
    warm_s = time.perf_counter() - t
    # ABBA order (tta, plain, plain, tta, ...) so a load that drifts during the run
    # (other people's jobs on this machine) weighs on both paths alike; totals compared.
    total = {"tta": 0.0, "plain": 0.0}
    for r in range(args.rounds):
        order = (("tta", run_tta), ("plain", run_plain))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t
            total[name] += elapsed
            print(f"  round {r + 1} {name:5s}: {args.images * args.views / elapsed:7.1f} network rows/s "
                  f"({elapsed:.1f} s)", flush=True)
    best = {k: v / args.rounds for k, v in total.items()}  # mean seconds per pass over the images
    ratio = best["plain"] / best["tta"]
    return {"load_s": load_s, "warmup_s": warm_s, "tta_rows_per_s": args.images * args.views / best["tta"],
            "plain_rows_per_s": args.images * args.views / best["plain"],
            "tta_images_per_s": args.images / best["tta"], "ratio": ratio,
            "tracings": m._forward.experimental_get_tracing_count(), "rows_per_call": rows,
            "images_per_call": max(1, rows // args.views)}


def memory_child(args) -> None:
    """One memory point, in its own process: model loaded, then predict on n images."""
    folder = Path(args.folder)
    m = shipped_model(args.backbone, folder, args.views, args.widths)
    X = images(args.n)
    base = peak_rss_mb()
    t = time.perf_counter()
    p = m.predict_proba(X)
    elapsed = time.perf_counter() - t
    print(json.dumps({"n": args.n, "peak_mb": peak_rss_mb(), "before_predict_peak_mb": base,
                      "x_mb": X.nbytes / 2**20, "seconds": elapsed, "rows": p.shape[0]}))


def memory(backbone, views, ns, folder: Path, widths=None) -> list:
    points = []
    for n in ns:
        cmd = [sys.executable, __file__, "--memory-child", "--backbone", backbone, "--views", str(views),
               "--n", str(n), "--folder", str(folder)]
        if widths:
            cmd += ["--widths", *map(str, widths)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        if out.returncode:
            raise SystemExit(f"memory run n={n} failed:\n{out.stderr[-2000:]}")
        point = json.loads(out.stdout.strip().splitlines()[-1])
        points.append(point)
        print(f"  {backbone} views={views} n={n:6d}: peak RSS {point['peak_mb']:7.0f} MB "
              f"(of which X {point['x_mb']:.0f} MB; before predict {point['before_predict_peak_mb']:.0f} MB), "
              f"predict {point['seconds']:.0f} s", flush=True)
    return points


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnetb7")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--images", type=int, default=64, help="images for the throughput comparison")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per path, in ABBA order")
    ap.add_argument("--memory-n", type=int, nargs="*", default=[64, 256],
                    help="image counts for peak RSS with --backbone and --views")
    ap.add_argument("--stream-backbone", default="small_cnn",
                    help="cheap network for the RSS-vs-n series up to 20,000 images")
    ap.add_argument("--stream-n", type=int, nargs="*", default=[1000, 5000, 20000])
    ap.add_argument("--stream-views", type=int, default=1,
                    help="views for the RSS-vs-n series (streaming does not depend on it; 1 keeps it short)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--widths", type=int, nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)

    import tensorflow as tf

    print(f"bench_tta: {args.backbone} (untrained), {args.views} views, TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPUs (shared: timings pessimistic)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_tta_") as tmp:
        big = Path(tmp) / args.backbone
        big.mkdir()
        if not args.skip_throughput:
            print(f"throughput on {args.images} images:", flush=True)
            r = throughput(args, big)
            print(f"  Model() {r['load_s']:.1f} s, first call (trace) {r['warmup_s']:.1f} s; "
                  f"{r['rows_per_call']} rows per call = {r['images_per_call']} images x {args.views} views; "
                  f"traced {r['tracings']}x")
            print(f"  plain x{args.views}: {r['plain_rows_per_s']:.1f} rows/s | TTA predict: "
                  f"{r['tta_rows_per_s']:.1f} rows/s = {r['tta_images_per_s']:.2f} images/s | "
                  f"TTA / plain = {r['ratio']:.1%} (target >= 90%)", flush=True)
        if args.skip_memory:
            return
        print(f"peak RSS, {args.backbone}, {args.views} views (fresh process per point):", flush=True)
        heavy = memory(args.backbone, args.views, args.memory_n, big)
        small = Path(tmp) / "stream"
        small.mkdir()
        print(f"peak RSS vs n, {args.stream_backbone} (widths 8), {args.stream_views} view(s): "
              f"does memory grow with n?", flush=True)
        stream = memory(args.stream_backbone, args.stream_views, args.stream_n, small, widths=[8])
    growth = [(p["peak_mb"] - p["x_mb"]) - (stream[0]["peak_mb"] - stream[0]["x_mb"]) for p in stream]
    print(f"  peak RSS minus X, relative to n={stream[0]['n']}: "
          + ", ".join(f"n={p['n']}: {g:+.0f} MB" for p, g in zip(stream, growth)))
    worst = max(heavy, key=lambda p: p["peak_mb"] - p["x_mb"])
    x20k = 20000 * 96 * 96 * 3 / 2**20
    estimate = worst["peak_mb"] - worst["x_mb"] + x20k + max(growth)
    print(f"estimate for {args.backbone}, {args.views} views, 20,000 images: {worst['peak_mb'] - worst['x_mb']:.0f} MB "
          f"(working set) + {x20k:.0f} MB (X, uint8) + {max(growth):.0f} MB (growth with n) = {estimate:.0f} MB "
          f"(target < 4096 MB)")


if __name__ == "__main__":
    main()
