"""How long cleaning takes at the competition's size (about 14,000 images), default descriptor.

The set: the real PBC dev images (train + val), each also rotated a quarter turn and
mirrored with light noise (distinct images for the descriptor, which is not rotation
invariant), resampled to 12,000; 200 planted near-copies (noise or a 1-2 px shift); and
1,800 fabricated copies (1,600 + 200) of two pictures. Prints seconds per step, the total,
and what was found. Run: `python bench/bench_clean.py [--data PATH] [--report DIR]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bloodcells import cleaning as C  # noqa: E402
from bloodcells import clean_report, embeddings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("BLOODCELLS_PBC", REPO.parent / "shared" / "data" / "pbc96_dev.npz"))


def build(path: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    with np.load(path) as f:
        real = np.concatenate([f["train_images"], f["val_images"]])
        labels = np.concatenate([f["train_labels"], f["val_labels"]])[:, 0].astype(np.int64)

    def light_noise(x):
        return np.clip(x + rng.normal(0, 2, x.shape), 0, 255).astype(np.uint8)

    variants = [real, light_noise(np.rot90(real, 1, axes=(1, 2))), light_noise(real[:, ::-1])]
    pool = np.concatenate(variants)
    pool_labels = np.tile(labels, len(variants))
    take = rng.choice(len(pool), 12000, replace=False)
    origin = np.r_[take, np.full(2000, -1)]  # pool index (variant * n_real + real index), -1 planted/fabricated
    images, labs = pool[take], pool_labels[take]

    sources = rng.choice(12000, 200, replace=False)
    near = []
    for k, s in enumerate(sources):
        if k % 2:
            near.append(light_noise(images[s]))
        else:
            dy, dx = rng.choice([-2, -1, 1, 2], 2)
            padded = np.pad(images[s], ((2, 2), (2, 2), (0, 0)), mode="edge")
            near.append(padded[2 + dy:98 + dy, 2 + dx:98 + dx])
    fabricated = []
    for n in (1600, 200):
        picture = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        fabricated.append(np.broadcast_to(picture, (n, 96, 96, 3)))
    images = np.concatenate([images, np.stack(near), *fabricated])
    labs = np.concatenate([labs, labs[sources], rng.integers(0, 8, 1800)])
    # Real re-captures (the same cells photographed twice) are near-duplicates too: the
    # pairs of the real set, so extra finds in the mix can be accounted for.
    real_pairs = {tuple(p) for p in C.near_duplicate_pairs(embeddings.descriptor_embeddings(real))[0].tolist()}
    order = rng.permutation(len(labs))
    where = np.argsort(order)  # old position -> new position
    planted = np.stack([where[sources], where[12000 + np.arange(200)]], axis=1)
    return (np.ascontiguousarray(images[order]), labs[order], planted, origin[order], len(real), real_pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--report", default=None, help="also write the report here (timed)")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        print(f"skip: real data not found at {args.data}")
        return
    t = time.perf_counter()
    images, labels, planted, origin, n_real, real_pairs = build(Path(args.data))
    print(f"built {len(images)} images in {time.perf_counter() - t:.1f}s (not part of the timing)")
    print(f"cpu cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f} "
          f"(shared machine: figures are pessimistic)")

    t0 = time.perf_counter()
    result = C.clean(images, labels, show_progress=False)
    pipeline = time.perf_counter() - t0
    for step, seconds in result.seconds.items():
        print(f"  {step:<18} {seconds:6.1f} s")
    print(f"  {'total (clean)':<18} {pipeline:6.1f} s")

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(args.report) if args.report else Path(tmp) / "report"
        summary = clean_report.summarize(result, labels, source="bench", input_sha256=None,
                                         settings={"group_threshold": C.DEFAULT_GROUP_THRESHOLD,
                                                   "near_threshold": C.DEFAULT_NEAR_THRESHOLD,
                                                   "contamination": C.DEFAULT_CONTAMINATION})
        clean_report.write_report(report, result, images, labels, summary)
        from bloodcells.files import save_npz_atomic

        save_npz_atomic(Path(tmp) / "clean.npz", compress=False, images=images[result.keep], labels=labels[result.keep])
    writing = time.perf_counter() - t
    print(f"  {'report + npz':<18} {writing:6.1f} s")
    print(f"  {'total':<18} {pipeline + writing:6.1f} s   (load average after: {os.getloadavg()[0]:.1f})")
    per = summary["removed_per_reason"]
    found = {tuple(sorted(p)) for p in result.near_pairs.tolist()}
    hits = sum(tuple(sorted(p)) in found for p in planted.tolist())
    extra = found - {tuple(sorted(p)) for p in planted.tolist()}

    def recapture(i, j):
        a, b = origin[i], origin[j]
        return (a >= 0 and b >= 0 and a // n_real == b // n_real
                and tuple(sorted((a % n_real, b % n_real))) in real_pairs)

    print(f"other near-duplicate pairs: {len(extra)}, of which variants of the {len(real_pairs)} real "
          f"re-capture pairs: {sum(recapture(i, j) for i, j in extra)}")
    print(f"planted near-copies found: {hits}/200 (1-2 px shifts: {sum(tuple(sorted(p)) in found for p in planted[0::2].tolist())}/100, "
          f"noise: {sum(tuple(sorted(p)) in found for p in planted[1::2].tolist())}/100)")
    print(f"found: fabricated {per[C.FABRICATED]} (planted 1800), near-duplicates "
          f"{per[C.NEAR_DUPLICATE] + per[C.NEAR_CONFLICT]} (planted 200; a few more can be real "
          f"re-captures), outliers flagged {summary['outliers_flagged']}")


if __name__ == "__main__":
    main()
