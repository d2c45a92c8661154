"""Evaluate a submission zip like the competition server, on a distribution-shifted
local test, and keep a local leaderboard.

  python local_eval.py ZIP --data TEST [--split S] [--profile none server sweep]
                       [--seed 0] [--time-limit 600]
  python local_eval.py --record-server ZIP SCORE     # what the real server said
  python local_eval.py --leaderboard                  # ranking + which local score to trust

Per profile (default: none and server) the zip runs in a separate process from another
working directory (bloodcells.ingestion), its predictions file is scored
(bloodcells.scoring) and written as submission/eval/<zip name>/<profile>/scores.json
with figures; submission/eval/<zip name>/report.html shows them together, and
submission/leaderboard.csv gets the zip's row. Shifted sets are cached in
build/shift_cache so every submission meets the same images.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from bloodcells import leaderboard as board
from bloodcells import shift
from bloodcells.cli import UserError, run_cli
from bloodcells.data import load_dataset
from bloodcells.evaluate import (CACHE_DIR, DEFAULT_PROFILES, EVAL_DIR, LEADERBOARD, SWEEP_IMAGES,
                                 data_fingerprint, evaluate_profile, evaluate_sweep, held_out_split,
                                 leaderboard_row, shift_code, write_report)
from bloodcells.files import sha256_file
from bloodcells.ingestion import DEFAULT_TIME_LIMIT, check_zip


# -- command line ---------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python local_eval.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zip", nargs="?", help="submission zip to evaluate")
    parser.add_argument("--data", help="labelled test data (any format bloodcells.data reads)")
    parser.add_argument("--split", default=None, help="MedMNIST split (default: test, else val)")
    parser.add_argument("--profile", nargs="+", default=list(DEFAULT_PROFILES),
                        help=f"shift profiles among {', '.join(shift.PROFILES)} (default: none server)")
    parser.add_argument("--seed", type=int, default=0, help="shift seed (default 0)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                        help="seconds for Model() + predict, as on the server (default 600)")
    parser.add_argument("--sweep-images", type=int, default=SWEEP_IMAGES,
                        help=f"images per sweep set (class-stratified subset, default {SWEEP_IMAGES})")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the submission (e.g. a venv with the server's TensorFlow)")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--leaderboard-file", type=Path, default=LEADERBOARD)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--refresh-shift", action="store_true", help="rebuild cached shifted sets")
    parser.add_argument("--record-server", nargs=2, metavar=("ZIP", "SCORE"),
                        help="store the accuracy the real server gave ZIP")
    parser.add_argument("--leaderboard", action="store_true", help="print the local leaderboard")
    return parser.parse_args(argv)


@run_cli
def main(argv=None):
    args = parse_args(argv)
    if args.record_server:
        return record_server(args)
    if args.leaderboard and not args.zip:
        print(board.format_leaderboard(board.read_rows(args.leaderboard_file)), end="")
        return 0
    if not args.zip:
        raise UserError("ZIP: missing; expected a submission zip (make submission builds one), "
                        "or --leaderboard / --record-server ZIP SCORE")
    if not args.data:
        raise UserError("--data: missing; expected a labelled held-out test set, e.g. "
                        "--data ../shared/data/pbc96_dev.npz")
    bad = [p for p in args.profile if p not in shift.PROFILES]
    if bad:
        raise UserError(f"--profile: unknown '{bad[0]}'; expected some of {', '.join(shift.PROFILES)}")
    if args.time_limit <= 0:
        raise UserError(f"--time-limit: {args.time_limit:g}; expected a positive number of seconds")
    if args.sweep_images < 8:
        raise UserError(f"--sweep-images: {args.sweep_images}; expected at least 8")
    zip_path = Path(args.zip)
    check_zip(zip_path)
    data = load_dataset(args.data, held_out_split(args.data, args.split))
    start = time.monotonic()
    zip_sha = sha256_file(zip_path)
    data_sha = data_fingerprint(data.images, data.labels)
    meta = {"time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "zip": zip_path.name, "zip_sha256": zip_sha, "data": data.source, "data_sha256": data_sha,
            "seed": args.seed, "shift_code": shift_code(), "time_limit": args.time_limit}
    common = {"eval_dir": args.eval_dir / zip_path.stem, "data_sha": data_sha, "meta": meta}
    results = {}
    for profile in dict.fromkeys(args.profile):  # order kept, duplicates dropped
        if profile == "sweep":
            results[profile] = evaluate_sweep(zip_path, data, args, common)
        else:
            results[profile] = evaluate_profile(zip_path, data, profile, args, common)
            if profile == "none" and results[profile]["status"] == "ok":
                common["clean_accuracy"] = results[profile]["accuracy"]
    page = write_report(common["eval_dir"], zip_path.name, zip_sha)
    print(f"report: {page}")
    row = board.record_evaluation(args.leaderboard_file, leaderboard_row(common, results, time.monotonic() - start))
    rows = board.read_rows(args.leaderboard_file)
    rank = [r["zip_sha256"] for r in board.ranking(rows)].index(zip_sha) + 1
    print(f"leaderboard: {zip_path.name} is #{rank} of {len(rows)} by server-like accuracy "
          f"(clean {_fmt_pct(row.get('acc_none'))}, server-like {_fmt_pct(row.get('acc_server'))}) "
          f"-> {args.leaderboard_file}")
    if args.leaderboard:
        print(board.format_leaderboard(rows), end="")
    return 1 if any(m["status"] != "ok" for m in results.values()) else 0


def record_server(args) -> int:
    zip_arg, score_text = args.record_server
    try:
        value = float(score_text)
    except ValueError:
        raise UserError(f"SCORE: '{score_text}' is not a number; expected the server's accuracy "
                        f"(0-1, or a percentage)") from None
    if 1 < value <= 100:
        print(f"note: {value:g} read as a percentage: {value / 100:g}")
        value /= 100
    if not 0 <= value <= 1:
        raise UserError(f"SCORE: {score_text}; expected an accuracy between 0 and 1 (or 0-100 %)")
    path = Path(zip_arg)
    sha = sha256_file(path) if path.is_file() else None
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    row = board.record_server(args.leaderboard_file, sha, path.name, value, now)
    print(f"recorded server score {100 * value:.2f} % for {row.get('zip')} -> {args.leaderboard_file}")
    print(board.format_leaderboard(board.read_rows(args.leaderboard_file)), end="")
    return 0


def _fmt_pct(value) -> str:
    try:
        return f"{100 * float(value):.1f} %"
    except (TypeError, ValueError):
        return "n/a"


if __name__ == "__main__":
    main()
