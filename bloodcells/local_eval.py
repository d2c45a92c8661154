"""local_eval.py's command: read the options, then evaluate a zip (bloodcells.evaluate's
evaluate_zip, an EvalSettings in), compare two evaluated zips (bloodcells.compare), record a
server score or print the ranking (bloodcells.leaderboard). Usage: local_eval.py's docstring.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from bloodcells import compare as paired
from bloodcells import leaderboard as board
from bloodcells import sandbox, shift
from bloodcells.cli import UserError, check_output_file, run_cli
from bloodcells.evaluate import (CACHE_DIR, DEFAULT_PROFILES, EVAL_DIR, EVAL_SEEDS, LEADERBOARD, SWEEP_IMAGES,
                                 EvalSettings, evaluate_zip)
from bloodcells.files import sha256_file
from bloodcells.ingestion import DEFAULT_TIME_LIMIT


# -- command line ---------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python local_eval.py",
        description="Evaluate a submission zip like the competition server, on a distribution-shifted local "
                    "test, and keep a local leaderboard.")
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
    return args


def settings_from(args) -> EvalSettings:
    """The evaluation the options ask for (EvalSettings checks the values)."""
    if not args.zip:
        raise UserError("ZIP: missing; expected a submission zip (make submission builds one), "
                        "or --leaderboard / --record-server ZIP SCORE")
    if not args.data:
        raise UserError("--data: missing; expected a labelled held-out test set, e.g. "
                        "--data ../shared/data/pbc96_dev.npz")
    return EvalSettings(zip_path=Path(args.zip), data=args.data, split=args.split, profiles=tuple(args.profile),
                        seeds=tuple(args.seeds), time_limit=args.time_limit, sweep_images=args.sweep_images,
                        python=args.python, eval_dir=args.eval_dir, leaderboard_file=args.leaderboard_file,
                        cache_dir=args.cache_dir, refresh_shift=args.refresh_shift)


@run_cli
def main(argv=None):
    args = parse_args(argv)
    sandbox.clean_stale()  # what a killed run left
    if args.record_server or (args.zip and args.data):
        check_output_file(args.leaderboard_file, "--leaderboard-file")
    if args.record_server:
        return record_server(args)
    if args.compare:
        print(paired.compare_given(*args.compare, args.eval_dir), end="")
        return 0
    if args.leaderboard and not args.zip:
        print(board.format_leaderboard(board.read_rows(args.leaderboard_file), compare=paired.leaderboard_cell),
              end="")
        return 0
    settings = settings_from(args)
    done = evaluate_zip(settings)
    for line in board.placement_lines(done.row, done.rows, done.results, done.images, settings.leaderboard_file,
                                      against=paired.against_best_line):
        print(line)
    if args.leaderboard:
        print(board.format_leaderboard(done.rows, compare=paired.leaderboard_cell), end="")
    return 0 if done.ok else 1


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

