"""bloodcells.budget, build_submission.py --fit-budget: the plan (views first, then the slowest
members), and the zip it writes; the one projection of the server's time that validation,
--fit-budget and --select share. Slow models are constructed as measured rates, so nothing
here depends on this machine's speed; one test measures a real tiny model."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bloodcells import budget, ensemble_select, sandbox, submission
from bloodcells.budget import Rate, plan_budget
from bloodcells.cli import UserError
from bloodcells.untrained import export_tiny
from bloodcells.preflight import Limits, validate
from build_command import build
from cells import cell_images

FAST = Rate("fast", Path("fast"), seconds_per_view=0.001, fixed_s=5.0)
SLOW = Rate("slow", Path("slow"), seconds_per_view=0.010, fixed_s=20.0)


def test_views_are_reduced_first_to_the_most_that_fit():
    # both members: (25 + 1000 * V * 0.011) s against 0.75 * 100 s -> V = 4
    plan = plan_budget([FAST, SLOW], max_views=10, time_limit_s=100, test_images=1000)
    assert (plan.views, [m.name for m in plan.members], plan.dropped) == (4, ["fast", "slow"], [])
    assert plan.projected_s == pytest.approx(25 + 44) and plan.budget_s == 75
    assert budget.projected_seconds(plan.members, 5, 1000, 1.0) > plan.budget_s  # one more view would not fit
    # a server twice as fast: (25 + 11 V) / 2 <= 30 -> V = 3
    assert plan_budget([FAST, SLOW], 10, 40, 1000, speedup=2).views == 3
    # everything fits: the views stay at the maximum
    assert plan_budget([FAST, SLOW], 8, 10_000, 1000).views == 8
    # a larger margin leaves fewer views
    assert plan_budget([FAST, SLOW], 10, 100, 1000, margin=0.5).views == 2


def test_members_are_dropped_last_slowest_first():
    # one view each needs 36 s > 30 s: the slow member goes, the fast one alone takes 10 views
    plan = plan_budget([SLOW, FAST], max_views=10, time_limit_s=40, test_images=1000)
    assert [m.name for m in plan.members] == ["fast"] and [m.name for m in plan.dropped] == ["slow"]
    assert plan.views == 10 and plan.projected_s <= plan.budget_s
    assert "dropped slow" in plan.describe() and plan.record()["dropped"] == ["slow"]
    with pytest.raises(UserError, match=r"nothing fits: the fastest member \(fast\) with one view needs ~6 s"):
        plan_budget([SLOW, FAST], 10, time_limit_s=4, test_images=1000)
    with pytest.raises(UserError, match="--budget-margin"):
        plan_budget([FAST], 10, 100, 1000, margin=1.0)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return [export_tiny(root / "fast", seed=0, name="fast"), export_tiny(root / "slow", seed=1, name="slow")]


def zipped_specs(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        specs = [json.loads(zf.read(n)) for n in zf.namelist() if n.endswith(".json") and n != "manifest.json"]
    return {s["name"]: s for s in specs}


def test_fit_budget_writes_the_plan_into_the_zip(exports, tmp_path, capsys, monkeypatch):
    # a constructed slow model: 0.5 s per image-view here (the tiny network is far faster,
    # so the zip's own validation passes the time check whatever this machine's load)
    constructed = {"fast": (0.02, 1.0), "slow": (0.5, 1.0)}
    seen = []

    def constructed_measure(weights_dirs, python=None):
        seen.append([Path(w).name for w in weights_dirs])
        return [Rate(Path(w).name, Path(w), *constructed[Path(w).name]) for w in weights_dirs]

    monkeypatch.setattr(budget, "measure", constructed_measure)
    common = ["--weights", *map(str, exports), "--fit-budget", "--test-images", "1000", "--probe-images", "8",
              "--out", str(tmp_path)]
    # (2 + 1000 * V * 0.52) s <= 0.75 * 2200 s -> V = 3
    code, out, err = build([*common, "--time-limit", "2200"], capsys)
    assert code == 0, err
    assert seen == [["fast", "slow"]]
    assert "budget plan: 3 TTA view(s) x 2 member(s) -> 1000 images in ~1562 s" in out
    assert "limit 2200 s, margin 25%: budget 1650 s" in out and "ok    time" in out
    assert "  time limit 2200 s: set by --time-limit" in out  # the plan says where its limit came from
    specs = zipped_specs(Path(out.strip().splitlines()[-1]))
    assert sorted(specs) == ["fast", "slow"] and {s["tta"]["views"] for s in specs.values()} == {3}
    record = specs["slow"]["budget"]
    assert record["views"] == 3 and record["projected_s"] <= record["budget_s"] == 1650
    assert record["members"]["slow"]["ms_per_view"] == 500 and record["dropped"] == []

    # a tighter limit: one view each (522 s) exceeds 450 s, so the slow member is dropped
    code, out, err = build([*common, "--time-limit", "600"], capsys)
    assert code == 0, err
    assert "dropped slow" in out
    specs = zipped_specs(Path(out.strip().splitlines()[-1]))
    assert list(specs) == ["fast"] and specs["fast"]["tta"]["views"] == 10
    assert specs["fast"]["budget"]["dropped"] == ["slow"]

    # --tta caps the views the plan may use; nothing fits -> one line, exit status 2
    code, out, _ = build([*common, "--time-limit", "100000", "--tta", "2"], capsys)
    assert code == 0 and "budget plan: 2 TTA view(s) x 2 member(s)" in out
    code, _, err = build([*common, "--time-limit", "20"], capsys)
    assert code == 2 and "nothing fits" in err and len(err.strip().splitlines()) == 1


def test_measure_runs_the_shipped_model(exports):
    rates = budget.measure(exports[:1])
    assert [r.name for r in rates] == ["fast"]
    assert math.isfinite(rates[0].seconds_per_view) and rates[0].seconds_per_view > 0
    assert rates[0].fixed_s > 0


def test_validation_fit_budget_and_select_project_the_same_time(exports, tmp_path, monkeypatch):
    # every timing job reports: import 2 s, Model() 3 s, a first call on 128 images 5 s,
    # then 10 ms per image -> fixed 2 + 3 + (5 - 1.28) s; 1000 images on a server 2x faster:
    projected = (2 + 3 + (5 - 1.28) + 1000 * 0.01) / 2
    limits = Limits(probe_images=128, test_images=1000, speedup=2)
    interpreters = []

    def timed_run(folder, job, inputs, *, python=None, **_):
        interpreters.append(python)
        n = len(next(iter(inputs.values())))
        labels = np.zeros(n, np.int64)
        described = {"type": "ndarray", "dtype": "int64", "shape": [n]}
        status = {"stage": "done", "import_s": 2.0, "load_s": 3.0, "first_s": 5.0, "first_images": 128,
                  "pass_s": [1.28, 1.28, 1.28], "second_s": 1.28, "selection_s": 1.28, "references": [],
                  "y1": described, "y2": described, "one": dict(described, shape=[1]),
                  "zero": dict(described, shape=[0])}
        arrays = {"y1": labels, "y2": labels, "one": labels[:1], "zero": labels[:0],
                  "probabilities": np.full((n, 8), 1 / 8, np.float32)}
        return sandbox.SandboxResult(status, arrays, returncode=0)

    monkeypatch.setattr(sandbox, "run", timed_run)
    # build_submission.py's time check
    staged = tmp_path / "staged"
    submission.stage(exports[:1], staged, tta=1)
    submission.zip_folder(staged, tmp_path / "s.zip")
    report = validate(tmp_path / "s.zip", limits=limits)
    assert report.figures["extrapolated_s"] == pytest.approx(projected * 2), report.text()  # on this machine
    assert report.figures["server_s"] == pytest.approx(projected)
    # --fit-budget
    rates = budget.measure(exports[:1], python="/server/python")
    assert plan_budget(rates, 1, 600, 1000, speedup=2).projected_s == pytest.approx(projected)
    # --select, with its interpreter
    candidates = ensemble_select.measure(exports[:1], cell_images(128), np.zeros(128, int), {"tta": 1},
                                         python="/server/python")
    assert ensemble_select.costs(list(candidates), candidates, limits)[1] == pytest.approx(projected)
    assert interpreters == [None, "/server/python", "/server/python"]
