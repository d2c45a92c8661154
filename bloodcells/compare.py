"""Paired comparison of two evaluated submissions: the per-image predictions each
evaluation stored (submission/eval/<zip>/<profile>/predictions.csv), on the same cached
images, give the accuracy difference with a paired bootstrap interval and an exact McNemar
test per profile, and one verdict line. Runs made on different images (another test set,
another shift draw or shift code) are refused: their difference would mean nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from . import shift, stats
from .cli import UserError
from .files import sha256_file

# The profile whose verdict decides; the first evaluated profile when it is missing.
DECISION_PROFILE = "server"


def load_evaluation(folder) -> dict:
    """{profile: {"metrics": metrics.json, "draws": {seed or None: (labels, predictions)}}}
    for the profiles of an evaluation folder that ran to the end."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such evaluation folder; expected `python local_eval.py ZIP --data TEST` "
                        f"to have been run for this zip")
    found = {}
    for profile_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        metrics_path, predictions_path = profile_dir / "metrics.json", profile_dir / "predictions.csv"
        if not metrics_path.exists() or not predictions_path.exists():
            continue
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("status") != "ok":
            continue
        found[profile_dir.name] = {"metrics": metrics, "draws": _read_predictions(predictions_path)}
    return found


def _read_predictions(path) -> dict:
    draws: dict = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if "seed" not in (reader.fieldnames or []):
            raise UserError(f"{path}: header: no 'seed' column; expected predictions written by this version "
                            f"of local_eval.py (re-evaluate the zip)")
        for row in reader:
            seed = int(row["seed"]) if row["seed"] != "" else None
            draws.setdefault(seed, ([], []))
            draws[seed][0].append(int(row["true"]))
            draws[seed][1].append(int(row["predicted"]))
    return {seed: (np.array(t), np.array(p)) for seed, (t, p) in draws.items()}


def _image_key(metrics: dict, seed) -> str | None:
    return (metrics.get("sets") or {}).get(shift.set_name(metrics["profile"], seed), {}).get("images_sha256")


def compare(folder_a, folder_b, name_a: str, name_b: str) -> dict:
    """{"profiles": {profile: {...}}, "decision": profile, "verdict": (kind, line), "notes": [...]}.
    Raises UserError (one line) when the two runs did not meet the same images."""
    a, b = load_evaluation(folder_a), load_evaluation(folder_b)
    if not a or not b:
        empty = name_a if not a else name_b
        raise UserError(f"{empty}: no completed evaluation with per-image predictions; expected "
                        f"`python local_eval.py {empty} --data TEST` first")
    any_a, any_b = next(iter(a.values()))["metrics"], next(iter(b.values()))["metrics"]
    if any_a.get("data_sha256") != any_b.get("data_sha256"):
        raise UserError(f"{name_b}: data: evaluated on other test images than {name_a} "
                        f"({any_b.get('data')} vs {any_a.get('data')}); expected both evaluated with the same "
                        f"--data and --split")
    profiles = [p for p in list(shift.PROFILES) + sorted(set(a) - set(shift.PROFILES)) if p in a and p in b]
    if not profiles:
        raise UserError(f"{name_b}: profiles: no profile evaluated for both zips (A: {', '.join(a)}; "
                        f"B: {', '.join(b)}); expected the same --profile for both")
    out, notes = {}, []
    for profile in profiles:
        ma, mb = a[profile]["metrics"], b[profile]["metrics"]
        seeds = [s for s in a[profile]["draws"] if s in b[profile]["draws"]]
        if not seeds:
            notes.append(f"{profile}: not compared: no shift seed in common ({sorted(a[profile]['draws'])} vs "
                         f"{sorted(b[profile]['draws'])})")
            continue
        skipped = sorted(set(a[profile]["draws"]) ^ set(b[profile]["draws"]), key=str)
        if skipped:
            notes.append(f"{profile}: compared on the seeds both have ({', '.join(map(str, seeds))}); "
                         f"seed(s) {', '.join(map(str, skipped))} evaluated for one zip only")
        correct_a, correct_b, tests = [], [], []
        for seed in seeds:
            key_a, key_b = _image_key(ma, seed), _image_key(mb, seed)
            where = profile if seed is None else f"{profile} seed {seed}"
            if key_a is None or key_b is None:
                raise UserError(f"{name_a if key_a is None else name_b}: {where}: no record of the images it met; "
                                f"expected an evaluation by this version of local_eval.py (re-evaluate it)")
            if key_a != key_b:
                name = shift.set_name(profile, seed)
                codes = ma["sets"][name].get("shift_code"), mb["sets"][name].get("shift_code")
                raise UserError(f"{name_b}: {where}: met other images than {name_a} (shift code {codes[1]} vs "
                                f"{codes[0]}); expected both evaluated on the same cached shift (the same "
                                f"shift.py and cache, no --refresh-shift in between)")
            (labels_a, pred_a), (labels_b, pred_b) = a[profile]["draws"][seed], b[profile]["draws"][seed]
            if not np.array_equal(labels_a, labels_b):
                raise UserError(f"{name_b}: {where}: predictions.csv labels differ from {name_a}'s; expected "
                                f"the files local_eval.py wrote, unedited")
            correct_a.append(pred_a == labels_a)
            correct_b.append(pred_b == labels_b)
            tests.append({"seed": seed, **stats.mcnemar_exact(correct_a[-1], correct_b[-1])})
        difference = stats.paired_difference(np.array(correct_a), np.array(correct_b))
        label = shift.label(profile) + ("" if seeds == [None] else f" (shift seeds {', '.join(map(str, seeds))})")
        out[profile] = {"seeds": seeds, "difference": difference, "mcnemar": tests,
                        "accuracy_a": float(np.mean(correct_a)), "accuracy_b": float(np.mean(correct_b)),
                        "n": len(correct_a[0]), "label": label,
                        "verdict": stats.verdict(difference, tests, name_a, name_b, label)}
    if not out:
        raise UserError(f"{name_b}: nothing comparable with {name_a}: " + "; ".join(notes))
    decision = DECISION_PROFILE if DECISION_PROFILE in out else next(iter(out))
    return {"profiles": out, "decision": decision, "verdict": out[decision]["verdict"], "notes": notes}


def compare_rows(row_a: dict, row_b: dict) -> dict:
    """compare() for two leaderboard rows, after checking that each row's evaluation folder
    still holds that row's evaluation (the folder is per zip name: evaluating the zip again
    on another test set replaces it)."""
    for row in (row_a, row_b):
        folder = Path(row.get("eval_dir") or "")
        for profile in load_evaluation(folder).values():
            m = profile["metrics"]
            if m.get("zip_sha256") != row.get("zip_sha256") or \
                    not str(m.get("data_sha256") or "").startswith(str(row.get("data_sha256") or "?")):
                raise UserError(f"{row.get('zip')}: {folder} now holds an evaluation on other test images "
                                f"({m.get('data')}); expected this row's, re-evaluate it with --data {row.get('data')}")
    return compare(row_a["eval_dir"], row_b["eval_dir"], row_a.get("zip", "A"), row_b.get("zip", "B"))


def against_best_line(best: dict, row: dict) -> str:
    """The verdict of a newly evaluated row against the leaderboard's best other zip, or
    why they cannot be compared."""
    try:
        result = compare_rows(best, row)
    except UserError as exc:
        return f"against the best so far ({best.get('zip')}): not compared: {exc}"
    return f"against the best so far: {result['verdict'][1]}"


def leaderboard_cell(best: dict, row: dict) -> str:
    """The leaderboard table's `vs #1` cell: B - A on the deciding profile against the
    best zip, when both evaluation folders are still there and met the same images."""
    if not (best.get("eval_dir") and row.get("eval_dir")):
        return ""
    try:
        result = compare_rows(best, row)
    except UserError:
        return "not comparable"
    r = result["profiles"][result["decision"]]
    (low, high), d = r["difference"]["ci"], r["difference"]["difference"]
    word = {"better": "better", "worse": "worse", "tie": "same?"}[r["verdict"][0]]
    return f"{100 * d:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] {word}"


def compare_given(given_a: str, given_b: str, eval_dir) -> str:
    """--compare A B: each a zip (its evaluation folder under eval_dir, which must hold
    this zip's evaluation) or an evaluation folder; the comparison as text."""
    folders, names = [], []
    for given in (given_a, given_b):
        path = Path(given)
        folder = path if path.is_dir() else Path(eval_dir) / path.stem
        if path.is_file():
            _check_same_zip(path, folder)
        folders.append(folder)
        names.append(path.name)
    result = compare(folders[0], folders[1], names[0], names[1])
    return format_comparison(result, names[0], names[1])


def _check_same_zip(path: Path, folder: Path) -> None:
    sha = sha256_file(path)
    for metrics in folder.glob("*/metrics.json"):
        recorded = json.loads(metrics.read_text()).get("zip_sha256")
        if recorded and recorded != sha:
            raise UserError(f"{path}: zip: {folder} holds the evaluation of another zip of that name "
                            f"(sha256 {recorded[:12]}, this one {sha[:12]}); expected `python local_eval.py "
                            f"{path} --data TEST` first")


def _draw(test) -> str:
    return "" if test["seed"] is None else f"seed {test['seed']}: "


def format_comparison(result: dict, name_a: str, name_b: str) -> str:
    """Per profile: both accuracies, B - A with its paired interval, McNemar per draw; then
    the decision line."""
    lines = [f"paired comparison, B = {name_b} against A = {name_a} (same images; 95 % paired bootstrap "
             f"interval over images, {stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}; "
             f"exact McNemar per draw):"]
    for profile, r in result["profiles"].items():
        d, (low, high) = r["difference"]["difference"], r["difference"]["ci"]
        tests = ", ".join(_draw(t) + f"B only {t['only_b']} / A only {t['only_a']}, p {t['p']:.2g}"
                          for t in r["mcnemar"])
        lines.append(f"  {r['label']}, {r['n']} images: A {100 * r['accuracy_a']:.1f} %, B {100 * r['accuracy_b']:.1f} %, "
                     f"B - A {100 * d:+.1f} pt [{100 * low:+.1f}, {100 * high:+.1f}]; {tests}")
    lines += [f"  note: {n}" for n in result["notes"]]
    lines.append(f"verdict ({result['decision']}): {result['verdict'][1]}")
    return "\n".join(lines) + "\n"


__all__ = ["DECISION_PROFILE", "load_evaluation", "compare", "compare_rows", "compare_given", "against_best_line",
           "leaderboard_cell", "format_comparison"]
