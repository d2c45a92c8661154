"""bloodcells.clean, the command: a real file with planted contaminants (fabricated groups,
label conflicts, duplicates, near-duplicates) and the synthetic demo set lose exactly what
was planted and get their report; one-line errors, atomic output. The algorithm is
tests/test_cleaning.py's, the report's parts tests/test_clean_report.py's."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from bloodcells import clean as CLI
from bloodcells import cleaning as C
from bloodcells.files import sha256_file
from clean_helpers import KNOWN_REAL_PAIRS, run
from conftest import snapshot


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
