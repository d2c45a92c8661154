"""`build_submission.py --fit-budget`: a submission that fits its time limit by construction.

Measures how fast this machine runs each ensemble member's network through the shipped
`model.py` (staged with one TTA view, in the sandbox with the interpreter the validation
uses, median of three timed calls), scales by `--speedup`, and chooses the number of TTA
views so that

    (fixed costs + test images x sum over members of views x seconds per image-view) / speedup
        <= time limit x (1 - margin)

(`server_seconds`, the one projection: validation and --select use it too). Fixed costs:
import, `Model()` and the first call's tracing (`measured_costs`), per member. Views are reduced
first (one number for every member); only when one view per member does not fit are
members dropped, the slowest first. The plan is printed and written into every member's
JSON ("tta" views and a "budget" record) and the manifest. Cost per view is linear:
`model.py` keeps about `Model.batch_size` network rows per call whatever the views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bloodcells import sandbox
from bloodcells.cli import UserError
from bloodcells.ingestion import time_limit_text

DEFAULT_MARGIN = 0.25  # share of the limit kept free: timing noise, a slower server, the data loading
MEASURE_IMAGES = 128  # = model.py's rows per call at one view


@dataclass
class Rate:
    """One member's measured cost on this machine."""

    name: str
    export: Path
    seconds_per_view: float  # per image and view
    fixed_s: float  # import + Model() + first call


@dataclass
class Plan:
    views: int
    members: list  # Rate of each kept member, in the given order
    dropped: list = field(default_factory=list)
    projected_s: float = 0.0
    budget_s: float = 0.0
    time_limit_s: float = 0.0
    test_images: int = 0
    speedup: float = 1.0
    margin: float = DEFAULT_MARGIN

    @property
    def weights(self) -> list:
        return [m.export for m in self.members]

    def record(self) -> dict:
        """What goes into the JSON: enough to see why these views were chosen."""
        return {"views": self.views, "projected_s": round(self.projected_s, 1), "budget_s": round(self.budget_s, 1),
                "time_limit_s": self.time_limit_s, "margin": self.margin, "test_images": self.test_images,
                "speedup": self.speedup, "members": {m.name: {"ms_per_view": round(m.seconds_per_view * 1e3, 3),
                                                             "fixed_s": round(m.fixed_s, 2)} for m in self.members},
                "dropped": [m.name for m in self.dropped]}

    def describe(self) -> str:
        per_image = sum(m.seconds_per_view for m in self.members) * self.views
        lines = [f"budget plan: {self.views} TTA view(s) x {len(self.members)} member(s) -> {self.test_images} images "
                 f"in ~{self.projected_s:.0f} s on the server (limit {self.time_limit_s:g} s, margin {self.margin:.0%}: "
                 f"budget {self.budget_s:.0f} s; this machine / {self.speedup:g})"]
        for m in self.members:
            lines.append(f"  {m.name}: {m.seconds_per_view * 1e3:.2f} ms per image-view here, fixed {m.fixed_s:.1f} s")
        for m in self.dropped:
            lines.append(f"  dropped {m.name} ({m.seconds_per_view * 1e3:.2f} ms per image-view here): "
                         f"even one view per member did not fit")
        lines.append(f"  {per_image * 1e3:.1f} ms per image here")
        lines.append(f"  time limit {time_limit_text(self.time_limit_s)}")
        return "\n".join(lines)


def measured_costs(import_s: float, load_s: float, first_s: float, first_images: int, pass_s: float,
                   pass_images: int) -> tuple[float, float]:
    """(fixed seconds, seconds per image) from one timed run of model.py: per image from a
    call after the first; fixed = import + Model() + what the first call (`first_images`
    images) took beyond that rate, i.e. its tracing. Validation, --fit-budget and --select
    all convert their timings with it."""
    per_image = pass_s / max(pass_images, 1)
    return import_s + load_s + max(0.0, first_s - per_image * first_images), per_image


def server_seconds(fixed_s: float, seconds_per_image: float, test_images: int, speedup: float) -> float:
    """The one projection of the time the server needs (validation's time check,
    --fit-budget, --select): fixed costs plus `test_images` images at `seconds_per_image`
    (everything shipped: all members, all views), on a server `speedup` times faster."""
    return (fixed_s + seconds_per_image * test_images) / speedup


def projected_seconds(members, views: int, test_images: int, speedup: float) -> float:
    """server_seconds of `members` (Rate), each with `views` TTA views."""
    return server_seconds(sum(m.fixed_s for m in members), views * sum(m.seconds_per_view for m in members),
                          test_images, speedup)


def plan_budget(rates: list, max_views: int, time_limit_s: float, test_images: int, speedup: float = 1.0,
                margin: float = DEFAULT_MARGIN) -> Plan:
    """The most views (<= max_views) that fit with every member; if one view does not fit,
    drop the slowest member and try again. UserError when not even the fastest member
    alone with one view fits."""
    if not 0 <= margin < 1:
        raise UserError(f"--budget-margin: expected a share in [0, 1), got {margin:g}")
    budget = time_limit_s * (1 - margin)
    members, dropped = list(rates), []
    while members:
        for views in range(int(max_views), 0, -1):
            projected = projected_seconds(members, views, test_images, speedup)
            if projected <= budget:
                return Plan(views, members, dropped, projected, budget, time_limit_s, test_images, speedup, margin)
        slowest = max(members, key=lambda m: m.seconds_per_view)
        members.remove(slowest)
        dropped.insert(0, slowest)
    fastest = min(rates, key=lambda m: m.seconds_per_view)
    need = projected_seconds([fastest], 1, test_images, speedup)
    raise UserError(f"--fit-budget: nothing fits: the fastest member ({fastest.name}) with one view needs ~{need:.0f} s "
                    f"for {test_images} images against a budget of {budget:.0f} s (--time-limit {time_limit_s:g} "
                    f"minus {margin:.0%} margin); use a smaller backbone, or set --speedup for a faster server")


# The timing loop, run in the sandbox (bloodcells.sandbox): numpy and the submission's
# model.py only, so any interpreter (e.g. the server-pinned .venv-server) runs it.
JOB = r'''
t = time.perf_counter()
X = load_input("probe")
from model import Model
status["import_s"] = time.perf_counter() - t
t = time.perf_counter(); M = Model(); status["load_s"] = time.perf_counter() - t
t = time.perf_counter(); M.predict(X); status["first_s"] = time.perf_counter() - t
status["pass_s"] = []
for _ in range(int(PARAMS["passes"])):
    t = time.perf_counter(); M.predict(X); status["pass_s"].append(time.perf_counter() - t)
'''


def measure(weights_dirs, python=None, images: int = MEASURE_IMAGES, passes: int = 3,
            timeout_s: float = 1800.0) -> list:
    """Each member alone, staged with one view, run through `model.py` in the sandbox:
    seconds per image-view from the median of `passes` timed calls, fixed costs from
    import, Model() and the first call (minus one pass)."""
    import statistics

    from bloodcells.cli import Progress
    from bloodcells.network import read_export
    from bloodcells.submission import stage
    from bloodcells.shipped import probe_images

    probe = probe_images(images, seed=7)
    progress = Progress(len(weights_dirs), "measuring each member's speed (one view)")
    rates = []
    with sandbox.temporary_folder("budget") as tmp:
        for i, src in enumerate(weights_dirs):
            folder = Path(tmp) / f"member{i}"
            stage([src], folder, tta=1)
            run = sandbox.run(folder, JOB, {"probe": probe}, python=python, time_limit=timeout_s,
                              params={"passes": passes})
            if run.start_error or run.timed_out:
                reason = run.start_error or f"timed out after {timeout_s:g} s"
                raise UserError(f"--fit-budget: {src}: could not measure the model ({reason})")
            if run.returncode or run.status.get("stage") != "done":
                last = sandbox.last_line(run.status.get("traceback") or run.log) or "no output"
                raise UserError(f"--fit-budget: {src}: the model did not run: {last}")
            result = run.status
            fixed, per_view = measured_costs(result["import_s"], result["load_s"], result["first_s"], images,
                                             statistics.median(result["pass_s"]), images)
            rates.append(Rate(str(read_export(src)[0].get("name") or Path(src).name), Path(src), per_view, fixed))
            progress.update()
    return rates


def max_views_for(weights_dirs, tta=None, tta_mode=None) -> int:
    """The views the plan may not exceed: --tta, else the largest of the exports' own."""
    from bloodcells.network import read_export, shipped_model_module

    if tta is not None:
        return int(tta)
    specs = [read_export(w)[0] for w in weights_dirs]
    views = max(int((s.get("tta") or {}).get("views", shipped_model_module().DEFAULT_TTA["views"])) for s in specs)
    if (tta_mode or "") == "dihedral" or all((s.get("tta") or {}).get("mode") == "dihedral" for s in specs):
        views = min(views, 8)
    return views


def fit_budget(weights_dirs, limits, tta=None, tta_mode=None, python=None, margin: float = DEFAULT_MARGIN,
               measure_fn=None) -> Plan:
    """Measure, plan, print the plan. `measure_fn(weights_dirs, python)` replaces the
    measurement (tests construct a slow model's rates with it)."""
    rates = (measure_fn or measure)(list(weights_dirs), python)
    plan = plan_budget(rates, max_views_for(weights_dirs, tta, tta_mode), limits.time_limit_s, limits.test_images,
                       limits.speedup, margin)
    print(plan.describe(), flush=True)
    if not math.isfinite(plan.projected_s):
        raise UserError("--fit-budget: the measured time is not finite; rerun on a less busy machine")
    return plan
