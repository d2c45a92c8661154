"""The cleaning stage: fabricated groups, label conflicts, duplicates, near-duplicates and
outliers, on real PBC images with planted contaminants and on the synthetic demo set."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from bloodcells import clean as CLI
from bloodcells import cleaning as C
from bloodcells import embeddings
from bloodcells.cli import UserError
from bloodcells.files import sha256_file
from conftest import snapshot

# Pairs in pbc96_dev.npz (train + val) that the default descriptor puts at cosine >= 0.995.
# Each was inspected side by side: the same cells photographed twice with the field shifted
# by tens of pixels (SOURCE.md: near-duplicates were not searched for). They are real
# near-duplicates, so the cleaner is right to drop the second copy.
KNOWN_REAL_PAIRS = {
    ("eosinophil/EO_217076.jpg", "eosinophil/EO_548865.jpg"),
    ("erythroblast/ERB_20087.jpg", "erythroblast/ERB_476900.jpg"),
    ("erythroblast/ERB_271613.jpg", "erythroblast/ERB_454654.jpg"),
    ("erythroblast/ERB_288825.jpg", "erythroblast/ERB_231898.jpg"),
    ("erythroblast/ERB_952688.jpg", "erythroblast/ERB_633119.jpg"),
    ("erythroblast/ERB_984537.jpg", "erythroblast/ERB_287222.jpg"),
    ("ig/MMY_675168.jpg", "ig/MY_89581.jpg"),
    ("neutrophil/NEUTROPHIL_501624.jpg", "neutrophil/NEUTROPHIL_971896.jpg"),
}


def run(argv):
    """Run the CLI in-process; returns its exit status."""
    with pytest.raises(SystemExit) as exc:
        CLI.main([str(a) for a in argv])
    return exc.value.code


def edge_shift(img, dy, dx):
    padded = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[3 - dy:3 - dy + 96, 3 - dx:3 - dx + 96])


def noisy(img, rng, sigma):
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def meme_with_cell(cell, rng, alpha):
    """A procedurally drawn 'meme' (gradient, stripes, discs, caption bars) with a real
    cell blended into the middle, like the competition's two fabricated pictures."""
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    picture = np.stack([255 * yy, 200 * xx + 30, 180 * (1 - yy) + 40], axis=-1)
    picture[(np.arange(96) // 8 % 3 == 0)] *= 0.6
    for _ in range(5):
        cy, cx, r = rng.integers(0, 96, 2).tolist() + [int(rng.integers(6, 18))]
        picture[(np.mgrid[0:96, 0:96][0] - cy) ** 2 + (np.mgrid[0:96, 0:96][1] - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    picture[4:16, 8:88] = 255
    picture[7:13, 12:84:6] = 0  # caption "letters"
    picture[80:92, 8:88] = 255
    disc = ((np.mgrid[0:96, 0:96][0] - 48) ** 2 + (np.mgrid[0:96, 0:96][1] - 48) ** 2 < 30 ** 2)[..., None]
    mixed = np.where(disc, (1 - alpha) * picture + alpha * cell, picture)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


# -- a contaminated AN2DL-shaped file from real images ---------------------------------------

@pytest.fixture(scope="module")
def contaminated(pbc_path, tmp_path_factory):
    """800 real train images (including the 4 known real near-duplicate pairs of the train
    split), 1,600 + 200 fabricated copies with labels over all classes, 4 duplicated
    images (5 extra copies) and one identical pair with conflicting labels, shuffled."""
    rng = np.random.default_rng(7)
    with np.load(pbc_path) as f:
        images, labels, files = f["train_images"], f["train_labels"][:, 0].astype(np.int64), f["train_files"]
    name_to_index = {str(n): i for i, n in enumerate(files)}
    pair_members = [(name_to_index[a], name_to_index[b]) for a, b in KNOWN_REAL_PAIRS
                    if a in name_to_index and b in name_to_index]
    assert len(pair_members) == 4
    in_pairs = {i for p in pair_members for i in p}
    others = np.setdiff1d(np.arange(len(images)), sorted(in_pairs))
    others = rng.permutation(others)
    real = np.concatenate([others[:792], sorted(in_pairs)])
    dup_sources = others[:4]
    conflict_source = int(others[800])

    parts = [("real", real, images[real], labels[real])]
    for n, alpha, cell in ((1600, 0.45, images[others[801]]), (200, 0.55, images[others[802]])):
        picture = meme_with_cell(cell, rng, alpha)
        parts.append((f"fabricated_{n}", np.full(n, -1), np.broadcast_to(picture, (n, 96, 96, 3)),
                      rng.permutation(np.arange(n) % 8)))
    dup_copies = np.r_[dup_sources, dup_sources[:1]]  # the first image gets two extra copies
    parts.append(("duplicate", dup_copies, images[dup_copies], labels[dup_copies]))
    other_label = (labels[conflict_source] + 3) % 8
    parts.append(("conflict", np.full(2, conflict_source), images[[conflict_source] * 2],
                  np.array([labels[conflict_source], other_label])))

    kind = np.concatenate([np.full(len(p[1]), p[0], dtype=object) for p in parts])
    origin = np.concatenate([p[1] for p in parts])  # train index of the real image, -1 if fabricated
    all_images = np.concatenate([p[2] for p in parts])
    all_labels = np.concatenate([p[3] for p in parts])
    order = rng.permutation(len(all_labels))
    kind, origin, all_images, all_labels = kind[order], origin[order], all_images[order], all_labels[order]

    expected = {}  # position -> reason
    for pos in np.flatnonzero(np.char.startswith(kind.astype(str), "fabricated")):
        expected[int(pos)] = C.FABRICATED
    for pos in np.flatnonzero(kind == "conflict"):
        expected[int(pos)] = C.LABEL_CONFLICT
    for src in dup_sources:  # every copy after the first position
        for pos in np.flatnonzero(origin == src)[1:]:
            expected[int(pos)] = C.DUPLICATE
    for a, b in pair_members:  # the later of the two real near-duplicates
        later = max(int(np.flatnonzero(origin == a)[0]), int(np.flatnonzero(origin == b)[0]))
        expected[later] = C.NEAR_DUPLICATE

    folder = tmp_path_factory.mktemp("contaminated")
    path = folder / "training_set.npz"
    np.savez(path, images=all_images, labels=all_labels.astype(np.uint8)[:, None])  # AN2DL: (N, 1)
    digest, mtime = sha256_file(path), path.stat().st_mtime_ns
    out, report = folder / "clean.npz", folder / "report"
    code = run([path, "--out", out, "--report", report, "--quiet"])
    return dict(path=path, out=out, report=report, code=code, images=all_images, labels=all_labels,
                kind=kind, expected=expected, digest=digest, mtime=mtime)


def read_removed(report):
    with open(report / "removed.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.realdata
def test_contaminated_file_loses_exactly_the_planted_images(contaminated):
    c = contaminated
    assert c["code"] == 0
    assert len(c["images"]) == 800 + 1800 + 5 + 2
    rows = read_removed(c["report"])
    removed = {int(r["index"]): r["reason"] for r in rows}
    assert removed == c["expected"]  # same indices and the same reason for each
    assert sum(r == C.FABRICATED for r in removed.values()) == 1800
    # No other real image removed: every real image not listed above survives.
    keep = np.setdiff1d(np.arange(len(c["labels"])), sorted(removed))
    with np.load(c["out"]) as f:
        assert sorted(f.files) == ["images", "labels"]
        np.testing.assert_array_equal(f["images"], c["images"][keep])
        np.testing.assert_array_equal(f["labels"], c["labels"][keep])
    assert len(keep) == 800 - 4  # the real images minus the 4 real near-duplicates (copies and conflict gone)


@pytest.mark.realdata
def test_contaminated_report(contaminated):
    c = contaminated
    report = c["report"]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["input_sha256"] == c["digest"]
    assert summary["removed_per_reason"] == {C.FABRICATED: 1800, C.LABEL_CONFLICT: 2, C.DUPLICATE: 5,
                                             C.NEAR_DUPLICATE: 4, C.NEAR_CONFLICT: 0, C.OUTLIER: 0}
    assert summary["groups_per_kind"] == {C.FABRICATED: 2, C.LABEL_CONFLICT: 1, C.DUPLICATE: 4, C.NEAR_DUPLICATE: 4}
    before = np.bincount(c["labels"], minlength=8)
    assert list(summary["class_counts_before"].values()) == before.tolist()
    assert sum(summary["class_counts_after"].values()) == summary["images_after"] == 796
    fabricated = summary["removed_per_reason_per_class"][C.FABRICATED]
    assert list(fabricated.values()) == [225] * 8  # labels spread over every class
    # Group ids tie rows together: the kept image of a duplicate group is not removed.
    rows = read_removed(report)
    kept = {int(r["kept_index"]) for r in rows if r["kept_index"]}
    assert not kept & {int(r["index"]) for r in rows}
    assert {r["group"] for r in rows if r["reason"] == C.FABRICATED} == {"F1", "F2"}
    # Outliers: flagged and listed, none removed by default.
    with open(report / "flagged_outliers.csv") as fh:
        flagged = list(csv.DictReader(fh))
    n_left = 796
    assert len(flagged) == summary["outliers_flagged"] and abs(len(flagged) - n_left * C.DEFAULT_CONTAMINATION) <= 2
    assert all(r["removed"] == "0" for r in flagged)
    assert not {int(r["index"]) for r in flagged} & set(c["expected"])
    for png in ("group_F1_fabricated.png", "group_F2_fabricated.png", "label_conflicts.png", "duplicates.png",
                "near_duplicates.png", "outliers.png", "class_counts.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not list(report.parent.rglob("*.tmp"))


@pytest.mark.realdata
def test_input_is_never_modified(contaminated):
    assert sha256_file(contaminated["path"]) == contaminated["digest"]
    assert contaminated["path"].stat().st_mtime_ns == contaminated["mtime"]


# -- near-duplicates ----------------------------------------------------------------------------

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


# -- exact duplicates ---------------------------------------------------------------------------

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


# -- outliers ---------------------------------------------------------------------------------

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


# -- the synthetic demo set ------------------------------------------------------------------

def test_synthetic_demo_set(tmp_path):
    synth = pytest.importorskip("bloodcells.synth")
    s = synth.generate(seed=0, per_class=60)
    path = tmp_path / "demo.npz"
    np.savez(path, images=s.images, labels=s.labels)
    n_outliers = int((s.kinds == "outlier").sum())
    contamination = 2 * n_outliers / len(s.labels)
    assert run([path, "--out", tmp_path / "clean.npz", "--report", tmp_path / "rep",
                "--contamination", contamination, "--quiet"]) == 0
    removed = {int(r["index"]) for r in read_removed(tmp_path / "rep")}
    expected = set(np.flatnonzero(np.isin(s.kinds, ["fabricated_a", "fabricated_b", "conflict"])).tolist())
    for copy in np.flatnonzero(np.isin(s.kinds, ["duplicate", "near_duplicate"])):
        expected.add(max(int(copy), int(s.source[copy])))  # the later of copy and original
    assert removed == expected
    with open(tmp_path / "rep" / "flagged_outliers.csv") as fh:
        flagged = [int(r["index"]) for r in csv.DictReader(fh)]
    hits = int((s.kinds[flagged] == "outlier").sum())
    assert hits >= n_outliers // 2, f"only {hits} of {n_outliers} multi-cell outliers flagged"
    assert not set(flagged) & removed
    # same inputs and seed, same outputs
    assert run([path, "--out", tmp_path / "again.npz", "--report", tmp_path / "rep2",
                "--contamination", contamination, "--quiet"]) == 0
    for name in ("removed.csv", "flagged_outliers.csv"):
        assert (tmp_path / "rep" / name).read_bytes() == (tmp_path / "rep2" / name).read_bytes()
    with np.load(tmp_path / "clean.npz") as a, np.load(tmp_path / "again.npz") as b:
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])


# -- command line: errors, atomic output -----------------------------------------------------

def _bad_inputs(folder):
    bad = {}
    bad["missing"] = folder / "nope.npz"
    (folder / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    bad["garbage"] = folder / "garbage.npz"
    np.savez(folder / "shape.npz", images=np.zeros((4, 96, 96), np.uint8), labels=np.zeros(4))
    bad["shape"] = folder / "shape.npz"
    np.savez(folder / "labels.npz", images=np.zeros((4, 96, 96, 3), np.uint8), labels=np.array([0, 1, 9, 2]))
    bad["labels"] = folder / "labels.npz"
    np.savez(folder / "count.npz", images=np.zeros((4, 96, 96, 3), np.uint8), labels=np.array([0, 1]))
    bad["count"] = folder / "count.npz"
    return bad


@pytest.mark.parametrize("case", ["missing", "garbage", "shape", "labels", "count"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    path = _bad_inputs(tmp_path)[case]
    before = snapshot(tmp_path)
    assert run([path, "--out", tmp_path / "out" / "clean.npz", "--report", tmp_path / "rep"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and path.name in err
    assert snapshot(tmp_path) == before


def test_bad_options_and_out_equal_to_input(tmp_path, capsys):
    path = tmp_path / "set.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (12, 96, 96, 3), dtype=np.uint8), labels=np.arange(12) % 8)
    before = snapshot(tmp_path)
    for extra in (["--out", path], ["--out", tmp_path / "x.npz", "--near-threshold", "1.5"],
                  ["--out", tmp_path / "x.npz", "--group-threshold", "1"],
                  ["--out", tmp_path / "x.npz", "--contamination", "0.9"],
                  ["--out", tmp_path / "x.txt"],
                  ["--out", tmp_path / "x.npz", "--embedding", "no_such_backbone"]):
        assert run([path, "--report", tmp_path / "rep", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
    assert snapshot(tmp_path) == before


def test_folder_input_and_atomic_output(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(4)
    data = tmp_path / "cells"
    imgs = rng.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    for k, img in enumerate(imgs):
        (data / ("eosinophil" if k < 3 else "neutrophil")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(data / ("eosinophil" if k < 3 else "neutrophil") / f"{k}.png")
    Image.fromarray(imgs[0]).save(data / "eosinophil" / "copy.png")  # a duplicate
    out, rep = tmp_path / "clean.npz", tmp_path / "rep"
    assert run([data, "--out", out, "--report", rep, "--contamination", "0"]) == 0
    with np.load(out) as f:
        assert len(f["labels"]) == 6
    first = out.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        CLI.main([str(data), "--out", str(out), "--report", str(rep), "--contamination", "0"])
    assert out.read_bytes() == first  # the previous output survives an interrupted write
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


# -- optional network embeddings -------------------------------------------------------------

def test_embedding_from_an_exported_model_and_a_backbone(tmp_path, monkeypatch):
    keras = pytest.importorskip("keras")
    from bloodcells import network
    model_py = network.shipped_model_module()
    spec = {"format": "bloodcells-model/1", "name": "tiny", "weights_file": "model.weights.h5",
            "backbone": "small_cnn", "backbone_options": {"widths": [4, 8], "convs_per_block": 1},
            "input_size": 96, "resize_to": None, "num_classes": 8,
            "head": {"dense_units": 8, "dropout": 0.0, "bn_momentum": 0.9, "activation": "relu"}}
    folder = tmp_path / "tiny"
    folder.mkdir()
    model_py.build_network(spec).save_weights(folder / "model.weights.h5")
    (folder / "model.json").write_text(json.dumps(spec))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 96, 96, 3), dtype=np.uint8)
    embedder = embeddings.gap_embedder(str(folder))
    feats = embeddings.network_embeddings(images, embedder)
    assert feats.shape == (30, 8)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, rtol=1e-4)
    np.savez(tmp_path / "set.npz", images=images, labels=np.arange(30) % 8)
    assert run([tmp_path / "set.npz", "--out", tmp_path / "c.npz", "--report", tmp_path / "rep",
                "--embedding", folder, "--contamination", "0"]) == 0
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["settings"]["embedding"] == str(folder)

    # An ImageNet backbone: built untrained here (no network for the weight download)...
    backbone = embeddings.gap_embedder("mobilenetv2", backbone_weights=None)
    assert backbone(images[:2].astype(np.float32)).shape == (2, 1280)

    # ...and a failed download becomes one line naming the option.
    def offline(*args, **kwargs):
        raise OSError("URL fetch failure on https://storage.googleapis.com/...: no network")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(UserError, match=r"--embedding: mobilenetv2: could not load imagenet weights") as exc:
        embeddings.gap_embedder("mobilenetv2")
    assert "\n" not in str(exc.value)


# -- issue 27: outputs checked before the cleaning, no empty cleaned set ---------------------

def _small_set(path, n=12):
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8), labels=np.arange(n) % 8)
    return path


def test_unusable_outputs_are_refused_before_the_cleaning(tmp_path, capsys):
    path = _small_set(tmp_path / "set.npz")
    (tmp_path / "a_file").write_text("x")
    before = snapshot(tmp_path)
    for outputs, message in (
            (["--out", tmp_path / "clean.npz", "--report", tmp_path / "a_file" / "rep"],
             "--report: .*a_file is a file, not a folder"),
            (["--out", tmp_path / "a_file" / "clean.npz", "--report", tmp_path / "rep"],
             "--out: .*a_file is a file, not a folder"),
            (["--out", tmp_path / "x.npz", "--report", tmp_path / "x.npz"], "--report: the same path as --out"),
            (["--out", tmp_path / "clean.npz", "--report", "/proc/bloodcells_report"],
             r"--report: cannot write in /proc")):
        assert run([path, *outputs, "--quiet"]) == 2, outputs
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and re.search(message, err), err
    assert snapshot(tmp_path) == before  # nothing cleaned, no npz written


def test_a_cleaning_that_leaves_no_image_is_an_error(tmp_path, capsys):
    path = tmp_path / "copies.npz"
    image = np.random.default_rng(1).integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    np.savez(path, images=np.repeat(image, 25, axis=0), labels=np.arange(25) % 8)  # one fabricated group
    out, rep = tmp_path / "clean.npz", tmp_path / "rep"
    assert run([path, "--out", out, "--report", rep, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: images: cleaning removed all 25 images, nothing written to {out}; expected at "
                   f"least one left (see {rep}/removed.csv; check --group-threshold, --near-threshold)"]
    assert not out.exists() and len(read_removed(rep)) == 25  # the report says why
