"""What a local evaluation leaves for people to read: `report.html` over every profile's
metrics.json for a zip (bloodcells.evaluate writes the metrics and calls it)."""

from __future__ import annotations

from pathlib import Path

from . import figures, shift
from .figures import percent


def worst_families_text(m: dict) -> str:
    """The sweep's worst families as text, '<family> <accuracy> %, ...'."""
    return ", ".join(f"{f} {100 * a:.1f} %" for f, a in m.get("worst_families", []))


def write_report(eval_dir: Path, zip_name: str, zip_sha: str) -> Path:
    """report.html from every profile's metrics.json for this zip (also ones evaluated
    in an earlier run, e.g. a sweep asked for later)."""
    import json

    summary, sections = [], []
    for profile in shift.PROFILES:
        path = eval_dir / profile / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        if m.get("zip_sha256") != zip_sha:
            continue
        summary.append({"profile": profile, "status": m["status"], "images": m.get("n"),
                        "shift seeds": " ".join(map(str, m.get("seeds") or [])) or m.get("seed", ""),
                        "accuracy %": percent(m.get("accuracy")), "accuracy 95 % CI": _ci(m, "accuracy"),
                        "balanced acc. %": percent(m.get("balanced_accuracy")),
                        "balanced 95 % CI": _ci(m, "balanced_accuracy"),
                        "macro-F1 %": percent(m.get("macro_f1")), "macro-F1 95 % CI": _ci(m, "macro_f1"),
                        "Model() s": m.get("init_seconds"),
                        "predict s": m.get("predict_seconds"), "evaluated": m.get("time")})
        section = {"heading": f"Profile: {profile}"}
        attempt = eval_dir / profile / "failed_attempt.json"
        if m["status"] == "ok" and attempt.exists():
            failed = json.loads(attempt.read_text())
            section["text"] = (f"The last attempt ({failed.get('time')}) FAILED ({failed.get('status')}): "
                               f"{failed.get('message')}; shown here is the earlier successful evaluation "
                               f"({m.get('time')}). Log: {profile}/failed_attempt.log")
        if m["status"] != "ok":
            section.update({"text": f"FAILED ({m['status']}): {m['message']}", "class": "failed",
                            "pre": _tail(eval_dir / profile / "ingestion.log")})
        else:
            pictures = [(f"{profile}/{name}", caption) for name, caption in (
                ("confusion.png", "Confusion matrix: rows true, columns predicted"),
                ("wrong.png", "Wrong guesses with true (t) and predicted (p) class, most confident first"),
                ("confidence.png", "Predictions sorted by confidence, misclassified marked"),
                ("families.png", "Accuracy per corruption family and severity"))
                if (eval_dir / profile / name).exists()]
            section["figures"] = pictures
            tables = []
            if "per_class" in m:
                caption = "Per class" + (" (first shift seed)" if len(m.get("sets") or {}) > 1 else "")
                tables.append({"caption": caption, "rows": [
                    {"class": name, "precision %": percent(v["precision"]), "recall %": percent(v["recall"]),
                     "F1 %": percent(v["f1"]), "support": v["support"]} for name, v in m["per_class"].items()]})
            if len(m.get("sets") or {}) > 1 and "accuracy_spread" in m:
                tables.append({"caption": "Per shift seed (the same images, independent draws of the shift)",
                               "rows": [{"set": name, "seed": v["seed"], "accuracy %": percent(v["accuracy"]),
                                         "95 % interval (Wilson)": _ci(v, "accuracy"),
                                         "balanced acc. %": percent(v["balanced_accuracy"]),
                                         "macro-F1 %": percent(v["macro_f1"])} for name, v in m["sets"].items()]})
            if "accuracy_by_ops" in m:
                tables.append({"caption": "By number of corruptions per image", "rows": [
                    {"corruptions": k, "accuracy %": percent(v[0]), "images": v[1]}
                    for k, v in m["accuracy_by_ops"].items()]})
            if profile == "sweep" and "clean_accuracy" in m:
                tables.append({"caption": "Sweep", "rows": [
                    {"clean subset accuracy %": percent(m["clean_accuracy"]),
                     "mean accuracy over corruptions %": percent(m["accuracy"]),
                     "worst families": worst_families_text(m)}]})
            section["tables"] = tables
        sections.append(section)
    path = eval_dir / "report.html"
    figures.write_html_report(path, f"Local evaluation of {zip_name}", summary, sections,
                             notes=[f"zip sha256 {zip_sha}", PROFILES_NOTE, INTERVALS_NOTE])
    return path


PROFILES_NOTE = (
    "none = the test images as they are; server = each image gets 1-3 random corruptions, our model of "
    "the competition's hidden test (it is not the server's shift: the evidence is indirect, see README); "
    "sweep = every corruption family at every severity.")
INTERVALS_NOTE = (
    "Intervals are 95 %, over test images: Wilson for one set's accuracy, a percentile bootstrap over images "
    "(scipy.stats.bootstrap, seeded) for the rest and for means over shift seeds. They cover sampling noise "
    "of these images, not the difference between this shift and the server's.")


def _ci(m: dict, key: str) -> str:
    ci = m.get(f"{key}_ci")
    return "" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
