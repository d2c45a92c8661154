"""bloodcells.cleaning, the algorithm: exact groups (fabricated, label conflicts,
duplicates), near-duplicates blockwise and in chains, outliers; on constructed arrays and
on real PBC images with planted copies. The command that runs it is tests/test_clean.py's."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcells import cleaning as C
from bloodcells import embeddings
from cells import edge_shift
from clean_helpers import KNOWN_REAL_PAIRS


def noisy(img, rng, sigma):
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


# -- near-duplicates -------------------------------------------------------------------------

@pytest.mark.realdata
def test_near_duplicates_in_the_real_dev_file_are_the_known_recaptures(pbc_path):
    """Over all 5,294 real images, the pairs at >= 0.995 are exactly the 8 inspected re-captures."""
    with np.load(pbc_path) as f:
        images = np.concatenate([f["train_images"], f["val_images"]])
        files = np.concatenate([f["train_files"], f["val_files"]])
    pairs, sims = C.near_duplicate_pairs(embeddings.descriptor_embeddings(images))
    found = {tuple(sorted((str(files[i]), str(files[j])))) for i, j in pairs}
    assert found == {tuple(sorted(p)) for p in KNOWN_REAL_PAIRS}
    assert (sims >= C.DEFAULT_NEAR_THRESHOLD).all()


@pytest.mark.realdata
def test_planted_near_copies_are_found_and_distinct_cells_left_alone(pbc_path):
    rng = np.random.default_rng(3)
    with np.load(pbc_path) as f:
        images = f["val_images"][rng.choice(1707, 300, replace=False)]
    sources = rng.choice(300, 12, replace=False)
    copies = [noisy(images[s], rng, 3) for s in sources[:4]]
    copies += [edge_shift(images[s], dy, dx) for s, (dy, dx) in zip(sources[4:8], [(1, 0), (0, -1), (1, 1), (-1, 1)])]
    copies += [edge_shift(images[s], dy, dx) for s, (dy, dx) in zip(sources[8:10], [(2, 0), (-2, 1)])]
    copies += [noisy(edge_shift(images[s], 1, -1), rng, 2) for s in sources[10:]]
    data = np.concatenate([images, np.stack(copies)])
    labels = np.zeros(len(data), np.int64)
    result = C.clean(data, labels, contamination=0)
    planted = {(int(s), 300 + k) for k, s in enumerate(sources)}
    assert {tuple(p) for p in result.near_pairs.tolist()} == planted
    assert set(result.removed_index.tolist()) == {300 + k for k in range(12)}
    assert (result.reason[300:] == C.NEAR_DUPLICATE).all()
    # the copies are not exact: step 1 found nothing
    assert not any(g.kind in (C.DUPLICATE, C.FABRICATED, C.LABEL_CONFLICT) for g in result.groups)


def test_blockwise_similarity_matches_the_full_matrix():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 16)).astype(np.float32)
    e[10] = e[3] + 0.01 * rng.normal(size=16)
    e[40] = e[10] + 0.01 * rng.normal(size=16)
    e[25] = e[24] + 0.02 * rng.normal(size=16)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    full = e @ e.T
    i, j = np.nonzero(np.triu(full, 1) >= 0.99)
    for block in (7, 16, 1024):
        pairs, sims = C.near_duplicate_pairs(e, 0.99, block=block)
        assert sorted(map(tuple, pairs.tolist())) == sorted(zip(i.tolist(), j.tolist()))
        np.testing.assert_allclose(sims, full[pairs[:, 0], pairs[:, 1]], rtol=1e-5)
    assert {(3, 10), (10, 40), (24, 25)} <= {tuple(p) for p in C.near_duplicate_pairs(e, 0.99, block=7)[0].tolist()}


def test_near_duplicate_chains_keep_the_first_and_flag_label_differences():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(6, 8)).astype(np.float32)
    vectors = np.stack([base[0], base[1], base[0] * 1.0001 + 0.003, base[2], base[0] * 0.9999 - 0.003, base[3]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    images = rng.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)  # distinct bytes: no exact duplicates
    labels = np.array([2, 0, 2, 1, 5, 3])
    result = C.clean(images, labels, embed=lambda imgs, progress: vectors[:len(imgs)], contamination=0)
    assert result.removed_index.tolist() == [2, 4]
    assert result.reason[2] == C.NEAR_DUPLICATE and result.reason[4] == C.NEAR_CONFLICT
    group = [g for g in result.groups if g.kind == C.NEAR_DUPLICATE]
    assert len(group) == 1 and group[0].kept == 0 and group[0].members.tolist() == [0, 2, 4]


# -- exact duplicates -----------------------------------------------------------------------

def test_exact_groups_threshold_conflicts_and_first_kept():
    rng = np.random.default_rng(2)
    a, b, c, d = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    distinct = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    images = np.concatenate([distinct, [a] * 21, [b] * 20, [c, c], [d, d, d]])
    labels = np.concatenate([np.arange(5), np.arange(21) % 8, np.full(20, 4), [1, 6], [3, 3, 3]])
    result = C.clean(images, labels, contamination=0, embed=lambda imgs, p: np.eye(len(imgs), 4, dtype=np.float32))
    reason = result.reason
    assert (reason[5:26] == C.FABRICATED).all()  # 21 copies > 20: every copy removed
    assert reason[26] == "" and (reason[27:46] == C.DUPLICATE).all()  # 20 copies, same label: first kept
    assert (reason[46:48] == C.LABEL_CONFLICT).all()
    assert reason[48] == "" and (reason[49:51] == C.DUPLICATE).all()
    assert (reason[:5] == "").all()
    # at threshold 21 the 21 copies are no longer fabricated: their labels differ, so a conflict
    loose = C.clean(images, labels, group_threshold=21, contamination=0,
                    embed=lambda imgs, p: np.eye(len(imgs), 4, dtype=np.float32))
    assert (loose.reason[5:26] == C.LABEL_CONFLICT).all()


# -- outliers -------------------------------------------------------------------------------

@pytest.mark.realdata
def test_outliers_flagged_by_default_removed_on_request_and_seeded(pbc_path):
    with np.load(pbc_path) as f:
        images, labels = f["val_images"][:400], f["val_labels"][:400, 0].astype(np.int64)
    kept = C.clean(images, labels, contamination=0.02, seed=5)
    again = C.clean(images, labels, contamination=0.02, seed=5)
    dropped = C.clean(images, labels, contamination=0.02, seed=5, drop_outliers=True)
    assert len(kept.outlier_index) == 8
    assert kept.outlier_index.tolist() == again.outlier_index.tolist()
    assert kept.removed_index.size == 0
    assert sorted(dropped.removed_index.tolist()) == sorted(kept.outlier_index.tolist())
    assert (dropped.reason[dropped.outlier_index] == C.OUTLIER).all()
    scores = kept.outlier_score
    assert scores[kept.outlier_index].max() <= np.sort(scores)[len(kept.outlier_index) - 1] + 1e-6
