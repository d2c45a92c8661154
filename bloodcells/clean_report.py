"""The cleaning report (bloodcells.clean): summary.json, removed.csv, flagged_outliers.csv
and the figures a person checks before trusting the cleaned set, plus the summary printed
at the end of `python -m bloodcells.clean`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, NUM_CLASSES
from .cleaning import (DUPLICATE, FABRICATED, LABEL_CONFLICT, NEAR_CONFLICT, NEAR_DUPLICATE, OUTLIER, REASONS,
                    CleanResult)
from .files import write_json_atomic, write_text_atomic

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
    from . import figures

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    short = figures.SHORT_NAMES

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
        figures.save_group_spread(path, images[g.members[0]], np.bincount(labels[g.members], minlength=NUM_CLASSES),
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
            figures.save_tile_grid(path, images[np.array(tiles[sl])], titles[sl], ncols=10,
                                  colors=colours[sl], max_images=2 * max_pairs_per_page,
                                  title=f"{name.replace('_', ' ')}: pairs side by side, green kept, red removed"
                                        + ("\ncaption: group #index class cosine" if kind == NEAR_DUPLICATE else ""))
            written.append(path)

    idx = result.outlier_index[:100]
    path = folder / "outliers.png"
    verb = "removed" if result.dropped_outliers else "flagged, kept (use --drop-outliers to remove)"
    figures.save_tile_grid(path, images[idx], [f"#{i} {short[labels[i]]} {result.outlier_score[i]:.3f}" for i in idx],
                          ncols=10, title=f"Isolation Forest outliers ({len(result.outlier_index)}, most "
                                           f"anomalous first): {verb}")
    written.append(path)

    path = folder / "class_counts.png"
    series = {"before": np.bincount(labels, minlength=NUM_CLASSES),
              "after": np.bincount(labels[result.keep], minlength=NUM_CLASSES)}
    figures.save_class_bars(path, series, title="Images per class, before and after cleaning")
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
