"""bloodcells.clean_report: the summary, the printed summary and the report's files for a
constructed cleaning result with one group of each kind (a real run's report is checked in
tests/test_clean.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bloodcells import CLASS_NAMES
from bloodcells import cleaning as C
from bloodcells.clean_report import format_summary, summarize, write_report

SETTINGS = {"group_threshold": 3, "near_threshold": C.DEFAULT_NEAR_THRESHOLD, "contamination": 0.0}


@pytest.fixture
def cleaned():
    """8 distinct images (labels 0-5, 4, 7); #8 a copy of #2; #9 and #10 one image with two
    labels; #11-14 four copies of one picture (fabricated at threshold 3); #6 a near copy of
    #4 by its embedding (cosine 1 / sqrt(1.0025)), same label."""
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, 256, (8, 96, 96, 3), dtype=np.uint8)
    conflict, picture = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    images = np.concatenate([distinct, distinct[2:3], [conflict] * 2, [picture] * 4])
    labels = np.array([0, 1, 2, 3, 4, 5, 4, 7, 2, 1, 6, 0, 3, 5, 7])
    vectors = np.eye(8, dtype=np.float32)
    vectors[6] = vectors[4] + 0.05 * vectors[6]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = C.clean(images, labels, group_threshold=3, contamination=0.0,
                     embed=lambda remaining, progress: vectors[:len(remaining)])
    return images, labels, result


def test_summary_counts_every_reason_group_and_class(cleaned):
    images, labels, result = cleaned
    summary = summarize(result, labels, source="set.npz", input_sha256="ab" * 32, settings=SETTINGS)
    assert (summary["images_before"], summary["images_after"], summary["removed"]) == (15, 7, 8)
    assert summary["removed_per_reason"] == {C.FABRICATED: 4, C.LABEL_CONFLICT: 2, C.DUPLICATE: 1,
                                             C.NEAR_DUPLICATE: 1, C.NEAR_CONFLICT: 0, C.OUTLIER: 0}
    assert summary["groups_per_kind"] == {C.FABRICATED: 1, C.LABEL_CONFLICT: 1, C.DUPLICATE: 1,
                                          C.NEAR_DUPLICATE: 1}
    assert (summary["near_duplicate_pairs"], summary["near_duplicate_pairs_label_differs"]) == (1, 0)
    assert list(summary["class_counts_before"].values()) == np.bincount(labels, minlength=8).tolist()
    assert list(summary["class_counts_after"].values()) == [1, 1, 1, 1, 1, 1, 0, 1]
    assert list(summary["removed_per_reason_per_class"][C.FABRICATED].values()) == [1, 0, 0, 1, 0, 1, 0, 1]
    assert summary["settings"] == SETTINGS and summary["input_sha256"] == "ab" * 32
    assert summary["outliers_flagged"] == 0 and summary["outliers_removed"] is False
    text = format_summary(summary).splitlines()
    assert text[0] == "set.npz: 15 images -> 7 kept, 8 removed"
    assert text[1].startswith("  fabricated (1 groups > 3 copies)") and text[1].endswith(" 4")
    assert any(line.startswith("  near-duplicates (cos >= 0.995, 1 groups, first kept)") and line.endswith(" 1")
               for line in text)
    assert "  outliers flagged (IsolationForest, contamination 0.0000): 0 kept, shown in outliers.png" in text
    assert f"  {CLASS_NAMES[6][:12]:<12}      1      0" in text


def test_report_lists_each_removed_image_with_its_group_and_kept_copy(cleaned, tmp_path):
    images, labels, result = cleaned
    summary = summarize(result, labels, source="set.npz", input_sha256=None, settings=SETTINGS)
    folder = tmp_path / "report"
    written = write_report(folder, result, images, labels, summary)
    assert [p.name for p in written] == [
        "removed.csv", "flagged_outliers.csv", "summary.json", "group_F1_fabricated.png", "label_conflicts.png",
        "duplicates.png", "near_duplicates.png", "outliers.png", "class_counts.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in written)  # no temporary left
    with open(folder / "removed.csv") as fh:
        rows = [(r["index"], r["reason"], r["group"], r["kept_index"], r["similarity"]) for r in csv.DictReader(fh)]
    assert rows == [("6", C.NEAR_DUPLICATE, "N1", "4", f"{1 / np.sqrt(1.0025):.5f}"),
                    ("8", C.DUPLICATE, "D1", "2", ""),
                    ("9", C.LABEL_CONFLICT, "C1", "", ""), ("10", C.LABEL_CONFLICT, "C1", "", ""),
                    *[(str(i), C.FABRICATED, "F1", "", "") for i in range(11, 15)]]
    assert (folder / "flagged_outliers.csv").read_text() == "index,label,class,isolation_score,removed\n"
    assert json.loads((folder / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path.name
