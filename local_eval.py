"""Evaluate a submission zip like the competition server, on a distribution-shifted
local test, and keep a local leaderboard.

  python local_eval.py ZIP --data TEST [--split S] [--profile none server sweep]
                       [--seeds 1 2 3] [--time-limit 600]
  python local_eval.py --compare A.zip B.zip          # is B really better than A?
  python local_eval.py --record-server ZIP SCORE     # what the real server said
  python local_eval.py --leaderboard                  # ranking, expected server scores

Per profile (default: none and server) the zip runs in a separate process from another
working directory (bloodcells.ingestion), its predictions file is scored
(bloodcells.scoring) and written as submission/eval/<zip name>/<profile>/scores.json
with 95 % intervals (bloodcells.stats) and figures; submission/eval/<zip name>/report.html
shows them together, and submission/leaderboard.csv gets the zip's row. A shifted profile
is drawn once per shift seed (default 1, 2, 3: seeds training does not select epochs with)
and reported as the mean over the draws with its spread. Shifted sets are cached in
build/shift_cache so every submission meets the same images; that is what makes the
paired comparison (--compare, and against the leaderboard's best after each evaluation)
possible.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from bloodcells import compare as paired
from bloodcells import leaderboard as board
from bloodcells import sandbox, shift
from bloodcells.cli import UserError, check_output_file, check_output_folder, run_cli
from bloodcells.data import load_dataset
from bloodcells.eval_report import leaderboard_row, write_report
from bloodcells.evaluate import (CACHE_DIR, DEFAULT_PROFILES, EVAL_DIR, EVAL_SEEDS, LEADERBOARD, SWEEP_IMAGES,
                                 cross_check, data_fingerprint, evaluate_profile, evaluate_sweep, held_out_split,
                                 shift_code)
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
                        help=f"shift profiles among {', '.join(shift.PROFILES)} (default: {' '.join(DEFAULT_PROFILES)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(EVAL_SEEDS),
                        help=f"shift seeds, one draw each (default {' '.join(map(str, EVAL_SEEDS))}; "
                             f"training selects epochs with seed 0)")
    parser.add_argument("--seed", type=int, default=None, help="a single shift seed (same as --seeds S)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                        help=f"seconds for Model() + predict per image set, as on the server (default "
                             f"{DEFAULT_TIME_LIMIT:g}, Codabench's default; set your phase's limit)")
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
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="paired comparison of two evaluated zips (or their eval folders) on the same images")
    args = parser.parse_args(argv)
    if args.seed is not None:
        args.seeds = [args.seed]
    args.seeds = list(dict.fromkeys(args.seeds))
    return args


@run_cli
def main(argv=None):
    args = parse_args(argv)
    sandbox.clean_stale()  # what a killed run left
    if args.record_server or (args.zip and args.data):
        check_output_file(args.leaderboard_file, "--leaderboard-file")
    if args.record_server:
        return record_server(args)
    if args.compare:
        return compare_zips(args)
    if args.leaderboard and not args.zip:
        print(board.format_leaderboard(board.read_rows(args.leaderboard_file), compare=_against_best(args)), end="")
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
    if any(s < 0 for s in args.seeds):
        raise UserError(f"--seeds: {' '.join(map(str, args.seeds))}; expected non-negative integers")
    if args.sweep_images < 8:
        raise UserError(f"--sweep-images: {args.sweep_images}; expected at least 8")
    check_output_folder(args.eval_dir, "--eval-dir")
    check_output_folder(args.cache_dir, "--cache-dir")
    zip_path = Path(args.zip)
    check_zip(zip_path)
    data = load_dataset(args.data, held_out_split(args.data, args.split))
    start = time.monotonic()
    zip_sha = sha256_file(zip_path)
    data_sha = data_fingerprint(data.images, data.labels)
    meta = {"time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "zip": zip_path.name, "zip_sha256": zip_sha, "data": data.source, "data_sha256": data_sha,
            "seeds": args.seeds, "shift_code": shift_code(), "time_limit": args.time_limit}
    common = {"eval_dir": args.eval_dir / zip_path.stem, "data_sha": data_sha, "meta": meta}
    results = {}
    for profile in dict.fromkeys(args.profile):  # order kept, duplicates dropped
        if profile == "sweep":
            results[profile] = evaluate_sweep(zip_path, data, args, common)
        else:
            results[profile] = evaluate_profile(zip_path, data, profile, args, common)
            if profile == "none" and results[profile]["status"] == "ok":
                common["clean_accuracy"] = results[profile]["accuracy"]
    for line in cross_check(results):
        print(line)
    page = write_report(common["eval_dir"], zip_path.name, zip_sha)
    print(f"report: {page}")
    new_row = leaderboard_row(common, results, time.monotonic() - start)
    row = board.record_evaluation(args.leaderboard_file, new_row)
    rows = board.read_rows(args.leaderboard_file)
    # ranks and "the best so far" among the zips evaluated on this test set
    same_set = board.ranking([r for r in rows if r.get("data_sha256") == row.get("data_sha256")])
    keys = [board.row_key(r) for r in same_set]
    if board.row_key(row) not in keys:
        print(f"leaderboard: {zip_path.name} is listed, not ranked ({row.get('status')}) -> {args.leaderboard_file}")
    else:
        shown = ", ".join(f"{shift.label(p)} {_estimate(row, p)}" for p in results
                          if row.get(f"acc_{p}") not in (None, ""))
        print(f"leaderboard: {zip_path.name} is #{keys.index(board.row_key(row)) + 1} of {len(same_set)} ranked on "
              f"this test set by server-like accuracy ({shown}; %, 95 % intervals over {len(data.labels)} images) "
              f"-> {args.leaderboard_file}")
        if row.get("status") != "ok":
            print(f"leaderboard: {row.get('status')}")
        best = next((r for r in same_set if board.row_key(r) != board.row_key(row) and r.get("eval_dir")), None)
        if best is not None:
            _print_against(best, row)
    if args.leaderboard:
        print(board.format_leaderboard(rows, compare=_against_best(args)), end="")
    return 1 if any(m["status"] != "ok" for m in results.values()) else 0


def _estimate(row, profile) -> str:
    text = board.estimate_text(row, profile)
    low, high = row.get(f"acc_{profile}_min"), row.get(f"acc_{profile}_max")
    if low not in (None, "") and high not in (None, ""):
        seeds = str(row.get(f"seeds_{profile}", "")).replace(" ", ",")
        text += f" (mean of shift seeds {seeds}; per seed {100 * float(low):.1f}-{100 * float(high):.1f})"
    return text


def _print_against(best: dict, row: dict) -> None:
    """The verdict against the leaderboard's best other zip, or why it cannot be given."""
    try:
        result = paired.compare_rows(best, row)
    except UserError as exc:
        print(f"against the best so far ({best.get('zip')}): not compared: {exc}")
        return
    print(f"against the best so far: {result['verdict'][1]}")


def _against_best(args):
    """For the leaderboard table: B - A on the server-like profile against #1, when both
    evaluation folders are still there and met the same images."""
    def cell(best, row):
        if not (best.get("eval_dir") and row.get("eval_dir")):
            return ""
        try:
            result = paired.compare_rows(best, row)
        except UserError:
            return "not comparable"
        r = result["profiles"][result["decision"]]
        (low, high), d = r["difference"]["ci"], r["difference"]["difference"]
        word = {"better": "better", "worse": "worse", "tie": "same?"}[r["verdict"][0]]
        return f"{100 * d:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] {word}"
    return cell


def compare_zips(args) -> int:
    """--compare A B: zips (their evaluation folders under --eval-dir) or folders."""
    folders, names = [], []
    for given in args.compare:
        path = Path(given)
        folder = path if path.is_dir() else args.eval_dir / path.stem
        if path.is_file():
            _check_same_zip(path, folder)
        folders.append(folder)
        names.append(path.name)
    result = paired.compare(folders[0], folders[1], names[0], names[1])
    print(paired.format_comparison(result, names[0], names[1]), end="")
    return 0


def _check_same_zip(path: Path, folder: Path) -> None:
    import json

    sha = sha256_file(path)
    for metrics in folder.glob("*/metrics.json"):
        recorded = json.loads(metrics.read_text()).get("zip_sha256")
        if recorded and recorded != sha:
            raise UserError(f"{path}: zip: {folder} holds the evaluation of another zip of that name "
                            f"(sha256 {recorded[:12]}, this one {sha[:12]}); expected `python local_eval.py "
                            f"{path} --data TEST` first")


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


if __name__ == "__main__":
    main()
