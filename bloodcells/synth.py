"""Synthetic blood smears for the demo and the tests, drawn by our own code.

Clean images are drawn by bloodcells.synth_draw: one smear per image, its central
white cell of the image's class.

With `contaminate=True` the set also carries the AN2DL training set's defects in
miniature, so the cleaning stage has real work: two fabricated "meme" pictures with a
cell blended in, each copied byte for byte many times with labels over all classes;
exact duplicates; an identical pair with conflicting labels; near-duplicates; and
multi-cell outliers. `SynthSet.kinds` says which image is which.

Deterministic: the same arguments give the same bytes.

    python -m bloodcells.synth --out demo.npz [--seed S] [--per-class N] [--no-contamination]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import IMAGE_SIZE, NUM_CLASSES
from .cli import UserError, run_cli
from .synth_draw import fabricated_picture, render_cell, render_outlier

S = IMAGE_SIZE
KINDS = ("clean", "fabricated_a", "fabricated_b", "duplicate", "conflict", "near_duplicate", "outlier")
MAX_PER_CLASS = 10_000  # 80,000 clean images, about 2.2 GB in memory


@dataclass
class SynthSet:
    images: np.ndarray  # (N, 96, 96, 3) uint8
    labels: np.ndarray  # (N,) int64 in 0..7
    kinds: np.ndarray  # (N,) str, one of KINDS
    source: np.ndarray  # (N,) int64: index of the image a duplicate/near-duplicate copies, the
    #                     other half of a conflict pair, or -1

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict:
        """{kind: per-class counts (8,)} for the kinds present, in KINDS order."""
        return {kind: np.bincount(self.labels[self.kinds == kind], minlength=NUM_CLASSES)
                for kind in KINDS if (self.kinds == kind).any()}


def _spread_labels(n, rng):
    """n labels covering every class as evenly as possible, in random order."""
    return rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)


def _near_copy(img, rng):
    """A slightly changed copy: light noise, or a 1-2 pixel shift (edges repeated)."""
    if rng.random() < 0.5:
        noisy = img.astype(np.float32) + rng.normal(0.0, rng.uniform(2.0, 4.0), img.shape)
        out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    else:
        dy, dx = rng.choice([-2, -1, 1, 2], 2)
        padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="edge")
        out = padded[2 + dy:2 + dy + S, 2 + dx:2 + dx + S]
    if np.array_equal(out, img):  # never an exact copy
        out = out.copy()
        out[0, 0, 0] ^= 1
    return np.ascontiguousarray(out)


# -- the data set ------------------------------------------------------------------------------

def generate(seed: int = 0, per_class: int = 150, contaminate: bool = True, *,
             fabricated_a: int = 96, fabricated_b: int = 24, duplicates: int = 6,
             conflict_pairs: int = 1, near_duplicates: int = 12, outliers: int = 12,
             progress=None) -> SynthSet:
    """A synthetic AN2DL-like training set: `per_class` clean images per class, plus (with
    `contaminate`) the contaminants in the counts given. Order is shuffled by `seed`.
    The clean images do not depend on `contaminate`. `progress(n)` is called per image drawn."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    counts = dict(fabricated_a=fabricated_a, fabricated_b=fabricated_b, duplicates=duplicates,
                  conflict_pairs=conflict_pairs, near_duplicates=near_duplicates, outliers=outliers)
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    tick = progress or (lambda n: None)

    clean_rng = np.random.default_rng([seed, 0])
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    images = np.empty((len(labels), S, S, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = render_cell(label, clean_rng)
        tick(1)
    parts_img, parts_lab = [images], [labels]
    parts_kind = [np.full(len(labels), "clean")]
    parts_src = [np.full(len(labels), -1, np.int64)]

    if contaminate:
        rng = np.random.default_rng([seed, 1])
        n_clean = len(labels)

        def add(imgs, labs, kind, src):
            parts_img.append(np.asarray(imgs, np.uint8).reshape(-1, S, S, 3))
            parts_lab.append(np.asarray(labs, np.int64))
            parts_kind.append(np.full(len(labs), kind))
            parts_src.append(np.asarray(src, np.int64))

        for which, n in (("a", fabricated_a), ("b", fabricated_b)):
            if n:
                picture = fabricated_picture(which, rng)
                add(np.broadcast_to(picture, (n, S, S, 3)), _spread_labels(n, rng),
                    f"fabricated_{which}", np.full(n, -1))
        # Distinct originals for duplicates and near-duplicates when there are enough.
        wanted = duplicates + near_duplicates
        originals = rng.choice(n_clean, wanted, replace=wanted > n_clean)
        dup_src, near_src = originals[:duplicates], originals[duplicates:]
        add(images[dup_src], labels[dup_src], "duplicate", dup_src)
        add(np.stack([_near_copy(images[i], rng) for i in near_src]) if len(near_src) else [],
            labels[near_src], "near_duplicate", near_src)
        for _ in range(conflict_pairs):
            first = int(rng.integers(NUM_CLASSES))
            second = (first + int(rng.integers(1, NUM_CLASSES))) % NUM_CLASSES
            picture = render_cell(first, rng)
            start = sum(len(p) for p in parts_lab)
            add([picture, picture], [first, second], "conflict", [start + 1, start])
            tick(1)
        outlier_imgs, outlier_labs = [], []
        for _ in range(outliers):
            classes = rng.choice(NUM_CLASSES - 1, int(rng.integers(2, 4)), replace=False)  # no platelets
            outlier_imgs.append(render_outlier(classes, rng))
            outlier_labs.append(classes[0])
            tick(1)
        add(outlier_imgs, outlier_labs, "outlier", np.full(outliers, -1))

    images = np.concatenate(parts_img)
    labels = np.concatenate(parts_lab)
    kinds = np.concatenate(parts_kind).astype(f"<U{max(len(k) for k in KINDS)}")
    source = np.concatenate(parts_src)
    order = np.random.default_rng([seed, 2]).permutation(len(labels))
    where = np.empty_like(order)
    where[order] = np.arange(len(order))  # old index -> new index
    source = np.where(source >= 0, where[np.maximum(source, 0)], -1)[order]
    return SynthSet(np.ascontiguousarray(images[order]), labels[order], kinds[order], source)


# -- command line ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as a one-line UserError (exit 2 via run_cli)."""

    def error(self, message):
        raise UserError(f"arguments: {message}; see --help")


def _check_writable(path: Path, option: str, suffix: str) -> None:
    if path.suffix.lower() != suffix:
        raise UserError(f"{path}: {option}: expected a file name ending in {suffix}")
    if path.is_dir():
        raise UserError(f"{path}: {option}: is a folder; expected a file name ending in {suffix}")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{path}: {option}: cannot write there ({existing} is not a writable folder); "
                        f"expected a writable location")
    if path.exists() and not os.access(path.parent, os.W_OK):
        raise UserError(f"{path}: {option}: cannot replace it (folder not writable)")


def preview_grid(synth: SynthSet, per_row: int = 10):
    """Images and captions for a preview: a row of clean samples per class, then a row
    of each kind of contaminant present."""
    from .figures import SHORT_NAMES

    images, titles = [], []
    for label in range(NUM_CLASSES):
        index = np.flatnonzero((synth.labels == label) & (synth.kinds == "clean"))[:per_row]
        images += list(synth.images[index])
        titles += [SHORT_NAMES[label]] * len(index)
        pad = per_row - len(index)
        images += [np.full((S, S, 3), 255, np.uint8)] * pad
        titles += [""] * pad
    row_i, row_t = [], []
    for kind in KINDS[1:]:
        index = np.flatnonzero(synth.kinds == kind)
        take = index[:1] if kind.startswith("fabricated") else index[:2]
        for i in take:
            row_i.append(synth.images[i])
            row_t.append(f"{kind.replace('fabricated', 'fab').replace('near_duplicate', 'near')}"
                         f" {SHORT_NAMES[synth.labels[i]]}")
    while row_i:
        chunk_i, chunk_t = row_i[:per_row], row_t[:per_row]
        row_i, row_t = row_i[per_row:], row_t[per_row:]
        pad = per_row - len(chunk_i)
        images += chunk_i + [np.full((S, S, 3), 255, np.uint8)] * pad
        titles += chunk_t + [""] * pad
    return np.stack(images), titles


def format_counts(synth: SynthSet) -> str:
    from .figures import SHORT_NAMES

    lines = [f"{'kind':<16}" + "".join(f"{s:>6}" for s in SHORT_NAMES) + f"{'total':>8}"]
    for kind, row in synth.counts().items():
        lines.append(f"{kind:<16}" + "".join(f"{c:>6}" for c in row) + f"{row.sum():>8}")
    total = np.bincount(synth.labels, minlength=NUM_CLASSES)
    lines.append(f"{'all':<16}" + "".join(f"{c:>6}" for c in total) + f"{total.sum():>8}")
    return "\n".join(lines)


@run_cli
def main(argv=None):
    parser = _Parser(prog="python -m bloodcells.synth",
                     description="Write a synthetic, AN2DL-like training set (images, labels) to an npz.")
    parser.add_argument("--out", required=True, help="output .npz (AN2DL layout: images, labels)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--per-class", type=int, default=150, help="clean images per class (default 150)")
    parser.add_argument("--no-contamination", action="store_true",
                        help="clean images only (no memes, duplicates, conflicts, near-duplicates, outliers)")
    parser.add_argument("--preview", default=None,
                        help="preview PNG (default: <out stem>_preview.png beside the output)")
    parser.add_argument("--no-preview", action="store_true", help="do not write a preview PNG")
    args = parser.parse_args(argv)

    if not 2 <= args.per_class <= MAX_PER_CLASS:
        raise UserError(f"--per-class: {args.per_class}; expected an integer >= 2 and <= {MAX_PER_CLASS}")
    out = Path(args.out)
    _check_writable(out, "--out", ".npz")
    preview = None
    if not args.no_preview:
        preview = Path(args.preview) if args.preview else out.with_name(f"{out.stem}_preview.png")
        _check_writable(preview, "--preview", ".png")
        if preview.resolve() == out.resolve():
            raise UserError(f"{preview}: --preview: same file as --out; expected another path")

    from .cli import Progress
    from .files import save_npz_atomic

    contaminate = not args.no_contamination
    total = NUM_CLASSES * args.per_class + (1 + 12 if contaminate else 0)  # conflict pair + outliers
    bar = Progress(total, "synth: drawing images")
    synth = generate(args.seed, args.per_class, contaminate, progress=bar.update)
    try:
        save_npz_atomic(out, images=synth.images, labels=synth.labels)
        if preview is not None:
            from .figures import save_image_grid

            grid, titles = preview_grid(synth)
            save_image_grid(preview, grid, titles, ncols=10, max_images=len(grid),
                            title=f"synthetic smears, seed {args.seed}: a row per class, then contaminants")
    except OSError as exc:
        raise UserError(f"{exc.filename or out}: cannot write: {exc.strerror or exc}; "
                        f"expected a writable location") from None
    print(format_counts(synth))
    print(f"synth: {len(synth)} images -> {out}")
    if preview is not None:
        print(f"synth: preview -> {preview}")


if __name__ == "__main__":
    main()
