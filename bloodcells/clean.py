"""Clean a training set: fabricated images, label conflicts, duplicates, near-duplicates
and outliers, with a visual report of everything found.

Steps, in order:
  1. Exact duplicates by content hash (blake2b of each image's raw bytes). A group of
     identical images larger than `group_threshold` is a fabricated contaminant (every
     copy removed); identical images with different labels are a label conflict (every
     copy removed); other identical images keep the first (lowest index).
  2. Near-duplicates among what remains: cosine similarity of embeddings >= threshold,
     computed blockwise (bounded memory, no loop over pairs). Each connected component
     of the similarity graph keeps its lowest index. A removed copy whose label differs
     from the kept image's is reported as `near_duplicate_label_conflict`.
  3. Outliers: a seeded IsolationForest on the embeddings (plus colour statistics).
     Flagged and shown by default, removed only with `drop_outliers`.

The default embedding is a fixed descriptor needing no weights; it and the outlier
features live in bloodcells.embeddings, the report in bloodcells.clean_report (how well
the descriptor separates copies from distinct cells: bench/RESULTS.md, "Cleaning").
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cli import Progress, UserError, check_output_file, check_output_folder, run_cli
from .embeddings import descriptor_embeddings, gap_embedder, network_embeddings, outlier_features
from .files import save_npz_atomic, sha256_file

DEFAULT_GROUP_THRESHOLD = 20
DEFAULT_NEAR_THRESHOLD = 0.995
DEFAULT_CONTAMINATION = 120 / 13759  # the reference report's outlier share
PROGRESS_MIN_IMAGES = 2000  # below this, steps are fast enough to run silently

# Reasons written to removed.csv (and summary.json), in report order.
FABRICATED = "fabricated"
LABEL_CONFLICT = "label_conflict"
DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
NEAR_CONFLICT = "near_duplicate_label_conflict"
OUTLIER = "outlier"
REASONS = (FABRICATED, LABEL_CONFLICT, DUPLICATE, NEAR_DUPLICATE, NEAR_CONFLICT, OUTLIER)


@dataclass
class Group:
    """Images found together: `members` (sorted indices), `kept` (index kept or -1)."""

    id: str
    kind: str
    members: np.ndarray
    kept: int = -1


@dataclass
class CleanResult:
    n_images: int
    reason: np.ndarray  # (N,) object: "" for kept images, else one of REASONS
    group_of: np.ndarray  # (N,) object: group id of the removed image, "" otherwise
    groups: list[Group]
    near_pairs: np.ndarray  # (P, 2) int64, i < j, among images left after step 1
    near_sims: np.ndarray  # (P,) float32
    outlier_index: np.ndarray  # flagged outliers, most anomalous first
    outlier_score: np.ndarray  # IsolationForest score_samples (lower = more anomalous)
    dropped_outliers: bool
    seconds: dict = field(default_factory=dict)

    @property
    def keep(self) -> np.ndarray:
        return self.reason == ""

    @property
    def removed_index(self) -> np.ndarray:
        return np.flatnonzero(~self.keep)


# -- step 1: exact duplicates -------------------------------------------------------------

def image_hashes(images: np.ndarray, progress: Progress | None = None, chunk: int = 2048) -> np.ndarray:
    """(N,) array of 16-byte blake2b digests of each image's raw bytes."""
    images = np.ascontiguousarray(images)
    digests = []
    for start in range(0, len(images), chunk):
        for img in images[start:start + chunk]:
            digests.append(hashlib.blake2b(img.tobytes(), digest_size=16).digest())
        if progress:
            progress.update(min(chunk, len(images) - start))
    return np.array(digests, dtype="S16")


def exact_duplicate_groups(hashes: np.ndarray, labels: np.ndarray,
                           group_threshold: int = DEFAULT_GROUP_THRESHOLD) -> list[Group]:
    """Groups of identical images (2 or more), classified as fabricated (more than
    `group_threshold` copies), label conflict (labels differ) or plain duplicate."""
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    groups = []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        members = np.sort(members)
        if len(members) > group_threshold:
            groups.append(Group("", FABRICATED, members))
        elif len(np.unique(labels[members])) > 1:
            groups.append(Group("", LABEL_CONFLICT, members))
        else:
            groups.append(Group("", DUPLICATE, members, kept=int(members[0])))
    groups.sort(key=lambda g: (REASONS.index(g.kind), int(g.members[0])))
    return groups


# -- step 2: near-duplicates --------------------------------------------------------------

def near_duplicate_pairs(embeddings: np.ndarray, threshold: float = DEFAULT_NEAR_THRESHOLD,
                         block: int = 1024, progress: Progress | None = None):
    """All pairs (i < j) with cosine similarity >= threshold, by row blocks against the
    rest of the matrix (memory ~ block x N floats). Embeddings must be unit-norm."""
    e = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(e)
    pairs, sims = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = e[start:stop] @ e[start:].T  # columns start.. : only the upper triangle is needed
        s[np.tril_indices(stop - start, 0, m=s.shape[1])] = -1.0  # i >= j within the block
        r, c = np.nonzero(s >= threshold)
        pairs.append(np.stack([r + start, c + start], axis=1))
        sims.append(s[r, c])
        if progress:
            progress.update(stop - start)
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return np.concatenate(pairs).astype(np.int64), np.concatenate(sims).astype(np.float32)


def near_duplicate_groups(pairs: np.ndarray, n: int) -> list[np.ndarray]:
    """Connected components (size >= 2) of the pair graph, each sorted, by first member."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pairs) == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    order = np.argsort(comp, kind="stable")
    sizes = np.bincount(comp)
    parts = np.split(order, np.cumsum(sizes)[:-1])
    return sorted((np.sort(p) for p in parts if len(p) > 1), key=lambda p: int(p[0]))


# -- step 3: outliers ---------------------------------------------------------------------

def isolation_outliers(features: np.ndarray, contamination: float, seed: int = 0):
    """(flagged index sorted most anomalous first, score_samples of all rows)."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=200, contamination=contamination, random_state=seed)
    scores = forest.fit(features).score_samples(features)
    flagged = np.flatnonzero(scores < forest.offset_)  # what predict() calls -1, scored once
    return flagged[np.argsort(scores[flagged], kind="stable")], scores


# -- the whole pipeline -------------------------------------------------------------------

def clean(images: np.ndarray, labels: np.ndarray, *, group_threshold: int = DEFAULT_GROUP_THRESHOLD,
          near_threshold: float = DEFAULT_NEAR_THRESHOLD, contamination: float = DEFAULT_CONTAMINATION,
          drop_outliers: bool = False, embed=None, seed: int = 0, show_progress: bool | None = None,
          block: int = 1024) -> CleanResult:
    """Run the three steps. `embed(images, progress) -> unit-norm (n, d)`; default the descriptor."""
    n = len(images)
    if show_progress is None:
        show_progress = n >= PROGRESS_MIN_IMAGES

    def progress(total, label):
        return Progress(total, f"clean: {label}") if show_progress else None

    seconds = {}
    reason = np.full(n, "", dtype=object)
    group_of = np.full(n, "", dtype=object)
    groups: list[Group] = []
    counters = {kind: 0 for kind in REASONS}

    def new_group(kind, members, kept=-1):
        counters[kind] += 1
        prefix = {FABRICATED: "F", LABEL_CONFLICT: "C", DUPLICATE: "D", NEAR_DUPLICATE: "N"}[kind]
        group = Group(f"{prefix}{counters[kind]}", kind, members, kept)
        groups.append(group)
        return group

    t = time.perf_counter()
    hashes = image_hashes(images, progress(n, "hashing"))
    for g in exact_duplicate_groups(hashes, labels, group_threshold):
        group = new_group(g.kind, g.members, g.kept)
        removed = g.members if g.kept < 0 else g.members[g.members != g.kept]
        reason[removed] = g.kind
        group_of[removed] = group.id
    seconds["exact duplicates"] = time.perf_counter() - t

    remaining = np.flatnonzero(reason == "")
    t = time.perf_counter()
    blobs = None
    if len(remaining) == 0:  # everything was an exact duplicate: nothing to compare
        emb = np.zeros((0, 1), np.float32)
    elif embed is None:  # the default descriptor also yields the blob statistics, in one pass
        blobs = np.zeros((len(remaining), 3), np.float32)
        emb = descriptor_embeddings(images, progress(len(remaining), "embedding"), blobs=blobs, index=remaining)
    else:
        emb = embed(images[remaining], progress(len(remaining), "embedding"))
    seconds["embedding"] = time.perf_counter() - t

    t = time.perf_counter()
    local_pairs, sims = near_duplicate_pairs(emb, near_threshold, block, progress(len(remaining), "similarity"))
    near_pairs = remaining[local_pairs] if len(local_pairs) else local_pairs
    for comp in near_duplicate_groups(local_pairs, len(remaining)):
        members = remaining[comp]
        kept = int(members[0])
        group = new_group(NEAR_DUPLICATE, members, kept)
        copies = members[1:]
        reason[copies] = np.where(labels[copies] == labels[kept], NEAR_DUPLICATE, NEAR_CONFLICT)
        group_of[copies] = group.id
    seconds["near duplicates"] = time.perf_counter() - t

    t = time.perf_counter()
    left = np.flatnonzero(reason == "")
    left_local = np.searchsorted(remaining, left)
    outlier_index = np.zeros(0, np.int64)
    outlier_score = np.full(n, np.nan, dtype=np.float32)
    if len(left) >= 10 and contamination > 0:
        bar = progress(1, "isolation forest")
        feats = outlier_features(emb[left_local], images, index=left, seed=seed,
                                 blobs=None if blobs is None else blobs[left_local])
        flagged, scores = isolation_outliers(feats, contamination, seed)
        outlier_index = left[flagged]
        outlier_score[left] = scores
        if bar:
            bar.update(1)
        if drop_outliers:
            reason[outlier_index] = OUTLIER
    seconds["outliers"] = time.perf_counter() - t
    return CleanResult(n, reason, group_of, groups, near_pairs, sims, outlier_index, outlier_score,
                       drop_outliers, seconds)


# -- command line -------------------------------------------------------------------------

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
    from .clean_report import format_summary, summarize, write_report
    from .data import load_dataset

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
