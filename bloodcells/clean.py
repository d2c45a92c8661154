"""`python -m bloodcells.clean`: clean a training set (bloodcells.cleaning's algorithm) and
write the cleaned npz and the visual report (bloodcells.clean_report).

    python -m bloodcells.clean training_set.npz --out build/training_set_clean.npz --report build/clean_report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .clean_report import format_summary, summarize, write_report
from .cleaning import DEFAULT_CONTAMINATION, DEFAULT_GROUP_THRESHOLD, DEFAULT_NEAR_THRESHOLD, clean
from .cli import UserError, check_output_file, check_output_folder, run_cli
from .data import load_dataset
from .embeddings import gap_embedder, network_embeddings
from .files import save_npz_atomic, sha256_file


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bloodcells.clean",
        description="Remove fabricated images, label conflicts, duplicates and near-duplicates; "
                    "flag outliers; write a visual report.")
    parser.add_argument("input", help="AN2DL npz, MedMNIST npz (with --split) or folder of class folders")
    parser.add_argument("--out", required=True, help="cleaned npz (AN2DL layout: images, labels)")
    parser.add_argument("--report", required=True, help="folder for removed.csv, summary.json and PNGs")
    parser.add_argument("--split", default=None, help="MedMNIST split (default train)")
    parser.add_argument("--group-threshold", type=int, default=DEFAULT_GROUP_THRESHOLD,
                        help="identical groups larger than this are fabricated (default %(default)s)")
    parser.add_argument("--near-threshold", type=float, default=DEFAULT_NEAR_THRESHOLD,
                        help="cosine similarity for near-duplicates (default %(default)s)")
    parser.add_argument("--contamination", type=float, default=DEFAULT_CONTAMINATION,
                        help="IsolationForest outlier share, 0 to skip (default %(default).5f)")
    parser.add_argument("--drop-outliers", action="store_true", help="remove flagged outliers too")
    parser.add_argument("--embedding", default="descriptor",
                        help="'descriptor' (default, no weights), an exported model folder, "
                             "or an ImageNet backbone name (e.g. efficientnetb0)")
    parser.add_argument("--compress", action="store_true",
                        help="zip-compress the output npz (smaller, much slower to write)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def _check_args(args) -> None:
    if args.group_threshold < 2:
        raise UserError(f"--group-threshold: {args.group_threshold}; expected an integer >= 2")
    if not 0 < args.near_threshold <= 1:
        raise UserError(f"--near-threshold: {args.near_threshold}; expected a cosine similarity in (0, 1]")
    if not 0 <= args.contamination <= 0.5:
        raise UserError(f"--contamination: {args.contamination}; expected a share in [0, 0.5]")
    if Path(args.out).suffix != ".npz":
        raise UserError(f"{args.out}: --out: not an .npz name; expected e.g. training_set_clean.npz")
    inp, out = Path(args.input).resolve(), Path(args.out).resolve()
    if inp == out:
        raise UserError(f"{args.out}: --out: same path as the input; expected a new file (the input is never modified)")
    if Path(args.report).resolve() == inp:
        raise UserError(f"{args.report}: --report: same path as the input; expected a folder for the report")
    if out == Path(args.report).resolve():
        raise UserError(f"{args.report}: --report: the same path as --out; expected a folder beside the cleaned file")
    check_output_folder(args.report, "--report")  # before the cleaning, not after the npz is written
    check_output_file(args.out, "--out")


@run_cli
def main(argv=None):
    args = _parse(argv)
    _check_args(args)

    data = load_dataset(args.input, args.split, notify=lambda line: print(line, file=sys.stderr))
    embed = None
    if args.embedding != "descriptor":
        embedder = gap_embedder(args.embedding)
        embed = lambda imgs, progress: network_embeddings(imgs, embedder, progress)  # noqa: E731
    show = None if not args.quiet else False
    result = clean(data.images, data.labels, group_threshold=args.group_threshold,
                   near_threshold=args.near_threshold, contamination=args.contamination,
                   drop_outliers=args.drop_outliers, embed=embed, seed=args.seed, show_progress=show)
    path = Path(args.input)
    settings = {"group_threshold": args.group_threshold, "near_threshold": args.near_threshold,
                "contamination": args.contamination, "drop_outliers": args.drop_outliers,
                "embedding": args.embedding, "seed": args.seed, "split": args.split}
    summary = summarize(result, data.labels, source=data.source,
                        input_sha256=sha256_file(path) if path.is_file() else None, settings=settings)
    keep = result.keep
    if not keep.any():  # the report says why; an empty training set is no output
        write_report(args.report, result, data.images, data.labels, summary)
        print(format_summary(summary))
        raise UserError(f"{data.source}: images: cleaning removed all {len(keep)} images, nothing written to "
                        f"{args.out}; expected at least one left (see {args.report}/removed.csv; "
                        f"check --group-threshold, --near-threshold)")
    save_npz_atomic(args.out, compress=args.compress, images=data.images[keep], labels=data.labels[keep])
    write_report(args.report, result, data.images, data.labels, summary)
    print(format_summary(summary))
    print(f"cleaned set: {args.out} ({int(keep.sum())} images); report: {args.report}/ "
          f"(removed.csv, flagged_outliers.csv, summary.json, PNGs)")


if __name__ == "__main__":
    main()
