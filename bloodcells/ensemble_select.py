"""Ensembles chosen, not guessed: greedy forward selection with replacement (Caruana,
Niculescu-Mizil, Crew & Ksikes, "Ensemble selection from libraries of models", ICML 2004).

Each candidate (an exported model folder) predicts the shifted selection images once,
as it would ship (its TTA, through model.py, in the sandbox with --python's interpreter,
timed as validation and --fit-budget time a zip); then, starting from an empty ensemble, each
step adds the candidate - possibly one already in - whose addition gives the highest
accuracy of the averaged probabilities, and selection stops when no addition improves
it or every improving one would break the time or size limit the validator checks
(bloodcells.preflight.Limits). A member chosen k times ships k times: model.py
averages its members equally, so that is its weight, and it costs k times.

The selection split must be one nothing is reported on: the held-out test (a MedMNIST
`test` split, or the file `python -m bloodcells.data --holdout` wrote as test) is
refused. Used by `build_submission.py --select DIR... --selection-data FILE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import sandbox
from .budget import measured_costs, server_seconds
from .cli import UserError


@dataclass
class Candidate:
    """One exported model's predictions and costs, measured once."""

    name: str
    probabilities: np.ndarray  # (n, classes) on the shifted selection images
    size_mb: float  # weights as shipped
    seconds_per_image: float  # predict time here, per image (budget.measured_costs)
    fixed_seconds: float = 0.0  # import, Model() and the first call's tracing here


@dataclass
class Selection:
    members: list  # candidate names in the order added (repeats = weight)
    accuracy: float  # shifted selection accuracy of the averaged probabilities
    log: list = field(default_factory=list)  # one line per step: why it was kept, why it stopped


def accuracy_of(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels)) if len(labels) else 0.0


def costs(members, candidates: dict, limits, base_mb: float = 0.0) -> tuple[float, float]:
    """(zip size MB, projected server seconds: budget.server_seconds) of an ensemble."""
    size = base_mb + sum(candidates[m].size_mb for m in members)
    seconds = server_seconds(sum(candidates[m].fixed_seconds for m in members),
                             sum(candidates[m].seconds_per_image for m in members), limits.test_images, limits.speedup)
    return size, seconds


def greedy_select(candidates: dict, labels, limits, base_mb: float = 0.0, max_members: int = 16) -> Selection:
    """Caruana forward selection with replacement on `candidates` ({name: Candidate},
    insertion order breaks ties). Deterministic; never exceeds `limits`."""
    labels = np.asarray(labels)
    members: list = []
    total = None  # sum of the members' probabilities
    current = -1.0
    log = []
    while len(members) < max_members:
        scored = []
        for name, c in candidates.items():
            trial = c.probabilities if total is None else total + c.probabilities
            size, seconds = costs(members + [name], candidates, limits, base_mb)
            fits = size <= limits.max_size_mb and seconds <= limits.time_limit_s
            scored.append((accuracy_of(trial, labels), name, fits, size, seconds))
        fitting = [s for s in scored if s[2]]
        best = max(fitting, key=lambda s: s[0], default=None)  # max keeps the first of equals
        unfit_better = [s for s in scored if not s[2] and s[0] > current and (best is None or s[0] > best[0])]
        for acc, name, _, size, seconds in unfit_better:
            log.append(f"  skipped {name}: {100 * acc:.2f} % but {size:.1f} MB / ~{seconds:.0f} s on the server "
                       f"would break the limits ({limits.max_size_mb:g} MB, {limits.time_limit_s:g} s)")
        if best is None or best[0] <= current:
            reason = ("no candidate fits the limits" if best is None else
                      f"no addition improves {100 * current:.2f} % (best: + {best[1]} -> {100 * best[0]:.2f} %)")
            log.append(f"stop: {reason}")
            break
        acc, name, _, size, seconds = best
        others = sorted((s for s in fitting if s[1] != name), key=lambda s: -s[0])
        runner = f"; next best + {others[0][1]} -> {100 * others[0][0]:.2f} %" if others else ""
        again = " (again: weight {})".format(members.count(name) + 1) if name in members else ""
        if not members:
            why = f"best single member, {100 * acc:.2f} %"
        else:
            why = f"{100 * current:.2f} -> {100 * acc:.2f} % ({100 * (acc - current):+.2f} pt)"
        log.append(f"step {len(members) + 1}: + {name}{again}: {why}{runner}; ensemble {size:.1f} MB, "
                   f"~{seconds:.0f} s on the server for {limits.test_images} images")
        members.append(name)
        total = candidates[name].probabilities.copy() if total is None else total + candidates[name].probabilities
        current = acc
    else:
        log.append(f"stop: {max_members} members (the cap)")
    return Selection(members, max(current, 0.0), log)


# -- measuring candidates -------------------------------------------------------------------

def load_selection_set(path, split, profile: str, seed: int):
    """(shifted images, labels, description) of the selection split; refuses the held-out test."""
    from . import shift
    from .data import DataError, held_out_reason, load_dataset

    path = Path(path)
    reason = held_out_reason(path, split)
    if reason:
        raise UserError(f"{path}: --selection-split: {reason}; expected a selection split that "
                        f"nothing is reported on (e.g. a split carved from the training data)")
    if profile not in shift.TRAINING_PROFILES:
        raise UserError(f"--selection-profile: '{profile}' never chooses anything (it would stop being an "
                        f"estimate); expected one of {', '.join(shift.TRAINING_PROFILES)}")
    try:
        data = load_dataset(path, split, notify=None)
    except DataError as exc:
        raise UserError(str(exc)) from None
    if split is None and data.source.endswith("[train]"):
        print(f"note: {path}: selecting on its 'train' split (--selection-split to choose another)")
    images = shift.apply_shift(data.images, profile, seed, progress=True)
    return images, data.labels, f"{data.source}, {profile} profile seed {seed}"


# Run in the sandbox (bloodcells.sandbox), as validation and --fit-budget time a zip: the
# probabilities of the selection images, and the timings budget.measured_costs converts.
JOB = r'''
import numpy as np
images = load_input("images")
t = time.perf_counter()
from model import Model
status["import_s"] = time.perf_counter() - t
status["stage"] = "Model()"
t = time.perf_counter(); M = Model(); status["load_s"] = time.perf_counter() - t
status["first_images"] = min(len(images), int(PARAMS["first_images"]))
status["stage"] = "first call"
t = time.perf_counter(); M.predict_proba(images[:status["first_images"]]); status["first_s"] = time.perf_counter() - t
status["stage"] = "predict_proba"
t = time.perf_counter(); probabilities = M.predict_proba(images); status["selection_s"] = time.perf_counter() - t
save_array("probabilities", np.asarray(probabilities, dtype=np.float32))
'''


def measure(weights_dirs, images, labels, stage_kwargs: dict, half: bool = False, python: str | None = None,
            timeout_s: float = 1800.0) -> dict:
    """{name: Candidate}: each export staged alone (as it would ship) and run through
    model.py on the shifted selection images in the sandbox with interpreter `python`, timed."""
    from .budget import MEASURE_IMAGES
    from .submission import stage

    candidates = {}
    for k, src in enumerate(weights_dirs):
        with sandbox.temporary_folder("select") as tmp:
            folder = Path(tmp) / "member"
            manifest = stage([src], folder, half=half, **stage_kwargs)
            member = manifest["models"][0]["name"]
            name = member if member not in candidates else f"{member}@{k}"
            size_mb = sum(p.stat().st_size for p in folder.glob("*.weights.h5")) / 1e6
            run = sandbox.run(folder, JOB, {"images": images}, python=python, time_limit=timeout_s,
                              params={"first_images": MEASURE_IMAGES})
        if run.start_error or run.timed_out or "probabilities" not in run.arrays:
            # a broken export: name it, do not bury it in a traceback
            reason = run.start_error or (f"timed out after {timeout_s:g} s" if run.timed_out else run.error())
            raise UserError(f"{src}: --select: the export does not run through model.py "
                            f"({' '.join(reason.split())[:160]}); expected a working export")
        status, probabilities = run.status, run.arrays["probabilities"]
        fixed, per_image = measured_costs(status["import_s"], status["load_s"], status["first_s"],
                                          status["first_images"], status["selection_s"], len(images))
        candidates[name] = Candidate(name, probabilities.astype(np.float64), size_mb, per_image, fixed)
        print(f"candidate {name} ({src}): {100 * accuracy_of(probabilities, labels):.2f} % shifted "
              f"selection accuracy, {size_mb:.1f} MB, {1000 * per_image:.1f} ms/image here, fixed {fixed:.1f} s",
              flush=True)
    return candidates


def select_for_build(args, limits) -> list[Path]:
    """build_submission.py --select: measure, select, print why; returns the export folders
    to zip, repeats included."""
    from .submission import MODEL_PY

    if not args.selection_data:
        raise UserError("--select: needs --selection-data FILE (and --selection-split for a MedMNIST file); "
                        "expected a labelled selection set that is not the test set")
    from .network import read_export

    for w in args.select:
        read_export(w)
    images, labels, what = load_selection_set(args.selection_data, args.selection_split,
                                              args.selection_profile, args.selection_seed)
    print(f"selection set: {len(labels)} images from {what}")
    stage_kwargs = {"tta": args.tta, "tta_mode": args.tta_mode, "tta_merge": args.tta_merge}
    candidates = measure(args.select, images, labels, stage_kwargs, half=args.half, python=args.python,
                         timeout_s=limits.timeout_s)
    by_name = dict(zip(candidates, args.select))
    selection = greedy_select(candidates, labels, limits, base_mb=MODEL_PY.stat().st_size / 1e6)
    print("greedy forward selection with replacement (Caruana et al. 2004) on shifted selection accuracy:")
    for line in selection.log:
        print(f"  {line}")
    if not selection.members:
        raise UserError("--select: no candidate fits the limits; expected at least one export within "
                        f"{limits.max_size_mb:g} MB and {limits.time_limit_s:g} s")
    counts = {m: selection.members.count(m) for m in dict.fromkeys(selection.members)}
    print("chosen: " + ", ".join(f"{m} x{c}" if c > 1 else m for m, c in counts.items())
          + f" ({100 * selection.accuracy:.2f} % shifted selection accuracy)")
    return [by_name[m] for m in selection.members]


def add_arguments(ap) -> None:
    """build_submission.py's --select options."""
    ap.add_argument("--select", nargs="+", type=Path, metavar="DIR",
                    help="candidate exported model folders: greedy forward selection (Caruana 2004) on the "
                         "shifted accuracy of --selection-data chooses the members (never the test split)")
    ap.add_argument("--selection-data", type=Path, metavar="FILE", help="--select: labelled selection set")
    ap.add_argument("--selection-split", help="--select: MedMNIST split of --selection-data (never test)")
    ap.add_argument("--selection-profile", default="server", help="--select: shift profile (default server)")
    ap.add_argument("--selection-seed", type=int, default=0, help="--select: shift seed (default 0)")

