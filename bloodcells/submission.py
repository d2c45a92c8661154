"""Build a submission zip: `model.py` and each exported model (contract 1: `model.json` +
`model.weights.h5`, renamed `<name>.json` / `<name>.weights.h5`) at the zip's root with a
manifest, optionally with float16 weights (--half), validated (bloodcells.validation)
before it is kept. `stage()` lays out the files, `zip_folder()` zips them and `main()`
is build_submission.py's command line (members chosen by --select: bloodcells.ensemble_select;
TTA views fitted to the time limit by --fit-budget: bloodcells.budget).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from bloodcells import sandbox
from bloodcells.budget import DEFAULT_MARGIN
from bloodcells.cli import UserError, check_output_folder, run_cli
from bloodcells.files import sha256_file
from bloodcells.models import read_export, shipped_model_module
from bloodcells.validation import MANIFEST_NAME, Limits, Report, validate

REPO = Path(__file__).resolve().parents[1]
MODEL_PY = REPO / "model.py"
MANIFEST_FORMAT = "bloodcells-submission/1"


def write_half_weights(src, dst) -> None:
    """Copy a Keras .weights.h5 with every float32/float64 array stored as float16.
    model.py casts them back to float32 when loading."""
    import h5py

    def copy(src_group, dst_group):
        for key, value in src_group.attrs.items():
            dst_group.attrs[key] = value
        for name, item in src_group.items():
            if isinstance(item, h5py.Group):
                copy(item, dst_group.create_group(name))
            else:
                data = item[()]
                if isinstance(data, np.ndarray) and data.dtype in (np.float32, np.float64):
                    data = data.astype(np.float16)
                out = dst_group.create_dataset(name, data=data)
                for key, value in item.attrs.items():
                    out.attrs[key] = value

    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        copy(fin, fout)



def _member_name(spec, taken) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(spec.get("name") or spec["backbone"])).strip("._") or "member"
    if base in ("model", "manifest"):  # model.json would read like the export layout; manifest.json is ours
        base = f"{base}_{spec['backbone']}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def stage(weights_dirs, folder, tta=None, tta_mode=None, tta_merge=None, half=False, model_py=MODEL_PY,
          extra_spec=None) -> dict:
    """Lay out the submission's files in `folder` (all at its root) and write the
    manifest; `extra_spec` adds keys to every member's JSON (e.g. the --fit-budget plan).
    Returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_py, folder / "model.py")
    taken, members = set(), []
    for src in weights_dirs:
        spec, weights = read_export(src)
        name = _member_name(spec, taken)
        spec = dict(spec, weights_file=f"{name}.weights.h5")
        tta_spec = dict(spec.get("tta") or shipped_model_module().DEFAULT_TTA)
        for key, value in (("views", tta), ("mode", tta_mode), ("merge", tta_merge)):
            if value is not None:
                tta_spec[key] = value
        spec["tta"] = tta_spec
        spec.update(extra_spec or {})
        if half:
            write_half_weights(weights, folder / spec["weights_file"])
            spec["weights_dtype"] = "float16"
        else:
            shutil.copyfile(weights, folder / spec["weights_file"])
        (folder / f"{name}.json").write_text(json.dumps(spec, indent=2) + "\n")
        members.append({"name": name, "export": str(src), "source_run": spec.get("source_run"),
                        "backbone": spec["backbone"], "tta": tta_spec,
                        "weights_dtype": "float16" if half else "float32"})
    files = [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.name != MANIFEST_NAME]
    manifest = {"format": MANIFEST_FORMAT, "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "models": members, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def zip_folder(folder, zip_path) -> None:
    """Every file of `folder` at the zip's root."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).iterdir()):
            if p.is_file():
                zf.write(p, arcname=p.name)


def submission_path(out_dir) -> Path:
    out_dir = Path(out_dir)
    stamp = _dt.datetime.now().strftime("%y%m%d_%H%M%S")
    path, i = out_dir / f"submission_{stamp}.zip", 2
    while path.exists():
        path, i = out_dir / f"submission_{stamp}_{i}.zip", i + 1
    return path


def check_export(folder) -> tuple[dict, Path]:
    """read_export(), then the weights file against the network model.json describes, in
    this process: a truncated file or weights of another network is a one-line UserError
    naming the file, the first layer that does not fit and its expected and found shapes."""
    import warnings

    import h5py

    spec, weights = read_export(folder)
    try:
        with h5py.File(weights, "r") as fh:
            fh.visit(lambda name: None)  # reads every group header: a truncated file fails here
    except OSError as exc:
        raise UserError(f"{weights}: weights: unreadable ({' '.join(str(exc).split())[:120]}); expected a complete "
                        f"Keras .weights.h5 (copy it again, or re-export the model)") from None
    net = shipped_model_module().build_network(spec)
    misfits = []

    def recording(layer):
        load = layer.load_own_variables

        def load_and_record(store):
            try:
                load(store)
            except Exception:
                found = [tuple(store[key].shape) for key in store.keys()]
                misfits.append((layer.name, [tuple(v.shape) for v in layer.weights], found))
                raise
        return load_and_record

    for layer in net._flatten_layers(include_self=False, recursive=True):
        layer.load_own_variables = recording(layer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net.load_weights(str(weights))
    except Exception as exc:  # Keras raises several types for a file of another network
        where = Path(folder) / "model.json"
        if misfits:
            name, expected, found = misfits[0]
            more = f" (and {len(misfits) - 1} more layer(s))" if len(misfits) > 1 else ""
            raise UserError(f"{weights}: layer {name}: expected weights of shapes {_shapes(expected)}, found "
                            f"{_shapes(found) if found else 'none'}{more}; the file holds another network than "
                            f"{where} describes ({spec['backbone']}): export the two together") from None
        raise UserError(f"{weights}: weights: do not fit the network {where} describes ({spec['backbone']}): "
                        f"{' '.join(str(exc).split())[:160]}") from None
    return spec, weights


def _shapes(shapes) -> str:
    return " ".join("(" + ", ".join(map(str, s)) + ")" for s in shapes)


TMP_ZIP_PATTERN = ".submission_*.zip.*.tmp"


def remove_stale_zips(out_dir) -> list:
    """Remove hidden temporary zips that no running build holds (a build killed before its
    rename left them); a running build holds a lock on its own."""
    removed = []
    for path in Path(out_dir).glob(TMP_ZIP_PATTERN):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a running build's
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def locked_temporary_zip(final: Path):
    """A hidden temporary zip beside `final`, locked while this build runs, renamed onto
    `final` on success and removed otherwise."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Command line (build_submission.py is a thin wrapper)
# ---------------------------------------------------------------------------------------

def _default_weights() -> list[Path]:
    exports = sorted(p.parent for p in (REPO / "weights").glob("*/model.json"))
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
    ap.add_argument("--out", type=Path, default=REPO / "submission", help="output folder (default submission/)")
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
    from bloodcells import ensemble_select

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
        from bloodcells import ensemble_select

        weights = ensemble_select.select_for_build(args, limits)
    else:
        weights = args.weights or _default_weights()
    remove_stale_zips(args.out)
    for w in weights:
        check_export(w)
    extra_spec = None
    if args.fit_budget:
        from bloodcells.budget import fit_budget

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


build_main = run_cli(main)
