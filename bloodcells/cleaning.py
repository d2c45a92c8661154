"""Cleaning's algorithm: fabricated images, label conflicts, duplicates, near-duplicates
and outliers found in a training set.

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
features live in bloodcells.embeddings, the report in bloodcells.clean_report, the command
line (`python -m bloodcells.clean`) in bloodcells.clean (how well the descriptor separates
copies from distinct cells: bench/RESULTS.md, "Cleaning").
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from .cli import Progress
from .embeddings import descriptor_embeddings, outlier_features

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
