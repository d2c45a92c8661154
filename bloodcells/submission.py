"""Build a submission zip and prove it works before a submission is spent.

`build()` puts `model.py` and each exported model (contract 1: `model.json` +
`model.weights.h5`, renamed `<name>.json` / `<name>.weights.h5`) at the zip's root with a
manifest. `validate()` checks a zip statically (layout, sizes, model.py's imports and
paths), then extracts it into a fresh temporary folder and runs it in a new Python
process - possibly another interpreter, e.g. the server-pinned `.venv-server` - whose
working directory is elsewhere, importing `Model` the way Codabench's ingestion does.
Every failed check says what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodcells import IMAGE_SIZE, NUM_CLASSES
from bloodcells.budget import DEFAULT_MARGIN
from bloodcells.cli import UserError, run_cli
from bloodcells.files import atomic_path, sha256_file
from bloodcells.models import LEGACY_FORMAT, SPEC_FORMAT, export, make_spec, read_export, shipped_model_module

REPO = Path(__file__).resolve().parents[1]
MODEL_PY = REPO / "model.py"
MANIFEST_FORMAT = "bloodcells-submission/1"
MANIFEST_NAME = "manifest.json"

# Imports the server does not have (or that would ship this project instead of the zip).
FORBIDDEN_IMPORTS = ("bloodcells", "keras_cv", "keras_hub", "keras_nlp", "torch", "torchvision",
                     "tensorflow_addons", "tensorflow_hub")
ABSOLUTE_PATH = re.compile(r"^(/[^\s/]+/|~/|[A-Za-z]:[\\/])\S*$")


@dataclass
class Limits:
    """What a submission must meet. Defaults are printed by every validation."""

    probe_images: int = 64  # images predicted in the validation run
    test_images: int = 20_000  # test-set size the time per image is extrapolated to
    time_limit_s: float = 3600.0  # the phase's time limit
    speedup: float = 1.0  # how many times faster the server is than this machine (e.g. it has a GPU)
    max_size_mb: float = 500.0  # zip size limit
    half_tolerance: float = 0.01  # --half: largest allowed |p16 - p32| on the probe batch
    parity_tolerance: float = 1e-3  # server check: largest allowed |p_server - p_here|
    reference_tolerance: float = 1e-5  # largest allowed |p_zip - p_training model| (single view)
    timeout_s: float = 1800.0  # the validation process is stopped after this

    def describe(self) -> str:
        return (f"probe {self.probe_images} images, test set {self.test_images} images, "
                f"time limit {self.time_limit_s:g} s (server {self.speedup:g}x this machine), size limit {self.max_size_mb:g} MB, "
                f"half tolerance {self.half_tolerance:g}")


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


# ---------------------------------------------------------------------------------------
# Exported models (contract 1)
# ---------------------------------------------------------------------------------------

def default_spec(**overrides) -> dict:
    """A complete contract-1 model.json dict for a small CNN; `overrides` replace top-level keys."""
    spec = make_spec({"backbone": "small_cnn"}, name="model", source_run="untrained")
    spec.update(overrides)
    return spec


def export_untrained(folder, seed: int = 0, logit_scale: float = 1.0, **overrides) -> Path:
    """Write an UNTRAINED network in contract-1 layout (tests, CI, size/speed checks).
    Trained exports are written by bloodcells.train; this only exists so the submission
    path can be exercised without training. `logit_scale` multiplies the last layer's
    weights: an untrained network's probabilities are nearly uniform, which would hide
    the differences tests look for."""
    import keras

    spec = default_spec(**overrides)
    keras.utils.set_random_seed(seed)
    net = shipped_model_module().build_network(spec)
    if logit_scale != 1.0:
        layer = net.get_layer("logits")
        layer.set_weights([w * logit_scale for w in layer.get_weights()])
    return export(net, spec, folder)


TINY_BACKBONE = {"residual": True, "stem_stride": 2, "input_norm": "image"}


def export_tiny(folder, seed: int = 0, **overrides) -> Path:
    """An untrained tiny small_cnn export (~80 kB, logits scaled up so its probabilities
    are far from uniform): fast enough for tests and CI."""
    overrides.setdefault("logit_scale", 20.0)
    # the CPU recipe's layers in miniature (residual blocks, subsampling shortcut, input
    # standardisation), so server checks exercise what configs/cpu.toml ships
    overrides.setdefault("backbone_options", dict(TINY_BACKBONE, widths=[8, 16]))
    overrides.setdefault("head", {"dense_units": 16, "dropout": 0.2, "bn_momentum": 0.9, "activation": "relu"})
    return export_untrained(folder, seed=seed, **overrides)


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


# ---------------------------------------------------------------------------------------
# Building the zip
# ---------------------------------------------------------------------------------------

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
        tta_spec = dict(spec.get("tta") or {"views": 10, "merge": "softmax_mean_logits", "mode": "random"})
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


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

def probe_images(n: int, seed: int = 0) -> np.ndarray:
    """Deterministic cell-like probe images: a dark blob on a light, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(30, 66, size=2)
        r = rng.uniform(10, 30)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        colour = rng.uniform(60, 200, size=3)
        img = 225 - blob * (225 - colour) + rng.normal(0, 8, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images


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


def check_manifest(zf: zipfile.ZipFile, root: set, report: Report) -> None:
    """The files are the ones the manifest lists, unchanged since the zip was built."""
    import hashlib

    try:
        listed = {f["name"]: f["sha256"] for f in json.loads(zf.read(MANIFEST_NAME))["files"]}
    except (ValueError, KeyError, TypeError) as exc:
        report.add("manifest", False, f"unreadable manifest.json ({exc})", "rebuild the zip with build_submission.py")
        return
    changed = sorted(n for n, digest in listed.items()
                     if n not in root or hashlib.sha256(zf.read(n)).hexdigest() != digest)
    extra = sorted(root - set(listed) - {MANIFEST_NAME})
    report.add("manifest", not changed and not extra,
               f"{len(listed)} files match their sha256" if not changed and not extra else
               "; ".join(filter(None, [changed and f"changed or missing since built: {', '.join(changed)}",
                                       extra and f"not in the manifest: {', '.join(extra)}"])),
               "rebuild the zip with build_submission.py instead of editing it")


def check_layout(zf: zipfile.ZipFile, report: Report) -> bool:
    """Everything at the root, model.py, specs and their weights, no .keras files.
    Returns whether it is worth running the zip."""
    names = [i.filename for i in zf.infolist() if not i.is_dir()]
    nested = [n for n in names if "/" in n or "\\" in n]
    report.add("layout", not nested,
               f"{len(names)} files at the root" if not nested else
               f"files inside folders: {', '.join(nested[:5])}{' ...' if len(nested) > 5 else ''}",
               "put every file at the zip's root (build it with build_submission.py, or `zip -j`)")
    root = {n for n in names if "/" not in n}
    has_model = report.add("model.py", "model.py" in root,
                           "present" if "model.py" in root else "model.py is not at the zip's root",
                           "ship model.py at the root: build the zip with build_submission.py")
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
        check_manifest(zf, root, report)
    if has_model:
        check_code(zf.read("model.py").decode("utf-8", errors="replace"), report)
    return has_model and bool(specs) and not missing and not nested


# The validation process: standalone (numpy only before the submission is imported), so
# it runs in any interpreter, e.g. the server-pinned .venv-server.
CHILD = r'''
import json, os, sys, time, traceback
sub, probe_path, out_dir = sys.argv[1:4]
res = {"stage": "import numpy"}
def describe(y):
    import numpy as np
    d = {"type": type(y).__name__}
    if isinstance(y, np.ndarray):
        d.update(dtype=str(y.dtype), shape=list(y.shape))
    return d
try:
    import numpy as np
    X = np.load(probe_path)
    res["stage"] = "import model"
    t = time.perf_counter()
    sys.path.insert(0, sub)  # as Codabench's ingestion does
    from model import Model
    res["import_s"] = time.perf_counter() - t
    try:
        import tensorflow, keras
        res["versions"] = {"tensorflow": tensorflow.__version__, "keras": keras.__version__, "numpy": np.__version__}
    except ImportError:
        pass
    res["stage"] = "Model()"
    t = time.perf_counter()
    M = Model()
    res["load_s"] = time.perf_counter() - t
    res["stage"] = "predict (first call)"
    t = time.perf_counter()
    y1 = M.predict(X)
    res["first_s"] = time.perf_counter() - t
    res["stage"] = "predict (second call)"
    t = time.perf_counter()
    y2 = M.predict(X)
    res["second_s"] = time.perf_counter() - t
    res["y1"], res["y2"] = describe(y1), describe(y2)
    arrays = {"y1": np.asarray(y1), "y2": np.asarray(y2)}
    res["stage"] = "predict (1 image)"
    y = M.predict(X[:1]); res["one"] = describe(y)
    res["stage"] = "predict (0 images)"
    y = M.predict(X[:0]); res["zero"] = describe(y)
    if hasattr(M, "predict_proba"):
        res["stage"] = "predict_proba"
        p = M.predict_proba(X); res["proba"] = describe(p); arrays["proba"] = np.asarray(p)
    res["tta"] = [m.get("tta") for m in getattr(M, "members", []) if isinstance(m, dict)]
    res["stage"] = "reference"
    res["references"] = []
    for m in getattr(M, "members", []):  # each network, one view, vs the training model's stored probabilities
        ref = (m.get("spec") or {}).get("reference") if isinstance(m, dict) else None
        if not ref or "network" not in m:
            continue
        k = min(len(X), len(ref["probs"]))
        z = np.asarray(m["network"](X[:k].astype(np.float32), training=False), dtype=np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        i = len(res["references"])
        arrays[f"net_{i}"], arrays[f"ref_{i}"] = p / p.sum(axis=1, keepdims=True), np.asarray(ref["probs"])[:k]
        res["references"].append(str(m.get("name")))
        res.setdefault("reference_dtypes", []).append(str((m.get("spec") or {}).get("weights_dtype", "float32")))
    np.savez(os.path.join(out_dir, "outputs.npz"), **arrays)
    res["stage"] = "done"
except BaseException:
    res["error"] = traceback.format_exc()
with open(os.path.join(out_dir, "result.json"), "w") as fh:
    json.dump(res, fh)
'''


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def run_folder(folder, python=None, probe=None, timeout_s=1800.0) -> tuple[dict, dict, dict]:
    """Run the submission in `folder` in a new process (cwd elsewhere). Returns
    (result dict, output arrays, {watched place: changed files})."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="bloodcells_run_") as tmp:
        tmp = Path(tmp)
        cwd, io = tmp / "cwd", tmp / "io"
        cwd.mkdir()
        io.mkdir()
        np.save(io / "probe.npy", probe)
        (io / "child.py").write_text(CHILD)
        before = _snapshot(folder)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
        env.update(PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONNOUSERSITE="1")
        try:
            proc = subprocess.run([os.path.abspath(python or sys.executable), str(io / "child.py"), str(folder.resolve()),
                                   str(io / "probe.npy"), str(io)], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
            stderr = proc.stderr
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:g} s", "stage": "timeout"}, {}, {}
        except OSError as exc:
            return {"error": f"cannot start {python}: {exc}", "stage": "start"}, {}, {}
        result_file = io / "result.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text())
        else:
            result = {"stage": "crashed", "error": f"exit status {proc.returncode}\n{stderr[-2000:]}"}
        outputs = {}
        if (io / "outputs.npz").is_file():
            with np.load(io / "outputs.npz", allow_pickle=False) as f:
                outputs = {k: f[k] for k in f.files}
        after = _snapshot(folder)
        changed = {"submission folder": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)),
                   "working directory": sorted(_snapshot(cwd))}
        return result, outputs, changed


def _last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else text


def check_outputs(result, outputs, changed, n, report: Report, limits: Limits) -> None:
    if "error" in result:
        stage = result.get("stage", "?")
        report.add("runs", False, f"failed at {stage}: {_last_line(result['error'])}",
                   {"import model": "model.py must import with numpy and tensorflow/keras only",
                    "Model()": "Model() must take no arguments and find its files next to model.py "
                               "(os.path.dirname(__file__)); check the weights match the spec",
                    "start": "pass an existing interpreter to --python (make server-check builds .venv-server)",
                    "timeout": f"make predict faster (fewer TTA views: --tta, a smaller backbone) or raise --timeout",
                    }.get(stage, "run `python -c 'from model import Model; Model().predict(X)'` in the extracted "
                                 "folder and fix the error shown"))
        report.figures["error"] = result["error"]
        return
    report.add("runs", True, f"{_versions(result)}: import {result['import_s']:.1f} s, Model() {result['load_s']:.1f} s, "
                             f"first predict {result['first_s']:.1f} s")
    y1, d1 = outputs.get("y1"), result["y1"]
    shape_ok = d1["type"] == "ndarray" and d1.get("shape") == [n]
    report.add("output shape", shape_ok, f"{d1['type']} {d1.get('shape')} for {n} images (expected ndarray [{n}])",
               "predict(X) must return a numpy array of shape (n,): one label per image (np.argmax(probs, axis=1))")
    dtype_ok = d1.get("dtype", "").startswith(("int", "uint"))
    report.add("output dtype", dtype_ok, f"{d1.get('dtype', d1['type'])} (expected an integer dtype)",
               "return integer labels: .astype(np.int64)")
    if shape_ok and y1 is not None and y1.dtype.kind in "iuf":
        in_range = bool(np.all((y1 >= 0) & (y1 < NUM_CLASSES) & (y1 == np.round(y1))))
        report.add("output range", in_range, f"labels in [{y1.min() if n else '-'}, {y1.max() if n else '-'}] "
                                             f"(expected 0-{NUM_CLASSES - 1})",
                   f"return class indices 0-{NUM_CLASSES - 1}, not probabilities or one-hot rows")
    same = y1 is not None and outputs.get("y2") is not None and np.array_equal(y1, outputs["y2"])
    report.add("deterministic", same, "two calls on the same images agree" if same else
               "two calls on the same images gave different labels",
               "make predict deterministic: fixed TTA seeds, inference mode (training=False), no random ops")
    for key, size in (("one", 1), ("zero", 0)):
        d = result[key]
        ok = d["type"] == "ndarray" and d.get("shape") == [size]
        report.add(f"{size} image{'s' if size != 1 else ''}", ok, f"{d['type']} {d.get('shape')}",
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
    per_image = result["second_s"] / max(n, 1)
    total = result["import_s"] + result["load_s"] + result["first_s"] + per_image * limits.test_images
    report.figures.update(per_image_s=per_image, images_per_s=1 / per_image if per_image else float("inf"),
                          extrapolated_s=total, tta=result.get("tta"))
    server = total / limits.speedup
    report.add("time", server <= limits.time_limit_s,
               f"{per_image * 1000:.1f} ms/image here -> {limits.test_images} images in ~{total:.0f} s here"
               + (f", ~{server:.0f} s on a server {limits.speedup:g}x faster" if limits.speedup != 1 else "")
               + f" (limit {limits.time_limit_s:g} s)",
               "predict faster: fewer TTA views (--tta 4, or 1), a smaller backbone or a smaller resize_to; "
               "or set --time-limit/--test-images/--speedup to the phase's real figures")


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
        missing=(f"could not run with {_versions(other)}: {_last_line(other.get('error', 'no predict_proba'))}",
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
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        report.add("zip", False, f"not a readable zip ({exc})", "rebuild it with build_submission.py")
        return report
    with zf, tempfile.TemporaryDirectory(prefix="bloodcells_submission_") as tmp:
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
            missing=(f"float32 reference did not run: {_last_line(ref_result.get('error', 'no predict_proba'))}",
                     "rebuild without --half"),
            label="max |p16 - p32|", fix="float16 changes this model's predictions: build without --half")
    return report


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
    if args.speedup <= 0:
        raise UserError(f"--speedup: expected a positive factor, got {args.speedup}")
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
    ap.add_argument("--time-limit", type=float, default=d.time_limit_s, help=f"seconds, default {d.time_limit_s:g}")
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
    limits = _limits(args)
    if args.python and not Path(args.python).exists():
        raise UserError(f"--python: {args.python} not found; build the server environment with `make server-check`")
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
    for w in weights:
        read_export(w)
    extra_spec = None
    if args.fit_budget:
        from bloodcells.budget import fit_budget

        plan = fit_budget(weights, limits, args.tta, args.tta_mode, args.python, args.budget_margin)
        weights, args.tta, extra_spec = plan.weights, plan.views, {"budget": plan.record()}
    final = submission_path(args.out)
    with tempfile.TemporaryDirectory(prefix="bloodcells_stage_") as tmp:
        staged = Path(tmp) / "zip"
        manifest = stage(weights, staged, args.tta, args.tta_mode, args.tta_merge, half=args.half, extra_spec=extra_spec)
        reference = None
        if args.half:
            reference = Path(tmp) / "float32"
            stage(weights, reference, args.tta, args.tta_mode, args.tta_merge, half=False, extra_spec=extra_spec)
        for m in manifest["models"]:
            print(f"model {m['name']}: {m['backbone']} from {m['export']} (run {m['source_run']}), "
                  f"TTA {m['tta']}, weights {m['weights_dtype']}")
        with atomic_path(final) as tmp_zip:
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


def export_main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bloodcells.submission", description=(
        "Write an UNTRAINED model in export layout (model.json + model.weights.h5): to exercise "
        "the submission path (CI, size and speed checks) without training."))
    ap.add_argument("--out", type=Path, required=True, help="folder to write")
    ap.add_argument("--backbone", default="small_cnn", help="small_cnn (tiny, default) or e.g. efficientnetb7")
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16], help="small_cnn widths (default 8 16)")
    ap.add_argument("--name", default="untrained")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.backbone == "small_cnn":
        folder = export_tiny(args.out, seed=args.seed, name=args.name,
                             backbone_options=dict(TINY_BACKBONE, widths=args.widths))
    else:
        folder = export_untrained(args.out, seed=args.seed, name=args.name, backbone=args.backbone)
    print(folder)


build_main = run_cli(main)

if __name__ == "__main__":
    run_cli(export_main)()
