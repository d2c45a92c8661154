"""Local evaluation, as the competition server does it: a held-out set, shifted copies
cached so every submission meets the same images, the zip run through ingestion,
its predictions scored, figures and an HTML report, and a leaderboard row.
`local_eval.py` is the command line over this module."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import leaderboard as board
from . import report, shift
from .data import fingerprint
from .files import save_npz_atomic, sha256_file, write_json_atomic, write_text_atomic
from .ingestion import run_submission
from .scoring import family_severity_accuracy, score, write_scores

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO / "submission" / "eval"
LEADERBOARD = REPO / "submission" / "leaderboard.csv"
CACHE_DIR = REPO / "build" / "shift_cache"
DEFAULT_PROFILES = ("none", "server")
SWEEP_IMAGES = 240
# Files one profile's evaluation writes; removed first so nothing stale survives a failure.
PROFILE_FILES = ("scores.json", "metrics.json", "predictions.csv", "ingestion.log", "confusion.png",
                 "wrong.png", "confidence.png", "families.png", "sweep.csv")


# -- inputs ---------------------------------------------------------------------------------

def held_out_split(path, split):
    """A MedMNIST file's held-out split by default (test, else val): never its train split."""
    if split is not None:
        return split
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = set(archive.files)
        except Exception:  # unreadable: load_dataset reports it properly
            return None
        if "images" not in keys:
            for candidate in ("test", "val"):
                if f"{candidate}_images" in keys:
                    print(f"note: {path}: using the held-out '{candidate}' split (--split to choose)")
                    return candidate
    return None


def data_fingerprint(images, labels) -> str:
    """Cache key of a labelled test set (labels hashed as int64, as the data layer gives them)."""
    return fingerprint(images, np.asarray(labels, dtype=np.int64))


def shift_code() -> str:
    """Hash of the shift code (shift.py, second_opinion.py) and of the library version the
    second opinion runs on: recorded so scores made with different shift code can be told apart."""
    import hashlib

    from . import second_opinion

    parts = [sha256_file(shift.__file__), sha256_file(second_opinion.__file__),
             f"{second_opinion.LIBRARY}=={second_opinion.library_version()}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def cached_shift(images, profile: str, seed: int, data_sha: str, cache_dir=CACHE_DIR, refresh=False):
    """(shifted images, per-image plans) from build/shift_cache/<data>_<profile>_<seed>.npz,
    made once. A cache made by older shift code is kept (scores stay comparable with the
    leaderboard's older rows) with a note; --refresh-shift rebuilds it."""
    plans = [shift.plan(i, profile, seed) for i in range(len(images))]
    if profile == "none":
        return images, plans
    path = Path(cache_dir) / f"{data_sha[:16]}_{profile}_{seed}.npz"
    if path.exists() and not refresh:
        try:
            with np.load(path, allow_pickle=False) as cached:
                shifted, code = cached["images"], str(cached["shift_code"])
                ops = list(cached["ops"])
            if shifted.shape == images.shape:
                if code != shift_code():
                    print(f"note: {path}: made by an older shift.py ({code}); kept so scores stay "
                          f"comparable (--refresh-shift to rebuild)")
                return shifted, [_parse_ops(o) for o in ops]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it
    shifted = shift.apply_shift(images, profile, seed, progress=True)
    save_npz_atomic(path, images=shifted, ops=np.asarray(shift.describe(len(images), profile, seed)),
                    shift_code=np.asarray(shift_code()))
    return shifted, plans


def _parse_ops(text: str):
    return [(op.split(":")[0], int(op.split(":")[1])) for op in str(text).split("+") if op]


def sweep_subset(labels, count: int, seed: int) -> np.ndarray:
    """A class-stratified subset for the sweep (every family x severity is a full set)."""
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 7])
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.round(count * counts / counts.sum()).astype(int))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks))


# -- one profile ------------------------------------------------------------------------------

def _fresh_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROFILE_FILES:
        (folder / name).unlink(missing_ok=True)
    return folder


def _waiting(label):
    def notify(elapsed, stage):
        print(f"{label}: {stage or 'starting'}, {elapsed:.0f} s", file=sys.stderr, flush=True)
    return notify


def evaluate_profile(zip_path, data, profile, args, common) -> dict:
    """Ingest + score one profile (none or server); figures; returns its metrics.json."""
    out = _fresh_folder(common["eval_dir"] / profile)
    images, plans = cached_shift(data.images, profile, args.seed, common["data_sha"], args.cache_dir,
                                 args.refresh_shift)
    print(f"{profile}: running {Path(zip_path).name} on {len(images)} images "
          f"(time limit {args.time_limit:g} s)", flush=True)
    result = run_submission(zip_path, {profile: images}, args.time_limit, python=args.python,
                            log_path=out / "ingestion.log", on_wait=_waiting(f"{profile} ingestion"))
    metrics = {**common["meta"], "profile": profile, "status": result.status, "message": result.message,
               "init_seconds": result.init_seconds, "predict_seconds": result.predict_seconds.get(profile),
               "wall_seconds": result.wall_seconds, "n": len(images)}
    if not result.ok:
        write_json_atomic(out / "metrics.json", metrics)
        print(f"{profile}: FAILED ({result.status}): {result.message}\n  log: {out / 'ingestion.log'}")
        return metrics
    predictions = result.predictions[profile]
    proba = result.probabilities.get(profile)
    confidence = proba.max(axis=1) if proba is not None else None
    metrics.update(score(data.labels, predictions))
    correct = predictions == data.labels
    if profile == "server":
        table = family_severity_accuracy(correct, plans)
        metrics["families"] = {f: {"all": table[(f, None)]} | {s: table[(f, s)] for s in shift.SEVERITIES
                                                               if (f, s) in table}
                               for f in shift.FAMILIES if (f, None) in table}
        metrics["accuracy_by_ops"] = {str(k): v for k, v in
                                      sorted(_by_count(correct, plans).items())}
    write_scores(out, metrics, duration=(result.init_seconds or 0) + (metrics["predict_seconds"] or 0))
    write_json_atomic(out / "metrics.json", metrics)
    _write_predictions(out / "predictions.csv", data.labels, predictions, confidence, plans)
    report.save_confusion_matrix(out / "confusion.png", np.asarray(metrics["confusion_matrix"]),
                                 title=f"Confusion matrix, {profile} (accuracy {100 * metrics['accuracy']:.1f} %)")
    report.save_wrong_guesses(out / "wrong.png", images, data.labels, predictions, confidence,
                              title=f"Wrong guesses, {profile}")
    if confidence is not None:
        report.save_confidence_plot(out / "confidence.png", confidence, correct,
                                    title=f"Predictions sorted by confidence, {profile}")
    if profile == "server":
        report.save_family_accuracy(out / "families.png", metrics["families"],
                                    title="Server-like profile: accuracy of the images each family touched",
                                    reference=common.get("clean_accuracy"))
    print(f"{profile}: accuracy {100 * metrics['accuracy']:.2f} % (balanced {100 * metrics['balanced_accuracy']:.2f} %, "
          f"macro-F1 {100 * metrics['macro_f1']:.2f} %); Model() {_s(result.init_seconds)}, "
          f"predict {_s(metrics['predict_seconds'])} -> {out / 'scores.json'}")
    if result.message:
        print(f"{profile}: note: {result.message}")
    return metrics


def evaluate_sweep(zip_path, data, args, common) -> dict:
    out = _fresh_folder(common["eval_dir"] / "sweep")
    index = sweep_subset(data.labels, args.sweep_images, args.seed)
    images, labels = data.images[index], data.labels[index]
    sets = {"clean": images}
    for family, severity, shifted in shift.sweep(images, args.seed):
        sets[f"{family}_s{severity}"] = shifted
    limit = args.time_limit * len(sets)
    print(f"sweep: {len(shift.FAMILIES)} families x 5 severities on {len(index)} images "
          f"(time limit {args.time_limit:g} s per set)", flush=True)
    result = run_submission(zip_path, sets, limit, want_proba=False, python=args.python,
                            log_path=out / "ingestion.log", on_wait=_waiting("sweep ingestion"))
    metrics = {**common["meta"], "profile": "sweep", "status": result.status, "message": result.message,
               "init_seconds": result.init_seconds, "predict_seconds": sum(result.predict_seconds.values()),
               "wall_seconds": result.wall_seconds, "n": len(index)}
    if not result.ok:
        write_json_atomic(out / "metrics.json", metrics)
        print(f"sweep: FAILED ({result.status}): {result.message}\n  log: {out / 'ingestion.log'}")
        return metrics
    accuracy = {name: float((p == labels).mean()) for name, p in result.predictions.items()}
    table = {f: {s: (accuracy[f"{f}_s{s}"], len(index)) for s in shift.SEVERITIES} for f in shift.FAMILIES}
    for f in shift.FAMILIES:
        table[f]["all"] = (float(np.mean([accuracy[f"{f}_s{s}"] for s in shift.SEVERITIES])), len(index) * 5)
    corrupted = [v for k, v in accuracy.items() if k != "clean"]
    metrics.update({"accuracy": float(np.mean(corrupted)), "clean_accuracy": accuracy["clean"],
                    "families": table, "sets": accuracy})
    write_json_atomic(out / "scores.json", {"accuracy": metrics["accuracy"],
                                            "clean_accuracy": accuracy["clean"],
                                            "duration": (result.init_seconds or 0) + metrics["predict_seconds"]})
    write_json_atomic(out / "metrics.json", metrics)
    lines = ["family,severity,accuracy,n"] + [f"{f},{s},{table[f][s][0]:.4f},{len(index)}"
                                              for f in shift.FAMILIES for s in shift.SEVERITIES]
    write_text_atomic(out / "sweep.csv", "\n".join(lines) + "\n")
    report.save_family_accuracy(out / "families.png", table, reference=accuracy["clean"],
                                title=f"Sweep: accuracy per family and severity ({len(index)} images each)")
    print(f"sweep: mean accuracy over corruptions {100 * metrics['accuracy']:.2f} % "
          f"(clean subset {100 * accuracy['clean']:.2f} %) -> {out / 'scores.json'}")
    return metrics


def _by_count(correct, plans) -> dict:
    out = {}
    for ok, steps in zip(correct, plans):
        hit, n = out.get(len(steps), (0, 0))
        out[len(steps)] = (hit + int(ok), n + 1)
    return {k: (hit / n, n) for k, (hit, n) in out.items()}


def _write_predictions(path, labels, predictions, confidence, plans) -> None:
    lines = ["index,true,predicted,correct,confidence,shift"]
    for i, (t, p) in enumerate(zip(labels, predictions)):
        conf = "" if confidence is None else f"{confidence[i]:.4f}"
        ops = "+".join(f"{f}:{s}" for f, s in plans[i])
        lines.append(f"{i},{t},{p},{int(t == p)},{conf},{ops}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def _s(value) -> str:
    return "?" if value is None else f"{value:.1f} s"


# -- report and leaderboard ---------------------------------------------------------------------

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
                        "accuracy %": _pct(m.get("accuracy")),
                        "balanced acc. %": _pct(m.get("balanced_accuracy")),
                        "macro-F1 %": _pct(m.get("macro_f1")), "Model() s": m.get("init_seconds"),
                        "predict s": m.get("predict_seconds"), "evaluated": m.get("time")})
        section = {"heading": f"Profile: {profile}"}
        if m["status"] != "ok":
            section.update({"text": f"FAILED ({m['status']}): {m['message']}", "class": "failed",
                            "pre": _tail(eval_dir / profile / "ingestion.log")})
        else:
            figures = [(f"{profile}/{name}", caption) for name, caption in (
                ("confusion.png", "Confusion matrix: rows true, columns predicted"),
                ("wrong.png", "Wrong guesses with true (t) and predicted (p) class, most confident first"),
                ("confidence.png", "Predictions sorted by confidence, misclassified marked"),
                ("families.png", "Accuracy per corruption family and severity"))
                if (eval_dir / profile / name).exists()]
            section["figures"] = figures
            tables = []
            if "per_class" in m:
                tables.append({"caption": "Per class", "rows": [
                    {"class": name, "precision %": _pct(v["precision"]), "recall %": _pct(v["recall"]),
                     "F1 %": _pct(v["f1"]), "support": v["support"]} for name, v in m["per_class"].items()]})
            if "accuracy_by_ops" in m:
                tables.append({"caption": "By number of corruptions per image", "rows": [
                    {"corruptions": k, "accuracy %": _pct(v[0]), "images": v[1]}
                    for k, v in m["accuracy_by_ops"].items()]})
            if profile == "sweep" and "clean_accuracy" in m:
                tables.append({"caption": "Sweep", "rows": [
                    {"clean subset accuracy %": _pct(m["clean_accuracy"]),
                     "mean accuracy over corruptions %": _pct(m["accuracy"])}]})
            section["tables"] = tables
        sections.append(section)
    path = eval_dir / "report.html"
    report.write_html_report(path, f"Local evaluation of {zip_name}", summary, sections,
                             notes=[f"zip sha256 {zip_sha}",
                                    "none = the test images as they are; server = each image gets 1-3 random "
                                    "corruptions (what the competition's test set looked like); sweep = every "
                                    "corruption family at every severity."])
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pct(value):
    return None if value is None else round(100 * float(value), 2)


def leaderboard_row(common, results: dict, run_seconds: float) -> dict:
    meta = common["meta"]
    failed = [f"{p} {m['status']}" for p, m in results.items() if m["status"] != "ok"]
    row = {"time": meta["time"], "zip": meta["zip"], "zip_sha256": meta["zip_sha256"],
           "status": "failed: " + ", ".join(failed) if failed else "ok", "data": meta["data"],
           "data_sha256": meta["data_sha256"][:16], "seed": meta["seed"], "shift_code": meta["shift_code"],
           "run_seconds": round(run_seconds, 1)}
    for profile, m in results.items():
        ok = m["status"] == "ok"
        row[f"acc_{profile}"] = m.get("accuracy") if ok else ""
        if profile in ("none", "server"):
            row[f"bacc_{profile}"] = m.get("balanced_accuracy") if ok else ""
            row[f"f1_{profile}"] = m.get("macro_f1") if ok else ""
            row[f"predict_seconds_{profile}"] = m.get("predict_seconds")
        if m.get("init_seconds") is not None:
            row["init_seconds"] = round(m["init_seconds"], 2)
    if "server" in results and results["server"]["status"] == "ok":
        for family, cells in results["server"]["families"].items():
            row[f"{board.FAMILY_PREFIX}{family}"] = cells["all"][0]
    return row
