"""Calibrate the second opinion: does the plain CNN without augmentation lose at least as
much under `second_opinion` (albumentations, bloodcells.second_opinion) as under our own
`server` profile? Runs zips through local_eval.py on the real val split under none,
server and second_opinion, and prints accuracies with 95 % Wilson intervals, plus the
second opinion's accuracy per family and per severity (from predictions.csv).

  python bench/bench_second_opinion.py                 # bench_shift_gap's quick_plain model
  python bench/bench_second_opinion.py --zips A.zip B.zip

The default model is bench_shift_gap.py's quick_plain (trained here when missing:
`--epochs 6 --widths 16,32,64,128`, as measured in bench/RESULTS.md). Figures are printed,
not asserted; outputs go to build/bench_second_opinion/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
OUT = REPO / "build" / "bench_second_opinion"

from bloodcells.shift import decode_ops  # noqa: E402  (after the path above)
PROFILES = ("none", "server", "second_opinion")


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def evaluate(zip_path: Path, data: Path, split: str, seed: int) -> Path:
    command = [sys.executable, str(REPO / "local_eval.py"), str(zip_path), "--data", str(data), "--split", split,
               "--seed", str(seed), "--profile", *PROFILES, "--eval-dir", str(OUT / "eval"),
               "--leaderboard-file", str(OUT / "leaderboard.csv"), "--cache-dir", str(REPO / "build" / "shift_cache")]
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return OUT / "eval" / zip_path.stem


def per_family(predictions_csv: Path):
    families, severities = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    with open(predictions_csv) as fh:
        for row in csv.DictReader(fh):
            ok = int(row["correct"])
            steps = decode_ops(row["shift"])
            for family, severity in steps:
                families[family][0] += ok
                families[family][1] += 1
            worst = max(s for _, s in steps) if steps else 0
            severities[worst][0] += ok
            severities[worst][1] += 1
    return families, severities


def main(argv=None):
    import bench_shift_gap

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zips", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=bench_shift_gap.DATA)
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--widths", default="16,32,64,128")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: real data not found at {args.data}")
        return 0
    zips = args.zips
    if not zips:
        widths = tuple(int(w) for w in args.widths.split(","))
        export = bench_shift_gap.quick_train("quick_plain", False, args.epochs, args.data, args.seed, widths)
        zips = [bench_shift_gap.build_zip(export, OUT / "zips" / "quick_plain.zip")]
    for zip_path in zips:
        folder = evaluate(Path(zip_path), args.data, args.split, args.seed)
        print(f"\n== {Path(zip_path).name} on {args.data.name}[{args.split}], seed {args.seed}")
        print(f"{'profile':<16} {'accuracy':>9}  95 % interval    images")
        for profile in PROFILES:
            m = json.loads((folder / profile / "metrics.json").read_text())
            if m["status"] != "ok":
                print(f"{profile:<16} failed: {m['status']}")
                continue
            hits, n = round(m["accuracy"] * m["n"]), m["n"]
            lo, hi = wilson(hits, n)
            print(f"{profile:<16} {100 * m['accuracy']:8.2f} %  [{100 * lo:5.1f}, {100 * hi:5.1f}]  {n}")
        predictions = folder / "second_opinion" / "predictions.csv"
        if predictions.exists():
            families, severities = per_family(predictions)
            print("\nsecond_opinion, accuracy of the images each family touched:")
            for family, (hits, n) in sorted(families.items(), key=lambda kv: kv[1][0] / kv[1][1]):
                print(f"  {family:<20} {100 * hits / n:6.1f} %  (n={n})")
            print("second_opinion, by the strongest severity in the image's plan:")
            for severity, (hits, n) in sorted(severities.items()):
                print(f"  severity {severity}: {100 * hits / n:6.1f} %  (n={n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
