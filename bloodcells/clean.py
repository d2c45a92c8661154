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

The default embedding is a fixed descriptor needing no weights (`descriptor_embeddings`):
a blurred colour image sampled on a 16x16 grid centred on the stained cell, so that a
copy shifted by a pixel or two, or with mild noise, lands above 0.995 while distinct
cells stay below. Measured on the 5,294 real PBC dev images: the only pairs >= 0.995 are 8
re-captures of the same cells (field shifted by tens of pixels), the next highest pair is
far below (99.99th percentile of all pairs ~0.95); 500/500 copies with Gaussian noise
(sigma 4) and ~99% of copies shifted by 1-2 px score >= 0.995. The misses are images with
two similar stain blobs (mostly platelets), where the centre lands on the other blob.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from .cli import Progress, UserError, run_cli
from .files import save_npz_atomic, sha256_file, write_json_atomic, write_text_atomic

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


# -- embeddings ---------------------------------------------------------------------------

def descriptor_embeddings(images: np.ndarray, progress: Progress | None = None,
                          batch: int = 1024, blobs: np.ndarray | None = None,
                          index: np.ndarray | None = None) -> np.ndarray:
    """Fixed descriptor, (N, 768) float32, unit norm, no weights needed.

    Half resolution, Gaussian blur (1.5 px at 48x48), then 16x16 colour samples 4 px apart
    (full resolution) around the stained cell's centre. The centre is found by a few
    mean-shift steps on the purple stain (blue minus green above the image's 75th
    percentile), so it moves with the content: a copy shifted by 1-2 px samples the same
    points. Samples are centred on their mean before normalising; without that every
    pair of smears is near 1.0. When `blobs` (N, 3) is given it is filled with
    `stain_blobs` from the same half-resolution pass. `index` picks rows of `images`
    batch by batch (no copy of the whole selection)."""
    n = len(images) if index is None else len(index)
    out = np.empty((n, 16 * 16 * 3), dtype=np.float32)
    for start in range(0, n, batch):
        rows = slice(start, start + batch) if index is None else index[start:start + batch]
        out[start:start + batch] = _descriptor_batch(
            images[rows], blobs=None if blobs is None else blobs[start:start + batch])
        if progress:
            progress.update(min(batch, n - start))
    return out


def _half_blurred(images: np.ndarray, sigma: float = 1.5):
    """Half resolution (2x2 means, summed in uint16: much faster than a float mean over
    two axes), Gaussian-blurred; and the stain map (blue minus green) with its floor,
    the image's 75th percentile. Shared by the descriptor and the blob statistics."""
    from scipy import ndimage

    n = len(images)
    total = images[:, 0::2, 0::2].astype(np.uint16)
    total += images[:, 1::2, 0::2]
    total += images[:, 0::2, 1::2]
    total += images[:, 1::2, 1::2]
    x = ndimage.gaussian_filter(total.astype(np.float32) * 0.25, (0, sigma, sigma, 0))
    stain = x[..., 2] - x[..., 1]
    flat = stain.reshape(n, -1)
    k = int(0.75 * flat.shape[1])
    floor = np.partition(flat, k, axis=1)[:, k]
    return x, stain, floor


def _descriptor_batch(images: np.ndarray, grid: int = 16, step: float = 2.0, sigma: float = 1.5,
                      window: float = 8.0, iterations: int = 10, blobs=None) -> np.ndarray:
    n = len(images)
    side = IMAGE_SIZE // 2
    x, stain, floor = _half_blurred(images, sigma)
    if blobs is not None:
        blobs[:] = _blob_stats(stain, floor)
    weight = np.maximum(stain - floor[:, None, None], 0.0) ** 2
    ramp = np.arange(side, dtype=np.float32)
    # Weighted centroids from the row and column marginals of weight x window; the window
    # is separable (gy outer gx), so it never has to be formed.
    rows_w, cols_w = weight.sum(axis=2), weight.sum(axis=1)
    cy = np.full(n, (side - 1) / 2, np.float32)
    cx = cy.copy()
    for it in range(iterations + 1):
        if it:  # Gaussian window around the current centre (mean-shift step)
            gy = np.exp(-(ramp - cy[:, None]) ** 2 / (2 * window ** 2)).astype(np.float32)
            gx = np.exp(-(ramp - cx[:, None]) ** 2 / (2 * window ** 2)).astype(np.float32)
            rows_w = gy * np.matmul(weight, gx[:, :, None])[:, :, 0]
            cols_w = gx * np.matmul(gy[:, None, :], weight)[:, 0, :]
        total = rows_w.sum(axis=1)
        ok = total > 1e-6
        safe = np.maximum(total, 1e-12)
        cy = np.where(ok, rows_w @ ramp / safe, cy).astype(np.float32)
        cx = np.where(ok, cols_w @ ramp / safe, cx).astype(np.float32)
    offsets = (np.arange(grid, dtype=np.float32) - (grid - 1) / 2) * step
    py = np.clip(cy[:, None] + offsets, 0, side - 1)
    px = np.clip(cx[:, None] + offsets, 0, side - 1)
    y0 = np.minimum(np.floor(py).astype(np.int64), side - 2)
    x0 = np.minimum(np.floor(px).astype(np.int64), side - 2)
    fy = (py - y0)[:, :, None, None]
    fx = (px - x0)[:, None, :, None]
    rows = np.arange(n)[:, None, None]

    def at(yi, xi):
        return x[rows, yi[:, :, None], xi[:, None, :]]

    v = (at(y0, x0) * (1 - fy) * (1 - fx) + at(y0, x0 + 1) * (1 - fy) * fx
         + at(y0 + 1, x0) * fy * (1 - fx) + at(y0 + 1, x0 + 1) * fy * fx)
    v = v.reshape(n, -1)
    v -= v.mean(axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-8
    return v.astype(np.float32)


def gap_embedder(source: str, backbone_weights: str | None = "imagenet"):
    """A Keras model mapping 0-255 images to the network's GAP features.

    `source` is an exported model folder (contract 1: model.json + weights) or a backbone
    name from model.BACKBONES (ImageNet weights via keras.applications; `backbone_weights`
    may be None to build it untrained, e.g. in tests)."""
    import keras

    from . import models

    model_py = models.shipped_model_module()
    if Path(source).is_dir():
        network, _ = models.load_exported(source)
    else:
        name = source.lower()
        if name not in model_py.BACKBONES or model_py.BACKBONES[name][0] is None:
            choices = sorted(k for k, v in model_py.BACKBONES.items() if v[0])
            raise UserError(f"--embedding: '{source}' is neither a folder nor a pretrained backbone; "
                            f"expected 'descriptor', an exported model folder, or one of {', '.join(choices)}")
        spec = {"backbone": name, "input_size": IMAGE_SIZE, "num_classes": NUM_CLASSES}
        try:
            network = models.build(spec, weights=backbone_weights)
        except UserError:
            raise
        except Exception as exc:  # no network: the weight download fails
            raise UserError(f"--embedding: {source}: could not load {backbone_weights} weights "
                            f"({' '.join(str(exc).split())[:160]}); expected them in the Keras cache "
                            f"(~/.keras/models) or network access") from None
    return keras.Model(network.input, network.get_layer("gap").output)


def network_embeddings(images: np.ndarray, embedder, progress: Progress | None = None,
                       batch: int = 64) -> np.ndarray:
    """GAP features, centred on their mean over the set and L2-normalised: ReLU features are
    all positive, so without centring every pair is close to 1."""
    feats = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].astype(np.float32)
        feats.append(np.asarray(embedder(chunk, training=False), dtype=np.float32))
        if progress:
            progress.update(len(chunk))
    feats = np.concatenate(feats).reshape(len(images), -1)
    feats -= feats.mean(axis=0, keepdims=True)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-8
    return feats


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

def outlier_features(embeddings: np.ndarray, images: np.ndarray, components: int = 4,
                     seed: int = 0, blobs: np.ndarray | None = None,
                     index: np.ndarray | None = None) -> np.ndarray:
    """What the IsolationForest sees, each column z-scored: the embeddings' first principal
    components, the mean colour (the descriptor is centred, so colour lives here) and stain
    blob statistics (number of large stain blobs, area of the second largest, total stain
    area): multi-cell images, the reference's typical outlier, have two or more blobs.
    Few columns on purpose: the forest splits on a random column, and 32 noisy principal
    components drown the informative ones (measured on the synthetic multi-cell outliers)."""
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    k = max(1, min(components, embeddings.shape[1], len(embeddings) - 1))
    with threadpool_limits(1):  # a small SVD: extra BLAS threads only fight on a shared CPU
        pcs = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit_transform(embeddings)
    index = np.arange(len(images)) if index is None else index  # rows of `images` to use
    colour = np.empty((len(index), 3), dtype=np.float32)
    for start in range(0, len(index), 1024):
        chunk = images[index[start:start + 1024]]
        for c in range(3):  # one contiguous channel at a time: much faster than a strided reduction
            channel = np.ascontiguousarray(chunk[..., c]).reshape(len(chunk), -1)
            colour[start:start + len(chunk), c] = channel.mean(axis=1, dtype=np.float32)
    if blobs is None:
        blobs = np.concatenate([stain_blobs(images[index[i:i + 1024]]) for i in range(0, len(index), 1024)])
    feats = np.concatenate([pcs.astype(np.float32), colour, blobs], axis=1)
    return (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-6)


def stain_blobs(images: np.ndarray, relative: float = 0.5, min_area: int = 15) -> np.ndarray:
    """(N, 3): count of stain blobs of at least `min_area` half-resolution pixels, area of
    the second largest, total area. A blob is a connected region where the stain (blue
    minus green) exceeds the image's 75th percentile by `relative` of its range."""
    _, stain, floor = _half_blurred(images)
    return _blob_stats(stain, floor, relative, min_area)


def _blob_stats(stain, floor, relative: float = 0.5, min_area: int = 15) -> np.ndarray:
    from scipy import ndimage

    n, side = len(stain), stain.shape[1]
    stain = stain.reshape(n, -1)
    top = stain.max(axis=1)
    mask = (stain > (floor + relative * (top - floor))[:, None]).reshape(n, side, side)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # never connect across images
    lab, count = ndimage.label(mask, structure=structure)
    flat = lab.ravel()
    pixels = np.flatnonzero(flat)
    area = np.bincount(flat, minlength=count + 1)
    owner = np.zeros(count + 1, np.int64)
    owner[flat[pixels]] = pixels // (side * side)
    big = np.flatnonzero(area >= min_area)
    big = big[big > 0]
    out = np.zeros((n, 3), np.float32)
    out[:, 0] = np.bincount(owner[big], minlength=n)
    out[:, 2] = mask.reshape(n, -1).sum(axis=1)
    # second largest big blob per image: sort by (image, area) and take the one before the last
    order = np.lexsort((area[big], owner[big]))
    imgs, areas = owner[big][order], area[big][order]
    ends = np.flatnonzero(np.r_[imgs[1:] != imgs[:-1], True])  # each image's largest blob
    prev = ends - 1
    has_second = (prev >= 0) & (imgs[np.maximum(prev, 0)] == imgs[ends])
    out[imgs[ends][has_second], 1] = areas[prev[has_second]]
    return out


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


# -- report -------------------------------------------------------------------------------

def summarize(result: CleanResult, labels: np.ndarray, *, source: str, input_sha256: str | None,
              settings: dict) -> dict:
    keep = result.keep
    per_reason = {r: int((result.reason == r).sum()) for r in REASONS}
    per_reason_class = {r: np.bincount(labels[result.reason == r], minlength=NUM_CLASSES).tolist()
                        for r in REASONS}
    before = np.bincount(labels, minlength=NUM_CLASSES)
    after = np.bincount(labels[keep], minlength=NUM_CLASSES)
    groups = {kind: sum(g.kind == kind for g in result.groups)
              for kind in (FABRICATED, LABEL_CONFLICT, DUPLICATE, NEAR_DUPLICATE)}
    return {
        "input": source,
        "input_sha256": input_sha256,
        "settings": settings,
        "images_before": int(result.n_images),
        "images_after": int(keep.sum()),
        "removed": int((~keep).sum()),
        "removed_per_reason": per_reason,
        "removed_per_reason_per_class": {r: dict(zip(CLASS_NAMES, v)) for r, v in per_reason_class.items()},
        "groups_per_kind": groups,
        "near_duplicate_pairs": int(len(result.near_pairs)),
        "near_duplicate_pairs_label_differs": int(
            (labels[result.near_pairs[:, 0]] != labels[result.near_pairs[:, 1]]).sum()) if len(result.near_pairs) else 0,
        "outliers_flagged": int(len(result.outlier_index)),
        "outliers_removed": bool(result.dropped_outliers),
        "class_counts_before": dict(zip(CLASS_NAMES, before.tolist())),
        "class_counts_after": dict(zip(CLASS_NAMES, after.tolist())),
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
    }


def write_report(folder, result: CleanResult, images: np.ndarray, labels: np.ndarray, summary: dict,
                 max_pairs_per_page: int = 100) -> list[Path]:
    """removed.csv, flagged.csv, summary.json and PNGs into `folder`; returns the files."""
    from . import report

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    short = report.SHORT_NAMES

    kept_of = {g.id: g.kept for g in result.groups}
    sim_of = _pair_similarity_lookup(result)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["index", "label", "class", "reason", "group", "kept_index", "similarity"])
    for i in result.removed_index:
        gid = result.group_of[i]
        kept = kept_of.get(gid, -1)
        sim = sim_of.get((kept, int(i)), "") if kept >= 0 and result.reason[i] in (NEAR_DUPLICATE, NEAR_CONFLICT) else ""
        out.writerow([int(i), int(labels[i]), CLASS_NAMES[labels[i]], result.reason[i], gid,
                      kept if kept >= 0 else "", f"{sim:.5f}" if sim != "" else ""])
    write_text_atomic(folder / "removed.csv", buf.getvalue())
    written.append(folder / "removed.csv")

    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["index", "label", "class", "isolation_score", "removed"])
    for i in result.outlier_index:
        out.writerow([int(i), int(labels[i]), CLASS_NAMES[labels[i]], f"{result.outlier_score[i]:.5f}",
                      int(result.dropped_outliers)])
    write_text_atomic(folder / "flagged_outliers.csv", buf.getvalue())
    written.append(folder / "flagged_outliers.csv")

    write_json_atomic(folder / "summary.json", summary)
    written.append(folder / "summary.json")

    # One figure per fabricated group: the picture and the spread of its labels.
    for g in (g for g in result.groups if g.kind == FABRICATED):
        path = folder / f"group_{g.id}_fabricated.png"
        report.save_group_spread(path, images[g.members[0]], np.bincount(labels[g.members], minlength=NUM_CLASSES),
                                 title=f"Fabricated group {g.id}: {len(g.members)} identical copies "
                                       f"(first #{g.members[0]}), all removed")
        written.append(path)

    # Pairs side by side: kept (green) | removed (red); conflicts show both copies in red.
    for kind, name in ((LABEL_CONFLICT, "label_conflicts"), (DUPLICATE, "duplicates"),
                       (NEAR_DUPLICATE, "near_duplicates")):
        tiles, titles, colours = [], [], []
        for g in (g for g in result.groups if g.kind == kind):
            first = g.members[0] if g.kept < 0 else g.kept
            for other in g.members[g.members != first]:
                tag = ""
                if kind == NEAR_DUPLICATE:
                    s = sim_of.get((int(first), int(other)))
                    tag = f" {s:.4f}" if s is not None else " chain"
                tiles += [first, other]
                titles += [f"{g.id} #{first} {short[labels[first]]}", f"#{other} {short[labels[other]]}{tag}"]
                colours += ["green" if g.kept >= 0 else "red", "red"]
        for page, start in enumerate(range(0, len(tiles), 2 * max_pairs_per_page)):
            sl = slice(start, start + 2 * max_pairs_per_page)
            suffix = f"_{page + 1}" if len(tiles) > 2 * max_pairs_per_page else ""
            path = folder / f"{name}{suffix}.png"
            report.save_tile_grid(path, images[np.array(tiles[sl])], titles[sl], ncols=10,
                                  colors=colours[sl], max_images=2 * max_pairs_per_page,
                                  title=f"{name.replace('_', ' ')}: pairs side by side, green kept, red removed"
                                        + ("\ncaption: group #index class cosine" if kind == NEAR_DUPLICATE else ""))
            written.append(path)

    idx = result.outlier_index[:100]
    path = folder / "outliers.png"
    verb = "removed" if result.dropped_outliers else "flagged, kept (use --drop-outliers to remove)"
    report.save_tile_grid(path, images[idx], [f"#{i} {short[labels[i]]} {result.outlier_score[i]:.3f}" for i in idx],
                          ncols=10, title=f"Isolation Forest outliers ({len(result.outlier_index)}, most "
                                           f"anomalous first): {verb}")
    written.append(path)

    path = folder / "class_counts.png"
    series = {"before": np.bincount(labels, minlength=NUM_CLASSES),
              "after": np.bincount(labels[result.keep], minlength=NUM_CLASSES)}
    report.save_class_bars(path, series, title="Images per class, before and after cleaning")
    written.append(path)
    return written


def _pair_similarity_lookup(result: CleanResult) -> dict:
    return {(int(i), int(j)): float(s) for (i, j), s in zip(result.near_pairs, result.near_sims)}


def format_summary(summary: dict) -> str:
    lines = [f"{summary['input']}: {summary['images_before']} images -> {summary['images_after']} kept, "
             f"{summary['removed']} removed"]
    groups = summary["groups_per_kind"]
    labels = {FABRICATED: f"fabricated ({groups[FABRICATED]} groups > {summary['settings']['group_threshold']} copies)",
              LABEL_CONFLICT: f"label conflicts ({groups[LABEL_CONFLICT]} groups, all copies)",
              DUPLICATE: f"exact duplicates ({groups[DUPLICATE]} groups, first kept)",
              NEAR_DUPLICATE: f"near-duplicates (cos >= {summary['settings']['near_threshold']}, "
                              f"{groups[NEAR_DUPLICATE]} groups, first kept)",
              NEAR_CONFLICT: "near-duplicates with a different label",
              OUTLIER: "outliers (--drop-outliers)"}
    for r in REASONS:
        lines.append(f"  {labels[r]:<62} {summary['removed_per_reason'][r]:>6}")
    lines.append(f"  outliers flagged (IsolationForest, contamination "
                 f"{summary['settings']['contamination']:.4f}): {summary['outliers_flagged']}"
                 f"{' removed' if summary['outliers_removed'] else ' kept, shown in outliers.png'}")
    lines.append("  class        before  after")
    for name in CLASS_NAMES:
        lines.append(f"  {name[:12]:<12} {summary['class_counts_before'][name]:>6} {summary['class_counts_after'][name]:>6}")
    lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()))
    return "\n".join(lines)


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
                        help="zip-compress the output npz (~25%% smaller, ~10x slower to write)")
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
    if Path(args.report).exists() and not Path(args.report).is_dir():
        raise UserError(f"{args.report}: --report: exists and is not a folder; expected a folder")


@run_cli
def main(argv=None):
    args = _parse(argv)
    _check_args(args)
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
    save_npz_atomic(args.out, compress=args.compress, images=data.images[keep], labels=data.labels[keep])
    write_report(args.report, result, data.images, data.labels, summary)
    print(format_summary(summary))
    if not keep.any():
        print("warning: no image left after cleaning; check --group-threshold", file=sys.stderr)
    print(f"cleaned set: {args.out} ({int(keep.sum())} images); report: {args.report}/ "
          f"(removed.csv, flagged_outliers.csv, summary.json, PNGs)")


if __name__ == "__main__":
    main()
