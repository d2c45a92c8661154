"""Packaging a submission: `model.py` and each exported model (contract 1: `model.json` +
`model.weights.h5`, renamed `<name>.json` / `<name>.weights.h5`) at the zip's root with a
manifest, optionally with float16 weights (--half). `stage()` lays out the files,
`zip_folder()` zips them, `locked_temporary_zip()` keeps a half-built zip out of sight. The
build command (build_submission.py) is bloodcells.build.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from bloodcells.cli import UserError
from bloodcells.files import sha256_file
from bloodcells.network import read_export, shipped_model_module
from bloodcells.shipped import MODEL_PY

MANIFEST_NAME = shipped_model_module().MANIFEST_NAME
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
