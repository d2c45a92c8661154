"""Check a submission zip before a submission is spent.

`validate()` checks a zip statically (size, layout, manifest, model.py's imports and
paths), then extracts it into a fresh temporary folder and runs it in the sandbox
(bloodcells.sandbox) - possibly with another interpreter, e.g. the server-pinned
`.venv-server` - importing `Model` the way Codabench's ingestion does. Then the outputs:
shape, dtype, range, determinism, probabilities, files written, time per image,
agreement with the training model (training parity), and optionally with float32
weights (--half) and another interpreter (parity). Every failed check says what is wrong
and how to fix it. bloodcells.submission builds the zips this checks.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodcells import NUM_CLASSES, sandbox
from bloodcells.budget import measured_costs, server_seconds
from bloodcells.ingestion import DEFAULT_TIME_LIMIT, label_problems, time_limit_text, zip_layout
from bloodcells.network import LEGACY_FORMAT, SPEC_FORMAT
from bloodcells.shipped import PROBE_IMAGES, REFERENCE_TOLERANCE, probe_images, shipped_model_module  # noqa: F401

MANIFEST_NAME = shipped_model_module().MANIFEST_NAME  # written by bloodcells.submission.stage, read by model.py

# Imports the server does not have (or that would ship this project instead of the zip).
FORBIDDEN_IMPORTS = ("bloodcells", "keras_cv", "keras_hub", "keras_nlp", "torch", "torchvision",
                     "tensorflow_addons", "tensorflow_hub")
ABSOLUTE_PATH = re.compile(r"^(/[^\s/]+/|~/|[A-Za-z]:[\\/])\S*$")


@dataclass
class Limits:
    """What a submission must meet. Defaults are printed by every validation."""

    probe_images: int = PROBE_IMAGES  # images predicted in the validation run
    test_images: int = 20_000  # test-set size the time per image is extrapolated to
    time_limit_s: float = DEFAULT_TIME_LIMIT  # the phase's time limit (Codabench's default, as local_eval.py)
    speedup: float = 1.0  # how many times faster the server is than this machine (e.g. it has a GPU)
    max_size_mb: float = 500.0  # zip size limit
    half_tolerance: float = 0.01  # --half: largest allowed |p16 - p32| on the probe batch
    parity_tolerance: float = 1e-3  # server check: largest allowed |p_server - p_here|
    reference_tolerance: float = REFERENCE_TOLERANCE  # largest allowed |p_zip - p_training model| (single view)
    timeout_s: float = 1800.0  # the validation process is stopped after this

    def describe(self) -> str:
        return (f"probe {self.probe_images} images, test set {self.test_images} images, "
                f"server {self.speedup:g}x this machine, size limit {self.max_size_mb:g} MB, "
                f"half tolerance {self.half_tolerance:g}, time limit {time_limit_text(self.time_limit_s)}")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"  ok    {self.name}: {self.detail}"
        return f"  FAIL  {self.name}: {self.detail}\n        fix: {self.fix}"


@dataclass
class Report:
    zip_path: Path
    checks: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    probs: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list:
        return [c for c in self.checks if not c.ok]

    def add(self, name, ok, detail, fix=""):
        self.checks.append(Check(name, bool(ok), detail, fix))
        return bool(ok)

    def text(self) -> str:
        return "\n".join(c.line() for c in self.checks)


def check_code(source: str, report: Report) -> None:
    """Static checks of model.py: parses, no forbidden import, no absolute path."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        report.add("model.py syntax", False, f"line {exc.lineno}: {exc.msg}", "fix the syntax error in model.py")
        return
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update((a.name.split(".")[0], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.add((node.module.split(".")[0], node.lineno))
    bad = sorted((name, line) for name, line in imports if name in FORBIDDEN_IMPORTS)
    report.add("imports", not bad,
               "numpy/tensorflow/keras only" if not bad else
               "model.py imports " + ", ".join(f"{n} (line {l})" for n, l in bad) + ", which the server does not have",
               "make model.py self-contained: numpy and tensorflow/keras only (copy what it needs into model.py)")
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    paths = sorted({(node.value, node.lineno) for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and ABSOLUTE_PATH.match(node.value)}, key=lambda t: t[1])
    report.add("paths", not paths,
               "no absolute paths" if not paths else
               "absolute path " + ", ".join(f"{v!r} (line {l})" for v, l in paths) + " will not exist on the server",
               "find files next to model.py: os.path.join(os.path.dirname(os.path.abspath(__file__)), name)")


def check_manifest(zf: zipfile.ZipFile, names: set, report: Report) -> None:
    """The files (`names`, folders included) are the ones the manifest lists, unchanged
    since the zip was built."""
    import hashlib

    try:
        listed = {f["name"]: f["sha256"] for f in json.loads(zf.read(MANIFEST_NAME))["files"]}
    except (ValueError, KeyError, TypeError) as exc:
        report.add("manifest", False, f"unreadable manifest.json ({exc})", "rebuild the zip with build_submission.py")
        return
    changed = sorted(n for n, digest in listed.items()
                     if n not in names or hashlib.sha256(zf.read(n)).hexdigest() != digest)
    extra = sorted(names - set(listed) - {MANIFEST_NAME})
    report.add("manifest", not changed and not extra,
               f"{len(listed)} files match their sha256" if not changed and not extra else
               "; ".join(filter(None, [changed and f"changed or missing since built: {', '.join(changed)}",
                                       extra and f"not in the manifest: {', '.join(extra)}"])),
               "rebuild the zip with build_submission.py instead of editing it")


def check_layout(zf: zipfile.ZipFile, report: Report) -> bool:
    """What this kit's model.py needs beyond what the server does (ingestion.zip_layout,
    checked before): specs and their weights at the root, no .keras files, the manifest,
    model.py's code. Returns whether it is worth running the zip."""
    names = [i.filename for i in zf.infolist() if not i.is_dir()]
    root = {n for n in names if "/" not in n}
    whole = [n for n in root if n.endswith(".keras")]
    report.add("no .keras files", not whole,
               "weights only" if not whole else f"{', '.join(whole)}: whole .keras files fail to load on Keras 3.4.1",
               "ship save_weights files (.weights.h5) with a model.json: export with bloodcells.train --export")
    specs, missing = [], []
    for n in sorted(root):
        if not n.endswith(".json"):
            continue
        try:
            spec = json.loads(zf.read(n))
        except ValueError:
            continue
        if isinstance(spec, dict) and spec.get("format") in (SPEC_FORMAT, LEGACY_FORMAT):
            specs.append(n)
            weights = spec.get("weights_file")
            if not weights or weights not in root:
                missing.append(f"{n} -> {weights}")
    report.add("model specs", bool(specs),
               f"{len(specs)} ({', '.join(specs)})" if specs else f"no *.json with \"format\": \"{SPEC_FORMAT}\"",
               "add the exported model: build_submission.py --weights weights/<name>")
    report.add("weights", specs and not missing,
               "every spec's weights_file is in the zip" if not missing else
               "missing weights: " + "; ".join(missing),
               "re-export the model (model.json + model.weights.h5) and rebuild with build_submission.py")
    if MANIFEST_NAME in root:
        check_manifest(zf, set(names), report)
    if "model.py" in root:
        check_code(zf.read("model.py").decode("utf-8", errors="replace"), report)
    return bool(specs) and not missing


# The probe calls, run in the sandbox: numpy only before the submission is imported, so
# any interpreter runs it (e.g. the server-pinned .venv-server).
JOB = r'''
def describe(y):
    d = {"type": type(y).__name__}
    if isinstance(y, np.ndarray):
        d.update(dtype=str(y.dtype), shape=list(y.shape))
    return d
def labels_array(y):  # what the server saves: np.asarray of it, if that is numeric
    try:
        y = np.asarray(y)
    except Exception:
        return None
    return None if y.dtype == object else y
status["stage"] = "import numpy"
import numpy as np
X = load_input("probe")
status["stage"] = "import model"
t = time.perf_counter()
from model import Model
status["import_s"] = time.perf_counter() - t
try:
    import tensorflow, keras
    status["versions"] = {"tensorflow": tensorflow.__version__, "keras": keras.__version__, "numpy": np.__version__}
except ImportError:
    pass
status["stage"] = "Model()"
save_status()
t = time.perf_counter()
M = Model()
status["load_s"] = time.perf_counter() - t
status["stage"] = "predict (first call)"
save_status()
t = time.perf_counter()
y1 = M.predict(X)
status["first_s"] = time.perf_counter() - t
status["stage"] = "predict (second call)"
save_status()
t = time.perf_counter()
y2 = M.predict(X)
status["second_s"] = time.perf_counter() - t
status["y1"], status["y2"] = describe(y1), describe(y2)
arrays = {"y1": labels_array(y1), "y2": labels_array(y2)}
status["stage"] = "predict (1 image)"
y = M.predict(X[:1]); status["one"] = describe(y); arrays["one"] = labels_array(y)
status["stage"] = "predict (0 images)"
y = M.predict(X[:0]); status["zero"] = describe(y); arrays["zero"] = labels_array(y)
if hasattr(M, "predict_proba"):
    status["stage"] = "predict_proba"
    p = M.predict_proba(X); status["proba"] = describe(p); arrays["proba"] = np.asarray(p)
status["tta"] = [m.get("tta") for m in getattr(M, "members", []) if isinstance(m, dict)]
status["stage"] = "reference"
status["references"] = []
for m in getattr(M, "members", []):  # each network, one view, vs the training model's stored probabilities
    ref = (m.get("spec") or {}).get("reference") if isinstance(m, dict) else None
    if not ref or "network" not in m:
        continue
    k = min(len(X), len(ref["probs"]))
    z = np.asarray(m["network"](X[:k].astype(np.float32), training=False), dtype=np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    i = len(status["references"])
    arrays[f"net_{i}"], arrays[f"ref_{i}"] = p / p.sum(axis=1, keepdims=True), np.asarray(ref["probs"])[:k]
    status["references"].append(str(m.get("name")))
    status.setdefault("reference_dtypes", []).append(str((m.get("spec") or {}).get("weights_dtype", "float32")))
for name, array in arrays.items():
    if array is not None:
        save_array(name, array)
'''


def run_folder(folder, python=None, probe=None, timeout_s=1800.0) -> tuple[dict, dict, dict]:
    """Run the submission in `folder` in the sandbox. Returns (result dict: the job's
    status, with "error" a traceback when it failed; output arrays; {watched place: files
    written})."""
    run = sandbox.run(folder, JOB, {"probe": probe}, python=python, time_limit=timeout_s)
    if run.start_error:
        return {"error": f"cannot start {python}: {run.start_error}", "stage": "start"}, {}, {}
    if run.timed_out:
        return {"error": f"timed out after {timeout_s:g} s", "stage": "timeout"}, {}, {}
    result = dict(run.status)
    if "error" in result:
        result["error"] = result.pop("traceback", result["error"])
    elif result.get("stage") != "done":
        result["error"] = f"exit status {run.returncode}\n{run.log[-2000:]}"
    return result, run.arrays if "error" not in result else {}, run.changed


def check_outputs(result, outputs, changed, n, report: Report, limits: Limits) -> None:
    if "error" in result:
        stage = result.get("stage", "?")
        report.add("runs", False, f"failed at {stage}: {sandbox.last_line(result['error'])}",
                   {"import model": "model.py must import with numpy and tensorflow/keras only",
                    "Model()": "if the error is about weights, a weights file does not fit its JSON: build the zip "
                               "from an export (model.json + model.weights.h5 written together) with "
                               "build_submission.py --weights; else Model() must take no arguments and find its "
                               "files next to model.py (os.path.dirname(__file__))",
                    "start": "pass an existing interpreter to --python (make server-check builds .venv-server)",
                    "timeout": "make predict faster (fewer TTA views: --tta, a smaller backbone) or raise --timeout",
                    }.get(stage, "run `python -c 'from model import Model; Model().predict(X)'` in the extracted "
                                 "folder and fix the error shown"))
        report.figures["error"] = result["error"]
        return
    report.add("runs", True, f"{_versions(result)}: import {result['import_s']:.1f} s, Model() {result['load_s']:.1f} s, "
                             f"first predict {result['first_s']:.1f} s")
    y1, d1 = outputs.get("y1"), result["y1"]
    # the rule local_eval.py's ingestion applies (bloodcells.ingestion.label_problems)
    problems = _label_problems(y1, d1, n)
    if y1 is not None:
        report.add("output shape", "shape" not in problems,
                   problems.get("shape", f"{d1['type']} of shape {y1.shape} for {n} images"),
                   "predict(X) must return a numpy array of shape (n,): one label per image (np.argmax(probs, axis=1))")
    report.add("output dtype", "dtype" not in problems,
               problems.get("dtype", f"{d1.get('dtype', d1['type'])} (integer labels, or floats with integer values)"),
               "return integer labels: .astype(np.int64)")
    if "shape" not in problems and "dtype" not in problems:
        report.add("output range", "values" not in problems,
                   problems.get("values", f"labels in [{y1.min() if n else '-'}, {y1.max() if n else '-'}] "
                                          f"(expected 0-{NUM_CLASSES - 1})"),
                   f"return class indices 0-{NUM_CLASSES - 1}, not probabilities or one-hot rows")
    same = y1 is not None and outputs.get("y2") is not None and np.array_equal(y1, outputs["y2"])
    report.add("deterministic", same, "two calls on the same images agree" if same else
               "two calls on the same images gave different labels",
               "make predict deterministic: fixed TTA seeds, inference mode (training=False), no random ops")
    for key, size in (("one", 1), ("zero", 0)):
        y, d = outputs.get(key), result[key]
        problems = _label_problems(y, d, size)
        report.add(f"{size} image{'s' if size != 1 else ''}", not problems,
                   "; ".join(problems.values()) if problems else f"{d['type']} of shape {y.shape}",
                   f"predict must accept n = {size} and return shape ({size},)")
    proba = outputs.get("proba")
    if proba is not None:
        ok = proba.shape == (n, NUM_CLASSES) and np.all(proba >= -1e-6) and np.all(proba <= 1 + 1e-6) \
            and np.allclose(proba.sum(axis=1), 1.0, atol=1e-3)
        report.add("probabilities", ok, f"predict_proba {proba.shape}, rows sum to 1" if ok else
                   f"predict_proba gave {proba.shape} with values in [{proba.min():.3g}, {proba.max():.3g}]",
                   f"predict_proba must return (n, {NUM_CLASSES}) probabilities (softmax)")
        report.probs = proba
    touched = {k: v for k, v in changed.items() if v}
    report.add("no files written", not touched, "nothing written in the submission folder or working directory"
               if not touched else "; ".join(f"{k}: {', '.join(v[:5])}" for k, v in touched.items()),
               "model.py must only read its own files: write nothing (no logs, caches or checkpoints)")
    # the second call on the same images gives the rate, as --fit-budget's passes do
    fixed, per_image = measured_costs(result["import_s"], result["load_s"], result["first_s"], n,
                                      result["second_s"], n)
    total = server_seconds(fixed, per_image, limits.test_images, 1.0)
    report.figures.update(per_image_s=per_image, images_per_s=1 / per_image if per_image else float("inf"),
                          extrapolated_s=total, tta=result.get("tta"))
    server = report.figures["server_s"] = server_seconds(fixed, per_image, limits.test_images, limits.speedup)
    report.add("time", server <= limits.time_limit_s,
               f"{per_image * 1000:.1f} ms/image here -> {limits.test_images} images in ~{total:.0f} s here"
               + (f", ~{server:.0f} s on a server {limits.speedup:g}x faster" if limits.speedup != 1 else "")
               + f" (limit {limits.time_limit_s:g} s)",
               "predict faster: fewer TTA views (--tta 4, or 1), a smaller backbone or a smaller resize_to; "
               "or set --time-limit/--test-images/--speedup to the phase's real figures")


def _label_problems(labels, described: dict, n: int) -> dict:
    """ingestion.label_problems of the job's array, or why the job could not hand one back."""
    if labels is None:
        return {"dtype": f"{described['type']} that is not a numeric array; expected shape ({n},) of integer labels"}
    return label_problems(labels, n)


def check_reference(result, outputs, report: Report, limits: Limits) -> None:
    """Each network of the zip, run by `result`'s interpreter, against the probabilities
    the training process's model gave on the same probe images (stored at export)."""
    names = result.get("references")
    if "error" in result or names is None:
        return
    if not names:
        report.add("training parity", True, "not checked: no member stores reference probabilities "
                                            f"(exported before {SPEC_FORMAT})")
        return
    diffs = [float(np.abs(outputs[f"net_{i}"] - outputs[f"ref_{i}"]).max()) for i in range(len(names))]
    # float16 weights (--half) are held to the --half tolerance, checked against float32 separately
    tolerances = [limits.half_tolerance if dtype == "float16" else limits.reference_tolerance
                  for dtype in result.get("reference_dtypes") or ["float32"] * len(names)]
    report.figures["reference_max_diff"] = max(diffs)
    ok = all(d <= t for d, t in zip(diffs, tolerances))
    report.add("training parity", ok,
               f"{_versions(result)} vs the training model, one view, {len(outputs['net_0'])} probe images: max |dp| "
               + ", ".join(f"{n} {d:.2g} (tolerance {t:g})" for n, d, t in zip(names, diffs, tolerances)),
               "the shipped network is not the trained one: re-export with the current bloodcells, and report "
               "the backbone if it persists")


def check_parity(folder, probe, result, report: Report, other_python, limits: Limits) -> None:
    """Same zip, same images, another interpreter (this project's versions): the server's
    Keras must compute the same probabilities, not merely load the weights."""
    other, other_outputs, _ = run_folder(folder, other_python, probe, limits.timeout_s)
    compare_probabilities(
        report, "parity", "parity", report.probs, other_outputs.get("proba"), limits.parity_tolerance,
        missing=(f"could not run with {_versions(other)}: {sandbox.last_line(other.get('error', 'no predict_proba'))}",
                 "check the zip runs here first"),
        label=f"{_versions(result)} vs {_versions(other)}: max |dp|",
        fix="the two versions compute this network differently: rebuild the export's network with the "
            "server's versions (a layer changed between Keras releases) or choose another backbone")


def compare_probabilities(report, check, key, probs, reference, tolerance, missing, label, fix) -> None:
    """One check that two runs' probabilities agree within `tolerance` (max abs difference);
    `missing` is (detail, fix) for when either run gave none."""
    if probs is None or reference is None:
        report.add(check, False, *missing)
        return
    diff = float(np.abs(probs - reference).max())
    agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    report.figures.update({f"{key}_max_diff": diff, f"{key}_label_agreement": agree})
    report.add(check, diff <= tolerance,
               f"{label} = {diff:.2g} (tolerance {tolerance:g}), labels agree on {agree:.0%} of {len(probs)} probe images",
               fix)


def _versions(result) -> str:
    v = result.get("versions") or {}
    return f"TF {v.get('tensorflow', '?')} / Keras {v.get('keras', '?')}"


def validate(zip_path, python=None, limits: Limits | None = None, reference=None, parity_python=None) -> Report:
    """Check a submission zip with interpreter `python`. `reference` (a folder with
    float32 weights) adds the --half comparison; `parity_python` (another interpreter)
    adds a check that it computes the same probabilities. Never raises for a bad zip:
    the report lists what failed."""
    limits = limits or Limits()
    zip_path = Path(zip_path)
    report = Report(zip_path)
    size_mb = zip_path.stat().st_size / 1e6
    report.add("size", size_mb <= limits.max_size_mb, f"{size_mb:.1f} MB (limit {limits.max_size_mb:g} MB)",
               "ship fewer or smaller models, or --half (float16 weights, half the size)")
    # the layout rule local_eval.py's ingestion applies
    names, problem = zip_layout(zip_path)
    report.add("layout", not problem, problem or f"{len(names)} files, model.py at the root",
               "rebuild the zip with build_submission.py (model.py at the zip's root, nothing edited after)")
    if not names:
        return report
    with zipfile.ZipFile(zip_path) as zf, sandbox.temporary_folder("submission") as tmp:
        if not check_layout(zf, report) or not all(c.ok for c in report.checks if c.name not in ("size", "manifest")):
            report.add("runs", False, "not run: fix the problems above first", "fix the problems above, then rebuild")
            return report
        folder = Path(tmp) / "submission"
        zf.extractall(folder)
        probe = probe_images(limits.probe_images)
        result, outputs, changed = run_folder(folder, python, probe, limits.timeout_s)
        check_outputs(result, outputs, changed, len(probe), report, limits)
        check_reference(result, outputs, report, limits)
        if parity_python is not None and "error" not in result:
            check_parity(folder, probe, result, report, parity_python, limits)
    if reference is not None and report.probs is not None:
        ref_result, ref_outputs, _ = run_folder(reference, python, probe, limits.timeout_s)
        compare_probabilities(
            report, "float16 vs float32", "half", report.probs, ref_outputs.get("proba"), limits.half_tolerance,
            missing=(f"float32 reference did not run: {sandbox.last_line(ref_result.get('error', 'no predict_proba'))}",
                     "rebuild without --half"),
            label="max |p16 - p32|", fix="float16 changes this model's predictions: build without --half")
    return report
