"""build_submission.py's command: zip model.py and exported weights (bloodcells.submission),
members chosen by --select (bloodcells.ensemble_select), TTA views fitted to the time limit by
--fit-budget (bloodcells.budget), and the zip checked before it is kept (bloodcells.preflight).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bloodcells import ensemble_select, sandbox
from bloodcells.budget import DEFAULT_MARGIN, fit_budget
from bloodcells.cli import UserError, check_output_folder, run_cli
from bloodcells.preflight import Limits, Report, validate
from bloodcells.shipped import REPO_ROOT
from bloodcells.submission import (check_export, locked_temporary_zip, remove_stale_zips, stage, submission_path,
                                   zip_folder)


def _default_weights() -> list[Path]:
    exports = sorted(p.parent for p in (REPO_ROOT / "weights").glob("*/model.json"))
    if len(exports) != 1:
        found = ", ".join(str(p) for p in exports) or "none"
        raise UserError(f"--weights: expected one or more exported model folders; weights/ holds {found}: "
                        f"pass --weights weights/<name> (several = an ensemble)")
    return exports


def _limits(args) -> Limits:
    for option, value, low, expected in (
            ("--probe-images", args.probe_images, 1, "a number of images >= 1"),
            ("--test-images", args.test_images, 1, "a number of images >= 1")):
        if value < low:
            raise UserError(f"{option}: {value}; expected {expected}")
    for option, value in (("--time-limit", args.time_limit), ("--speedup", args.speedup),
                          ("--max-size-mb", args.max_size_mb), ("--timeout", args.timeout)):
        if not value > 0:  # also NaN
            raise UserError(f"{option}: {value:g}; expected a positive number")
    for option, value in (("--half-tolerance", args.half_tolerance), ("--parity-tolerance", args.parity_tolerance),
                          ("--reference-tolerance", args.reference_tolerance)):
        if not value >= 0:
            raise UserError(f"{option}: {value:g}; expected a tolerance >= 0")
    if not 0 <= args.budget_margin < 1:
        raise UserError(f"--budget-margin: {args.budget_margin:g}; expected a share in [0, 1)")
    return Limits(probe_images=args.probe_images, test_images=args.test_images, time_limit_s=args.time_limit,
                  speedup=args.speedup,
                  max_size_mb=args.max_size_mb, half_tolerance=args.half_tolerance, timeout_s=args.timeout,
                  parity_tolerance=args.parity_tolerance, reference_tolerance=args.reference_tolerance)


def _print_report(report: Report, python) -> None:
    print(f"validation of {report.zip_path.name} with {python or sys.executable}:")
    print(report.text())


def _fail(report: Report, what: str):
    names = ", ".join(c.name for c in report.failed())
    raise UserError(f"{what}: {len(report.failed())} check(s) failed ({names}); see the fixes above")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="build_submission.py", description=(
        "Zip model.py and exported weights into submission/submission_YYMMDD_HHMMSS.zip and validate it "
        "in a fresh process before it is kept. The zip's path is the last line printed."))
    ap.add_argument("--weights", nargs="+", type=Path, metavar="DIR",
                    help="exported model folder(s) (model.json + model.weights.h5); several = ensemble "
                         "(default: the only folder in weights/)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "submission", help="output folder (default submission/)")
    ap.add_argument("--tta", type=int, help="TTA views written into each model's JSON (1 disables; default: the export's)")
    ap.add_argument("--tta-mode", choices=("random", "dihedral"), help="TTA views: random (default) or the 8 dihedral")
    ap.add_argument("--tta-merge", choices=("softmax_mean_logits", "mean_probs"), help="how views are merged")
    ap.add_argument("--half", action="store_true", help="store weights as float16 (checked against float32)")
    ap.add_argument("--fit-budget", action="store_true",
                    help="measure this machine's speed and choose the TTA views (at most --tta; then drop the slowest "
                         "members) so --test-images fit --time-limit on a server --speedup times faster")
    ap.add_argument("--budget-margin", type=float, default=DEFAULT_MARGIN,
                    help=f"--fit-budget: share of --time-limit kept free (default {DEFAULT_MARGIN:g})")
    ap.add_argument("--check", type=Path, metavar="ZIP", help="only validate an existing zip")
    ap.add_argument("--python", help="interpreter that runs the validation (e.g. .venv-server/bin/python); "
                                     "then this interpreter's probabilities must match (parity)")
    ap.add_argument("--no-parity", action="store_true", help="with --python: skip the parity run")
    d = Limits()
    ap.add_argument("--probe-images", type=int, default=d.probe_images, help=f"default {d.probe_images}")
    ap.add_argument("--test-images", type=int, default=d.test_images, help=f"default {d.test_images}")
    ap.add_argument("--time-limit", type=float, default=d.time_limit_s,
                    help=f"seconds, default {d.time_limit_s:g} (Codabench's default, as local_eval.py): set your phase's")
    ap.add_argument("--speedup", type=float, default=d.speedup,
                    help=f"how many times faster the server runs model.py than this machine, default {d.speedup:g}")
    ap.add_argument("--max-size-mb", type=float, default=d.max_size_mb, help=f"default {d.max_size_mb:g}")
    ap.add_argument("--half-tolerance", type=float, default=d.half_tolerance, help=f"default {d.half_tolerance:g}")
    ap.add_argument("--parity-tolerance", type=float, default=d.parity_tolerance, help=f"default {d.parity_tolerance:g}")
    ap.add_argument("--reference-tolerance", type=float, default=d.reference_tolerance,
                    help=f"largest |dp| against the training model's stored probabilities, default {d.reference_tolerance:g}")
    ap.add_argument("--timeout", type=float, default=d.timeout_s, help=f"validation process timeout, default {d.timeout_s:g} s")
    ensemble_select.add_arguments(ap)
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    sandbox.clean_stale()  # what a killed run left
    limits = _limits(args)
    if args.python and not Path(args.python).exists():
        raise UserError(f"--python: {args.python} not found; build the server environment with `make server-check`")
    if not args.check:
        check_output_folder(args.out, "--out")
    print(f"limits: {limits.describe()} (change with --probe-images/--test-images/--time-limit/--speedup/--max-size-mb)")
    if args.check:
        if not args.check.is_file():
            raise UserError(f"--check: {args.check}: no such zip; build one with `make submission`")
        parity = sys.executable if args.python and not args.no_parity else None
        report = validate(args.check, args.python, limits, parity_python=parity)
        _print_report(report, args.python)
        if not report.ok:
            _fail(report, str(args.check))
        print(f"OK: {args.check} passed every check")
        print(args.check)
        return 0
    if args.tta is not None and args.tta < 1:
        raise UserError(f"--tta: expected a number of views >= 1 (1 disables TTA), got {args.tta}")
    if args.tta_mode == "dihedral" and (args.tta or 8) > 8:
        raise UserError(f"--tta: dihedral mode has at most 8 views, got {args.tta}")
    if args.select and args.weights:
        raise UserError("--select/--weights: both given; expected --weights (members as given) or --select "
                        "(members chosen from candidates)")
    if args.select:
        weights = ensemble_select.select_for_build(args, limits)
    else:
        weights = args.weights or _default_weights()
    remove_stale_zips(args.out)
    for w in weights:
        check_export(w)
    extra_spec = None
    if args.fit_budget:
        plan = fit_budget(weights, limits, args.tta, args.tta_mode, args.python, args.budget_margin)
        weights, args.tta, extra_spec = plan.weights, plan.views, {"budget": plan.record()}
    final = submission_path(args.out)
    with sandbox.temporary_folder("stage") as tmp:
        staged = tmp / "zip"
        manifest = stage(weights, staged, args.tta, args.tta_mode, args.tta_merge, half=args.half, extra_spec=extra_spec)
        reference = None
        if args.half:
            reference = tmp / "float32"
            stage(weights, reference, args.tta, args.tta_mode, args.tta_merge, half=False, extra_spec=extra_spec)
        for m in manifest["models"]:
            print(f"model {m['name']}: {m['backbone']} from {m['export']} (run {m['source_run']}), "
                  f"TTA {m['tta']}, weights {m['weights_dtype']}")
        final.parent.mkdir(parents=True, exist_ok=True)
        with locked_temporary_zip(final) as tmp_zip:
            zip_folder(staged, tmp_zip)
            os.chmod(tmp_zip, 0o644)  # the temporary file is private; the zip is an ordinary file
            parity = sys.executable if args.python and not args.no_parity else None
            report = validate(tmp_zip, args.python, limits, reference, parity_python=parity)
            report.zip_path = final
            _print_report(report, args.python)
            if not report.ok:
                _fail(report, f"{final.name} not written")
    print(f"OK: {final.name} passed every check ({final.stat().st_size / 1e6:.1f} MB, "
          f"{report.figures['images_per_s']:.1f} images/s here)")
    print(final)
    return 0


build_main = run_cli(main)  # build_submission.py
