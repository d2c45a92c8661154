"""Local evaluation of a submission zip, as the competition server does it: a held-out
set, shifted copies cached so every submission meets the same images, the zip run
through ingestion, its predictions scored, figures, the HTML report and the zip's
leaderboard row.

`evaluate_zip(EvalSettings(zip_path=..., data=...))` is the whole run, callable without
a command line; `local_eval.py` parses its options into an EvalSettings and prints the
outcome. The report's layout is bloodcells.eval_report's, the leaderboard row's
bloodcells.leaderboard's."""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import corruptions, figures, sandbox, shift, stats
from . import leaderboard as board
from .cli import UserError, check_output_file, check_output_folder
from .corruptions import FAMILIES, SEVERITIES
from .data import Dataset, fingerprint, load_dataset
from .eval_report import worst_families_text, write_report
from .files import save_npz_atomic, sha256_file, write_json_atomic, write_text_atomic
from .ingestion import DEFAULT_TIME_LIMIT, check_zip, run_submission, time_limit_text
from .shipped import REPO_ROOT
from .scoring import family_severity_accuracy, score, write_scores

REPO = REPO_ROOT  # outputs default to the repository's submission/ and build/
EVAL_DIR = REPO / "submission" / "eval"
LEADERBOARD = REPO / "submission" / "leaderboard.csv"
CACHE_DIR = REPO / "build" / "shift_cache"
# The profiles local evaluation runs by default, in the registry's order (reports and the leaderboard's).
DEFAULT_PROFILES = tuple(name for name, p in shift.REGISTRY.items() if p.evaluated_by_default)
# Shift seeds of the evaluation: several draws of the shift, none of them the seed training
# selects epochs with (configs' [shift] seed = 0).
EVAL_SEEDS = (1, 2, 3)
TRAINING_SHIFT_SEED = 0
# Pairs of shift estimates that should agree; when their intervals do not overlap, the output
# says so (two independent models of the server's shift disagree).
CROSS_CHECKS = (("server", "second_opinion"),)
INTERVAL_KEYS = ("accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1",
                 "macro_f1_ci", "n")
SWEEP_IMAGES = 240
MIN_SWEEP_IMAGES = 8
# Files one profile's evaluation writes; removed first so nothing stale survives a failure.
PROFILE_FILES = ("scores.json", "metrics.json", "predictions.csv", "ingestion.log", "confusion.png",
                 "wrong.png", "confidence.png", "families.png", "sweep.csv", "failed_attempt.json",
                 "failed_attempt.log")


# -- settings and the whole run ---------------------------------------------------------------

@dataclass(frozen=True)
class EvalSettings:
    """Everything one evaluation of a zip depends on. Checked when made: a bad value is a
    one-line UserError naming the field as local_eval.py's option spells it."""

    zip_path: Path
    data: str  # a labelled test set in any format bloodcells.data reads
    split: str | None = None  # its MedMNIST split; None: the held-out one (test, else val)
    profiles: tuple[str, ...] = DEFAULT_PROFILES  # run in this order, duplicates dropped
    seeds: tuple[int, ...] = EVAL_SEEDS  # one draw of each shifted profile per seed
    time_limit: float = DEFAULT_TIME_LIMIT  # seconds for Model() + predict, per image set
    sweep_images: int = SWEEP_IMAGES
    python: str = sys.executable  # the interpreter the submission runs under
    eval_dir: Path = EVAL_DIR
    leaderboard_file: Path = LEADERBOARD
    cache_dir: Path = CACHE_DIR
    refresh_shift: bool = False  # rebuild cached shifted sets

    def __post_init__(self):
        # frozen: normalised through object.__setattr__, once, here
        for name, value in (("zip_path", Path(self.zip_path)), ("data", str(self.data)),
                            ("profiles", tuple(dict.fromkeys(self.profiles))),
                            ("seeds", tuple(dict.fromkeys(int(s) for s in self.seeds))),
                            ("eval_dir", Path(self.eval_dir)), ("leaderboard_file", Path(self.leaderboard_file)),
                            ("cache_dir", Path(self.cache_dir))):
            object.__setattr__(self, name, value)
        bad = [p for p in self.profiles if p not in shift.PROFILES]
        if bad:
            raise UserError(f"--profile: unknown '{bad[0]}'; expected some of {', '.join(shift.PROFILES)}")
        if not self.profiles:
            raise UserError(f"--profile: none given; expected some of {', '.join(shift.PROFILES)}")
        if not self.time_limit > 0:
            raise UserError(f"--time-limit: {self.time_limit:g}; expected a positive number of seconds")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise UserError(f"--seeds: {' '.join(map(str, self.seeds))}; expected non-negative integers")
        if self.sweep_images < MIN_SWEEP_IMAGES:
            raise UserError(f"--sweep-images: {self.sweep_images}; expected at least {MIN_SWEEP_IMAGES}")


@dataclass
class EvalRun:
    """What every profile of one evaluation shares."""

    settings: EvalSettings
    data: Dataset
    folder: Path  # <eval_dir>/<zip name>: a sub-folder per profile, report.html
    data_sha: str
    meta: dict  # heads every profile's metrics.json (and makes the leaderboard row's key)
    clean_accuracy: float | None = None  # the `none` profile's, the reference in family figures


@dataclass
class Evaluation:
    """The outcome of evaluate_zip."""

    results: dict  # profile -> its metrics.json
    report: Path
    row: dict  # the zip's leaderboard row as recorded (earlier columns kept)
    rows: list[dict]  # the whole leaderboard after recording it
    images: int  # test images per set

    @property
    def ok(self) -> bool:
        return all(m["status"] == "ok" for m in self.results.values())


def evaluate_zip(settings: EvalSettings) -> Evaluation:
    """Evaluate a zip under each profile of the settings; writes <eval_dir>/<zip>/ (per
    profile scores, metrics, predictions, figures; report.html) and the zip's leaderboard
    row, and prints progress. A submission that fails is an outcome (Evaluation.ok is
    False), not an exception; bad settings or inputs raise UserError before any work."""
    check_output_file(settings.leaderboard_file, "--leaderboard-file")
    check_output_folder(settings.eval_dir, "--eval-dir")
    check_output_folder(settings.cache_dir, "--cache-dir")
    zip_path = settings.zip_path
    check_zip(zip_path)
    data = load_dataset(settings.data, held_out_split(settings.data, settings.split))
    start = time.monotonic()
    zip_sha = sha256_file(zip_path)
    data_sha = data_fingerprint(data.images, data.labels)
    meta = {"time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "zip": zip_path.name, "zip_sha256": zip_sha, "data": data.source, "data_sha256": data_sha,
            "seeds": list(settings.seeds), "shift_code": shift_code(), "time_limit": settings.time_limit}
    run = EvalRun(settings, data, settings.eval_dir / zip_path.stem, data_sha, meta)
    results = {}
    for profile in settings.profiles:
        if profile == "sweep":  # the family x severity table: sets of its own, not draws of a plan
            results[profile] = evaluate_sweep(run)
        else:
            results[profile] = evaluate_profile(run, profile)
            if profile == "none" and results[profile]["status"] == "ok":
                run.clean_accuracy = results[profile]["accuracy"]
    for line in cross_check(results):
        print(line)
    page = write_report(run.folder, zip_path.name, zip_sha)
    print(f"report: {page}")
    new_row = board.evaluation_row(meta, run.folder, results, time.monotonic() - start)
    row = board.record_evaluation(settings.leaderboard_file, new_row)
    return Evaluation(results, page, row, board.read_rows(settings.leaderboard_file), len(data.labels))


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
    """Hash of the shift code (shift.py, corruptions.py, second_opinion.py) and of the library
    version the second opinion runs on: recorded so scores made with different shift code can
    be told apart."""
    import hashlib

    from . import second_opinion

    parts = [sha256_file(module.__file__) for module in (shift, corruptions, second_opinion)]
    parts += [f"{second_opinion.LIBRARY}=={second_opinion.library_version()}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def cached_shift(images, profile: str, seed: int, data_sha: str, cache_dir=CACHE_DIR, refresh=False):
    """(shifted images, per-image plans, shift code that made them) from
    build/shift_cache/<data>_<profile>_<seed>.npz, made once. A cache made by older shift
    code is kept (scores stay comparable with the leaderboard's older rows) with a note;
    --refresh-shift rebuilds it."""
    plans = _plans(profile, len(images), seed)
    if profile == "none":
        return images, plans, ""
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
                return shifted, [shift.decode_ops(o) for o in ops], code
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it
    shifted = shift.apply_shift(images, profile, seed, progress=True)
    ops = [shift.encode_ops(steps) for steps in plans]
    save_npz_atomic(path, images=shifted, ops=np.asarray(ops), shift_code=np.asarray(shift_code()))
    return shifted, plans, shift_code()


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


def _attempt_log(folder: Path) -> Path:
    """Where a run logs until it is known whether it replaces the folder's evaluation."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".ingestion.*.log"):  # left by a run that was killed
        pid = stale.name.split(".")[2]
        if pid.isdigit() and not sandbox.alive(int(pid)):
            stale.unlink(missing_ok=True)
    return folder / f".ingestion.{os.getpid()}.log"


def _holds_success(folder: Path, zip_sha: str) -> bool:
    try:
        m = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return m.get("status") == "ok" and m.get("zip_sha256") == zip_sha


def _keep_result(out: Path, log: Path, metrics: dict, ok: bool) -> None:
    """A successful run replaces the folder's files. A failed one never erases an earlier
    successful evaluation of this zip: it is recorded beside it (failed_attempt.json/.log)."""
    profile = metrics["profile"]
    if not ok and _holds_success(out, metrics["zip_sha256"]):
        write_json_atomic(out / "failed_attempt.json", metrics)
        os.replace(log, out / "failed_attempt.log")
        print(f"{profile}: FAILED ({metrics['status']}): {metrics['message']}\n  log: {out / 'failed_attempt.log'}"
              f"\n  {profile}: the earlier successful evaluation in {out} is kept")
        return
    _fresh_folder(out)
    os.replace(log, out / "ingestion.log")
    if not ok:
        write_json_atomic(out / "metrics.json", metrics)
        print(f"{profile}: FAILED ({metrics['status']}): {metrics['message']}\n  log: {out / 'ingestion.log'}")


def _waiting(label):
    def notify(elapsed, stage):
        print(f"{label}: {stage or 'starting'}, {elapsed:.0f} s", file=sys.stderr, flush=True)
    return notify


def _plans(profile, n, seed):
    """Per-image operations ([] for every image of `none`: no family table)."""
    return [shift.plan(i, profile, seed) for i in range(n)]


def evaluate_profile(run: EvalRun, profile: str) -> dict:
    """Ingest + score one profile: `none` once, a shifted profile once per seed (one
    Model() for all draws); intervals, figures; returns its metrics.json."""
    settings, data, zip_path = run.settings, run.data, run.settings.zip_path
    out = run.folder / profile
    seeds = [None] if profile == "none" else list(settings.seeds)
    sets, plans, origin = {}, {}, {}
    for seed in seeds:
        name = shift.set_name(profile, seed)
        sets[name], plans[name], code = cached_shift(data.images, profile, seed or 0, run.data_sha,
                                                     settings.cache_dir, settings.refresh_shift)
        origin[name] = {"seed": seed, "shift_code": code,
                        "images_sha256": data_fingerprint(sets[name], data.labels)}
    n = len(data.images)
    draws = "" if seeds == [None] else f", shift seeds {', '.join(map(str, seeds))} (cached in {settings.cache_dir})"
    if TRAINING_SHIFT_SEED in seeds and profile != "none":
        print(f"{profile}: note: shift seed {TRAINING_SHIFT_SEED} is the one training configs select epochs "
              f"with ([shift] seed): a model selected on it scores optimistically there")
    print(f"{profile}: running {zip_path.name} on {n} images{draws} "
          f"(time limit per set {time_limit_text(settings.time_limit)})", flush=True)
    log = _attempt_log(out)
    try:
        result = run_submission(zip_path, sets, settings.time_limit * len(sets), python=settings.python,
                                log_path=log, on_wait=_waiting(f"{profile} ingestion"))
    except BaseException:
        log.unlink(missing_ok=True)
        raise
    if not log.exists():
        log.write_text("")
    metrics = {**run.meta, "profile": profile, "status": result.status, "message": result.message,
               "init_seconds": result.init_seconds,
               "predict_seconds": sum(result.predict_seconds.values()) if result.predict_seconds else None,
               "wall_seconds": result.wall_seconds, "n": n, "seeds": seeds if seeds != [None] else []}
    _keep_result(out, log, metrics, result.ok)
    if not result.ok:
        return metrics
    names = list(sets)
    predictions = np.stack([result.predictions[name] for name in names])
    per_set = {}
    for name, pred in zip(names, predictions):
        one = stats.score_intervals(data.labels, pred, seed=stats.BOOTSTRAP_SEED)
        per_set[name] = {**origin[name], **{k: one[k] for k in INTERVAL_KEYS},
                         "predict_seconds": result.predict_seconds.get(name)}
    first = names[0]
    metrics.update(score(data.labels, predictions[0]))  # per class and confusion matrix: first draw
    metrics.update(stats.score_intervals(data.labels, predictions, seed=stats.BOOTSTRAP_SEED))
    metrics["sets"] = per_set
    metrics["bootstrap"] = {"resamples": stats.BOOTSTRAP_RESAMPLES, "seed": stats.BOOTSTRAP_SEED}
    if len(names) > 1:
        accuracies = [per_set[name]["accuracy"] for name in names]
        metrics["accuracy_spread"] = {"sd": float(np.std(accuracies, ddof=1)), "min": float(min(accuracies)),
                                      "max": float(max(accuracies))}
    correct = predictions == data.labels
    all_plans = [p for name in names for p in plans[name]]
    if any(all_plans):
        metrics["families"] = family_table(correct.ravel(), all_plans, profile)
        metrics["accuracy_by_ops"] = {str(k): v for k, v in sorted(_by_count(correct.ravel(), all_plans).items())}
    proba = result.probabilities.get(first)
    confidence = proba.max(axis=1) if proba is not None else None
    write_scores(out, metrics, duration=(result.init_seconds or 0) + (metrics["predict_seconds"] or 0))
    write_json_atomic(out / "metrics.json", metrics)
    _write_predictions(out / "predictions.csv", data.labels, names, origin, predictions,
                       {name: result.probabilities.get(name) for name in names}, plans)
    shown = "" if len(names) == 1 else f", seed {origin[first]['seed']}"
    figures.save_confusion_matrix(out / "confusion.png", np.asarray(metrics["confusion_matrix"]),
                                 title=f"Confusion matrix, {profile}{shown} (accuracy "
                                       f"{100 * per_set[first]['accuracy']:.1f} %)")
    figures.save_wrong_guesses(out / "wrong.png", sets[first], data.labels, predictions[0], confidence,
                              title=f"Wrong guesses, {profile}{shown}")
    if confidence is not None:
        figures.save_confidence_plot(out / "confidence.png", confidence, correct[0],
                                    title=f"Predictions sorted by confidence, {profile}{shown}")
    if "families" in metrics:
        figures.save_family_accuracy(out / "families.png", metrics["families"],
                                    title=f"{profile}: accuracy of the images each family touched"
                                          + (f" ({len(names)} draws)" if len(names) > 1 else ""),
                                    reference=run.clean_accuracy)
    print(f"{profile}: {describe_estimate(metrics)}; Model() {_s(result.init_seconds)}, "
          f"predict {_s(metrics['predict_seconds'])} -> {out / 'scores.json'}")
    if "families" in metrics:
        worst = sorted(metrics["families"].items(), key=lambda kv: kv[1]["all"][0])[:3]
        print(f"{profile}: worst families (images each touched, all draws): "
              + ", ".join(f"{f} {100 * c['all'][0]:.1f} % of {c['all'][1]}" for f, c in worst))
    if result.message:
        print(f"{profile}: note: {result.message}")
    return metrics


def family_table(correct, plans, profile: str) -> dict:
    """family -> {"all": (accuracy, n), severity: (accuracy, n)} over the images each of the
    profile's families touched (its own families: the second opinion's are not ours)."""
    table = family_severity_accuracy(correct, plans)
    return {f: {"all": table[(f, None)]} | {s: table[(f, s)] for s in SEVERITIES if (f, s) in table}
            for f in shift.families(profile) if (f, None) in table}


def describe_estimate(m: dict) -> str:
    """One line: accuracy [95 % interval], the other scores, n, and the spread over seeds."""
    def pct(key):
        low, high = m[f"{key}_ci"]
        return f"{100 * m[key]:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"

    text = (f"accuracy {pct('accuracy')} (balanced {pct('balanced_accuracy')}, macro-F1 {pct('macro_f1')}; "
            f"95 % intervals, n={m['n']}")
    if m.get("seeds"):
        spread = m.get("accuracy_spread")
        text += (f"; mean over shift seeds {', '.join(map(str, m['seeds']))}"
                 + (f", per seed {100 * spread['min']:.1f}-{100 * spread['max']:.1f} %, sd "
                    f"{100 * spread['sd']:.1f} pt" if spread else ""))
    return text + ")"


def evaluate_sweep(run: EvalRun) -> dict:
    """Every family at every severity on a class-stratified subset, first shift seed;
    returns its metrics.json (the family x severity table)."""
    settings, data = run.settings, run.data
    out = run.folder / "sweep"
    seed = settings.seeds[0]
    index = sweep_subset(data.labels, settings.sweep_images, seed)
    images, labels = data.images[index], data.labels[index]
    sets = {"clean": images}
    for family, severity, shifted in shift.sweep(images, seed):
        sets[_sweep_set(family, severity)] = shifted
    limit = settings.time_limit * len(sets)
    print(f"sweep: {len(FAMILIES)} families x {len(SEVERITIES)} severities on {len(index)} images, seed {seed} "
          f"(time limit per set {time_limit_text(settings.time_limit)})", flush=True)
    log = _attempt_log(out)
    try:
        result = run_submission(settings.zip_path, sets, limit, want_proba=False, python=settings.python,
                                log_path=log, on_wait=_waiting("sweep ingestion"))
    except BaseException:
        log.unlink(missing_ok=True)
        raise
    if not log.exists():
        log.write_text("")
    metrics = {**run.meta, "profile": "sweep", "status": result.status, "message": result.message,
               "init_seconds": result.init_seconds, "predict_seconds": sum(result.predict_seconds.values()),
               "wall_seconds": result.wall_seconds, "n": len(index)}
    _keep_result(out, log, metrics, result.ok)
    if not result.ok:
        return metrics
    accuracy = {name: float((p == labels).mean()) for name, p in result.predictions.items()}
    table = {f: {s: (accuracy[_sweep_set(f, s)], len(index)) for s in SEVERITIES} for f in FAMILIES}
    for f in FAMILIES:
        table[f]["all"] = (float(np.mean([accuracy[_sweep_set(f, s)] for s in SEVERITIES])), len(index) * len(SEVERITIES))
    corrupted = np.stack([p for name, p in result.predictions.items() if name != "clean"])
    worst = sorted(FAMILIES, key=lambda f: table[f]["all"][0])[:3]
    # The mean over every family x severity, its interval from resampling the subset's images.
    metrics.update({k: v for k, v in stats.score_intervals(labels, corrupted).items() if k in INTERVAL_KEYS})
    metrics.update({"clean_accuracy": accuracy["clean"],
                    "clean_accuracy_ci": list(stats.wilson_interval(int(round(accuracy["clean"] * len(index))),
                                                                    len(index))),
                    "families": table, "sets": accuracy, "seed": seed,
                    "worst_families": [[f, table[f]["all"][0]] for f in worst]})
    write_json_atomic(out / "scores.json", {"accuracy": metrics["accuracy"],
                                            "accuracy_ci_low": metrics["accuracy_ci"][0],
                                            "accuracy_ci_high": metrics["accuracy_ci"][1], "n": len(index),
                                            "clean_accuracy": accuracy["clean"],
                                            "duration": (result.init_seconds or 0) + metrics["predict_seconds"]})
    write_json_atomic(out / "metrics.json", metrics)
    lines = ["family,severity,accuracy,n"] + [f"{f},{s},{table[f][s][0]:.4f},{len(index)}"
                                              for f in FAMILIES for s in SEVERITIES]
    write_text_atomic(out / "sweep.csv", "\n".join(lines) + "\n")
    figures.save_family_accuracy(out / "families.png", table, reference=accuracy["clean"],
                                title=f"Sweep: accuracy per family and severity ({len(index)} images each)")
    low, high = metrics["accuracy_ci"]
    print(f"sweep: mean accuracy over corruptions {100 * metrics['accuracy']:.1f} % [{100 * low:.1f}, "
          f"{100 * high:.1f}] (clean subset {100 * accuracy['clean']:.1f} %, {len(index)} images); "
          f"worst families: {worst_families_text(metrics)} "
          f"-> {out / 'scores.json'}")
    return metrics


def _sweep_set(family: str, severity: int) -> str:
    """The sweep's image set of one family at one severity (metrics.json's `sets` keys)."""
    return f"{family}_s{severity}"


def _by_count(correct, plans) -> dict:
    out = {}
    for ok, steps in zip(correct, plans):
        hit, n = out.get(len(steps), (0, 0))
        out[len(steps)] = (hit + int(ok), n + 1)
    return {k: (hit / n, n) for k, (hit, n) in out.items()}


def _write_predictions(path, labels, names, origin, predictions, probabilities, plans) -> None:
    """Per image and draw: what the submission said. Paired comparisons read this file."""
    lines = ["index,seed,true,predicted,correct,confidence,shift"]
    for name, pred in zip(names, predictions):
        seed = "" if origin[name]["seed"] is None else origin[name]["seed"]
        proba = probabilities.get(name)
        for i, (t, p) in enumerate(zip(labels, pred)):
            conf = "" if proba is None else f"{proba[i].max():.4f}"
            ops = shift.encode_ops(plans[name][i])
            lines.append(f"{i},{seed},{t},{p},{int(t == p)},{conf},{ops}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def _s(value) -> str:
    return "?" if value is None else f"{value:.1f} s"


def cross_check(results: dict) -> list[str]:
    """Lines for pairs of shift estimates (CROSS_CHECKS) whose 95 % intervals do not overlap."""
    lines = []
    for a, b in CROSS_CHECKS:
        ma, mb = results.get(a), results.get(b)
        if not (ma and mb and ma["status"] == "ok" and mb["status"] == "ok"):
            continue
        if stats.intervals_disagree(ma, mb):
            lines.append(f"warning: {a} ({100 * ma['accuracy']:.1f} % [{100 * ma['accuracy_ci'][0]:.1f}, "
                         f"{100 * ma['accuracy_ci'][1]:.1f}]) and {b} ({100 * mb['accuracy']:.1f} % "
                         f"[{100 * mb['accuracy_ci'][0]:.1f}, {100 * mb['accuracy_ci'][1]:.1f}]) disagree by more "
                         f"than their intervals: the two models of the server's shift do not agree on this "
                         f"zip, so neither alone is a safe estimate")
        else:
            lines.append(f"{a} and {b} agree within their 95 % intervals")
    return lines
