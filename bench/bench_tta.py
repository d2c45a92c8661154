"""TTA against its limit: `Model.predict_proba` with N views against N plain forward passes
of the same network on the same batches, for EfficientNetB7 and for the CPU
recipe's network (configs/cpu_scratch.toml), best of `--rounds` per path in one process.

    PYTHONPATH=. python bench/bench_tta.py                      # B7 + CPU recipe (~15 min idle)
    PYTHONPATH=. python bench/bench_tta.py --networks cpu --rounds 3 --images 32   # quick
    PYTHONPATH=. python bench/bench_tta.py --baseline 82240e4   # also time model.py of that commit

Prints one table; asserts nothing. Weights are untrained: speed does not depend on their
values. The paths' calls are interleaved batch by batch (batch i of every path, the order
rotating from call to call), so a load that drifts weighs on all paths alike; a path's
figure is its best round (the least disturbed), with the median and the range beside it,
and the median of the per-call TTA / limit ratios, which drift cannot bias. The "limit" path feeds the same
logits network, already-converted float32 tensors, in the same rows per call as the TTA
path: nothing but the network. Idle check: the load average before the run, and the CPU
time other processes used during the timed rounds (from /proc/stat minus this process);
the table says "contended" when either shows other work.

`--memory` adds peak RSS against the number of images (a fresh process per point)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NETWORKS = {"b7": "efficientnetb7", "cpu": "configs/cpu_scratch.toml"}
IDLE_LOAD = 0.5  # 1-minute load average per core above which the machine counts as busy before the run
IDLE_OTHERS = 0.10  # share of all cores other processes may use during the timed rounds


# -- the models ----------------------------------------------------------------------------------

def export_network(which: str, folder: Path, widths=None) -> Path:
    """An untrained export of `which` (b7, cpu, tiny, or a backbone name)."""
    from bloodcells.untrained import TINY_BACKBONE, export_tiny, export_untrained

    if (folder / "model.json").is_file():
        return folder
    if which == "cpu":
        model = tomllib.loads((REPO / NETWORKS["cpu"]).read_text())["model"]
        return export_untrained(folder, name="cpu_recipe", backbone=model["backbone"],
                                backbone_options=model["backbone_options"], head=model["head"])
    if which == "tiny":  # the test suite's untrained tiny export
        return export_tiny(folder, name="tiny")
    if which == "small_cnn":
        return export_tiny(folder, name="small_cnn", backbone_options=dict(TINY_BACKBONE, widths=widths or [8]))
    backbone = NETWORKS.get(which, which)
    return export_untrained(folder, name=backbone, backbone=backbone)


def load_model(export: Path, folder: Path, views: int, model_py: Path | None = None):
    """Stage `export` as a submission with `views` TTA views and import its model.py
    (as the server does); `model_py` replaces the current one (e.g. an older commit's)."""
    from bloodcells.submission import MODEL_PY, stage

    if not (folder / "model.py").is_file():
        stage([export], folder, tta=views, tta_mode="random", tta_merge="softmax_mean_logits",
              model_py=model_py or MODEL_PY)
        if model_py:  # an older model.py reads an older spec format; the network is the same
            match = re.search(r'^SPEC_FORMAT = "([^"]+)"', model_py.read_text(), re.M)
            for spec_file in folder.glob("*.json"):
                spec = json.loads(spec_file.read_text())
                if match and spec.get("format", "").startswith("bloodcells-model/"):
                    spec["format"] = match.group(1)
                    spec_file.write_text(json.dumps(spec))
    spec = importlib.util.spec_from_file_location(f"bench_model_{folder.name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.Model()


def model_py_at(rev: str, folder: Path) -> Path:
    out = folder / f"model_{rev}.py"
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:model.py"], capture_output=True, text=True,
                          check=True).stdout
    out.write_text(text)
    return out


def images(n: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)


# -- the idle check --------------------------------------------------------------------------------

def cpu_counters() -> tuple[float, float]:
    """(busy seconds of all CPUs, busy seconds of this process) since boot."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
    own = os.times()
    return busy / ticks, own.user + own.system


class OtherWork:
    """CPU time used by other processes while the block runs, as a share of all cores."""

    def __enter__(self):
        self.start, self.wall = cpu_counters(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        end = cpu_counters()
        wall = time.perf_counter() - self.wall
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        self.share = max(0.0, others) / (wall * (os.cpu_count() or 1))


# -- throughput --------------------------------------------------------------------------------

def time_paths(paths: dict, rounds: int, rows_per_pass: int, label: str) -> tuple[dict, list, list]:
    """`paths` maps a name to its list of calls (one per batch, the same batches for every
    path). Calls are interleaved - batch i of every path, then batch i + 1 - the order
    rotating from call to call, so a load that drifts within a round weighs on all paths
    alike. Returns {path: [rows/s per round]}, the other processes' CPU share per round and
    the per-call TTA / limit speed ratios."""
    names = list(paths)
    rates = {name: [] for name in names}
    others, call_ratios = [], []
    calls = len(paths[names[0]])
    for r in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        with OtherWork() as work:
            for i in range(calls):
                shift = (r + i) % len(names)
                took = {}
                for name in names[shift:] + names[:shift]:
                    t = time.perf_counter()
                    paths[name][i]()
                    took[name] = time.perf_counter() - t
                    spent[name] += took[name]
                call_ratios.append(took["limit"] / took["tta"])
        for name in names:
            rates[name].append(rows_per_pass / spent[name])
        others.append(work.share)
        print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in names)
              + f" rows/s; other processes {work.share:.0%} of the CPUs", file=sys.stderr, flush=True)
    return rates, others, call_ratios


def throughput(which: str, args, tmp: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    export = export_network(which, tmp / f"export_{which}")
    t = time.perf_counter()
    module, model = load_model(export, tmp / f"staged_{which}", args.views)
    load_s = time.perf_counter() - t
    net = model.members[0]["network"]
    X = images(args.images)
    per_call = max(1, model.batch_size // model.max_views)
    bounds = module.batch_bounds(len(X), per_call) if hasattr(module, "batch_bounds") else \
        [(s, min(s + per_call, len(X))) for s in range(0, len(X), per_call)]
    # the limit: the network alone on the TTA path's rows per call, inputs ready as tensors
    ready = [tf.constant(np.repeat(X[a:b].astype(np.float32), args.views, axis=0)) for a, b in bounds]

    @tf.function(input_signature=[tf.TensorSpec([None, 96, 96, 3], tf.float32)], autograph=False)
    def plain(x):
        return net(x, training=False)

    # one call per batch: the TTA path's predict_proba on that batch does what predict_proba(X)
    # does per batch, plus its input check (so the TTA figure is, if anything, pessimistic)
    paths = {"limit": [lambda x=x: plain(x).numpy() for x in ready],
             "tta": [lambda a=a, b=b: model.predict_proba(X[a:b]) for a, b in bounds]}
    if args.baseline:
        _, old = load_model(export, tmp / f"staged_{which}_{args.baseline}", args.views,
                            model_py_at(args.baseline, tmp))
        paths[f"tta@{args.baseline}"] = [lambda a=a, b=b: old.predict_proba(X[a:b]) for a, b in bounds]
    t = time.perf_counter()
    for calls in paths.values():  # trace and warm every path (and every batch shape) before timing
        for call in calls:
            call()
    warm_s = time.perf_counter() - t
    rates, others, call_ratios = time_paths(paths, args.rounds, args.images * args.views, which)
    paired = [t / l for t, l in zip(rates["tta"], rates["limit"])]
    return {"network": which, "backbone": model.members[0]["spec"]["backbone"], "load_s": load_s,
            "warm_s": warm_s, "rates": rates, "others": others, "paired": paired,
            "call_ratio_median": statistics.median(call_ratios),
            "rows_per_call": [(b - a) * args.views for a, b in bounds],
            "tracings": model._forward.experimental_get_tracing_count()}


def table(results: list, args, load_before: float) -> str:
    cores = os.cpu_count() or 1
    busy_before = load_before / cores > IDLE_LOAD
    lines = ["| network | path | best rows/s | median | range | images/s (best) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for path, v in r["rates"].items():
            name = {"limit": f"limit: {args.views} plain passes", "tta": f"TTA {args.views} views (model.py)"}.get(path) \
                or f"TTA {args.views} views (model.py at {path.split('@')[1]})"
            lines.append(f"| {r['network']} ({r['backbone']}) | {name} | {max(v):.1f} | {statistics.median(v):.1f} | "
                         f"{min(v):.1f}-{max(v):.1f} | {max(v) / args.views:.2f} |")
    lines.append("")
    for r in results:
        best = max(r["rates"]["tta"]) / max(r["rates"]["limit"])
        extra = "".join(f"; {p.split('@')[1]}'s TTA / limit {max(v) / max(r['rates']['limit']):.1%}"
                        for p, v in r["rates"].items() if "@" in p)
        busy = max(r["others"]) > IDLE_OTHERS
        lines.append(f"{r['network']}: TTA / limit = {best:.1%} best of {args.rounds} (per round {min(r['paired']):.1%}"
                     f"-{max(r['paired']):.1%}; median of the per-call ratios {r['call_ratio_median']:.1%}){extra}; rows per call {sorted(set(r['rows_per_call']))}, traced "
                     f"{r['tracings']}x; Model() {r['load_s']:.1f} s, warm-up {r['warm_s']:.1f} s; other processes "
                     f"used {max(r['others']):.0%} of the CPUs at most in a round"
                     + (" -> CONTENDED" if busy else ""))
    contended = busy_before or any(max(r["others"]) > IDLE_OTHERS for r in results)
    lines.append(f"idle check: load average {load_before:.2f} on {cores} cores before the run"
                 + (" (other work running)" if busy_before else "")
                 + (": figures CONTENDED (other work was running), pessimistic and noisy" if contended
                    else ": machine idle"))
    return "\n".join(lines)


# -- memory ------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux
    that survives exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(args) -> None:
    """One memory point, in its own process: model loaded, then predict on n images."""
    folder = Path(args.folder)
    export = export_network(args.network, folder / "export", args.widths)
    _, m = load_model(export, folder / f"staged_{args.views}", args.views)
    X = images(args.n)
    base = peak_rss_mb()
    t = time.perf_counter()
    p = m.predict_proba(X)
    print(json.dumps({"n": args.n, "peak_mb": peak_rss_mb(), "before_predict_peak_mb": base,
                      "x_mb": X.nbytes / 2**20, "seconds": time.perf_counter() - t, "rows": p.shape[0]}))


def memory(network, views, ns, folder: Path, widths=None) -> list:
    points = []
    for n in ns:
        cmd = [sys.executable, __file__, "--memory-child", "--network", network, "--views", str(views),
               "--n", str(n), "--folder", str(folder)] + (["--widths", *map(str, widths)] if widths else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        if out.returncode:
            raise SystemExit(f"memory run n={n} failed:\n{out.stderr[-2000:]}")
        point = json.loads(out.stdout.strip().splitlines()[-1])
        points.append(point)
        print(f"  {network} views={views} n={n:6d}: peak RSS {point['peak_mb']:7.0f} MB "
              f"(of which X {point['x_mb']:.0f} MB; before predict {point['before_predict_peak_mb']:.0f} MB), "
              f"predict {point['seconds']:.0f} s", flush=True)
    return points


def run_memory(args, tmp: Path) -> None:
    heavy_dir = tmp / "memory_b7"
    heavy_dir.mkdir()
    print(f"peak RSS, b7, {args.views} views (fresh process per point):", flush=True)
    heavy = memory("b7", args.views, args.memory_n, heavy_dir)
    small = tmp / "stream"
    small.mkdir()
    print("peak RSS vs n, small_cnn (widths 8), 1 view: does memory grow with n?", flush=True)
    stream = memory("small_cnn", 1, args.stream_n, small, widths=[8])
    growth = [(p["peak_mb"] - p["x_mb"]) - (stream[0]["peak_mb"] - stream[0]["x_mb"]) for p in stream]
    print("  peak RSS minus X, relative to n=%d: " % stream[0]["n"]
          + ", ".join(f"n={p['n']}: {g:+.0f} MB" for p, g in zip(stream, growth)))
    worst = max(heavy, key=lambda p: p["peak_mb"] - p["x_mb"])
    x20k = 20000 * 96 * 96 * 3 / 2**20
    estimate = worst["peak_mb"] - worst["x_mb"] + x20k + max(growth)
    print(f"estimate for b7, {args.views} views, 20,000 images: {estimate:.0f} MB (target < 4096 MB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", nargs="+", default=["b7", "cpu"],
                    help="b7 (EfficientNetB7), cpu (configs/cpu_scratch.toml's network) or a backbone name")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--images", type=int, default=64, help="images per timed pass")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per path (best of these)")
    ap.add_argument("--baseline", help="also time model.py of this git revision (e.g. 82240e4)")
    ap.add_argument("--memory", action="store_true", help="add peak RSS vs number of images")
    ap.add_argument("--memory-n", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--stream-n", type=int, nargs="*", default=[1000, 5000, 20000])
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--network", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--widths", type=int, nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)
    load_before = os.getloadavg()[0]

    import tensorflow as tf

    print(f"bench_tta: {', '.join(args.networks)} (untrained), {args.views} views, {args.images} images, "
          f"best of {args.rounds} rounds, TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"load average {load_before:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_tta_") as tmp:
        tmp = Path(tmp)
        results = [throughput(which, args, tmp) for which in args.networks]
        print(table(results, args, load_before), flush=True)
        if args.memory:
            run_memory(args, tmp)


if __name__ == "__main__":
    main()
