"""Load and validate labelled blood-cell images from the formats users have.

Formats:
  * the AN2DL file: an npz with `images` (N, 96, 96, 3) and `labels` (N,) or (N, 1);
  * a MedMNIST-style npz with `{train,val,test}_images` / `_labels` (pick a split);
  * a folder with one sub-folder of image files per class (named 0-7 or by class).

Whatever comes in, what goes out is a `Dataset` with uint8 images (N, 96, 96, 3) and
int64 labels (N,) in 0-7. Anything wrong raises `DataError` with one line naming the
file, the field and what was expected. Conversions that are safe (float images in
0-1 or 0-255, other image sizes, one-hot labels) are done and announced as notices.
"""

from __future__ import annotations

import argparse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from .cli import UserError, check_distinct_outputs, check_output_file, run_cli

MEDMNIST_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
# Folder names accepted for each class, besides the digit itself.
CLASS_FOLDER_ALIASES = {
    0: {"basophil", "basophils", "bas"},
    1: {"eosinophil", "eosinophils", "eos"},
    2: {"erythroblast", "erythroblasts", "ery"},
    3: {"immature granulocytes", "immature_granulocytes", "immature-granulocytes", "ig"},
    4: {"lymphocyte", "lymphocytes", "lym"},
    5: {"monocyte", "monocytes", "mon"},
    6: {"neutrophil", "neutrophils", "neu"},
    7: {"platelet", "platelets", "plt", "thrombocyte"},
}


class DataError(UserError):
    """The input data is malformed. The message is one line: `FILE: FIELD: problem`."""


@dataclass
class Dataset:
    images: np.ndarray  # (N, 96, 96, 3) uint8
    labels: np.ndarray  # (N,) int64 in 0..7
    source: str = ""  # file (and split) it came from
    notices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Dataset":
        return Dataset(self.images[index], self.labels[index], self.source, list(self.notices))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)


def load_dataset(path, split: str | None = None, *, image_size: int = IMAGE_SIZE,
                 require_labels: bool = True, notify=print) -> Dataset:
    """Load any supported format. `split` picks a MedMNIST split (default 'train').
    `notify` receives one line per conversion made (pass `None` to stay quiet)."""
    path = Path(path)
    notices: list[str] = []
    if not path.exists():
        raise DataError(f"{path}: file not found; expected an .npz file or a folder of class folders")
    if path.is_dir():
        images, labels, source = _read_folder(path)
    else:
        images, labels, source = _read_npz(path, split, require_labels)
    images = _validate_images(images, source, image_size, notices)
    if labels is not None:
        labels = _validate_labels(labels, len(images), source, notices)
    else:
        labels = np.full(len(images), -1, dtype=np.int64)
    if notify:
        for line in notices:
            notify(f"note: {line}")
    return Dataset(images, labels, source, notices)


def load_images(path, split: str | None = None, **kwargs) -> np.ndarray:
    """Images only (labels optional), e.g. an unlabelled test file."""
    return load_dataset(path, split, require_labels=False, **kwargs).images


# -- readers ---------------------------------------------------------------------------

def _open_npz(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: file: unreadable or truncated ({_short(exc)}); "
                        f"expected an npz written by numpy.savez") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: file: holds a single array; expected an npz with "
                        f"'images' and 'labels' (or MedMNIST '<split>_images')")
    return archive


def _npz_keys(archive, path: Path, split: str | None, require_labels: bool):
    """(image key, label key or None, source) of the split asked for."""
    keys = set(archive.files)
    if "images" in keys:
        if split not in (None, "all"):
            raise DataError(f"{path}: split: '{split}' asked for, but this is an AN2DL file "
                            f"with 'images'/'labels' and no splits; expected no split")
        image_key, label_key, source = "images", "labels", str(path)
    else:
        available = [s for s in MEDMNIST_SPLITS if f"{s}_images" in keys]
        if not available:
            raise DataError(f"{path}: images: key missing; expected 'images' (AN2DL) or "
                            f"'train_images'/'val_images'/'test_images' (MedMNIST), "
                            f"found {sorted(keys) or 'no arrays'}")
        split = split or "train"
        if split not in available:
            raise DataError(f"{path}: split: '{split}' not in the file; expected one of {available}")
        image_key, label_key = f"{split}_images", f"{split}_labels"
        source = f"{path}[{split}]"
    if label_key not in keys:
        if require_labels:
            raise DataError(f"{path}: {label_key}: key missing; expected integer labels 0-7 "
                            f"beside '{image_key}'")
        label_key = None
    return image_key, label_key, source


def _read_npz(path: Path, split: str | None, require_labels: bool):
    with _open_npz(path) as archive:
        image_key, label_key, source = _npz_keys(archive, path, split, require_labels)
        images = _read_array(archive, image_key, path)
        labels = _read_array(archive, label_key, path) if label_key else None
    return images, labels, source


def _array_header(archive, key: str, path: Path):
    """(shape, dtype) of an npz member from its .npy header, without reading the data."""
    try:
        with archive.zip.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: {key}: unreadable or truncated array ({_short(exc)})") from None
    return shape, dtype


def _read_array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: {key}: unreadable or truncated array ({_short(exc)})") from None


def _read_folder(path: Path):
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{path}: folder: no class sub-folders; expected one folder per class "
                        f"named 0-7 or {', '.join(CLASS_NAMES)}")
    images, labels = [], []
    for class_dir in class_dirs:
        label = _class_of_folder(class_dir)
        files = sorted(f for f in class_dir.iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        for file in files:
            try:
                with Image.open(file) as img:
                    img.load()
                    images.append(np.asarray(_to_rgb(img, IMAGE_SIZE)))
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise DataError(f"{file}: image: unreadable or truncated ({_short(exc)}); "
                                f"expected a PNG/JPEG image") from None
            labels.append(label)
    if not images:
        raise DataError(f"{path}: images: no image files in the class folders; expected "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} files")
    return np.stack(images), np.asarray(labels, dtype=np.int64), str(path)


def _class_of_folder(folder: Path) -> int:
    name = folder.name.strip().lower()
    if name.isdigit() and int(name) < NUM_CLASSES:
        return int(name)
    for label, aliases in CLASS_FOLDER_ALIASES.items():
        if name in aliases:
            return label
    raise DataError(f"{folder}: class folder: unknown name '{folder.name}'; expected 0-7 or one of "
                    f"{', '.join(CLASS_NAMES)}")


def _to_rgb(img, size: int):
    """Folder images may be of any mode and size: RGB, resized with an area filter."""
    img = img.convert("RGB")
    if img.size != (size, size):
        from PIL import Image
        img = img.resize((size, size), Image.Resampling.BOX if img.size[0] > size else Image.Resampling.BILINEAR)
    return img


# -- validation -------------------------------------------------------------------------

def _validate_images(images: np.ndarray, source: str, image_size: int, notices: list[str]) -> np.ndarray:
    field_name = "images"
    _check_image_dtype(images.dtype, source)
    _check_image_shape(images.shape, source, image_size)
    if images.dtype != np.uint8:
        images = _to_uint8(images, source, field_name, notices)
    if images.shape[1:3] != (image_size, image_size):
        notices.append(f"{source}: images are {images.shape[1]}x{images.shape[2]}, "
                       f"resized to {image_size}x{image_size}")
        images = resize_images(images, image_size)
    return np.ascontiguousarray(images)


def _check_image_shape(shape: tuple, source: str, image_size: int) -> None:
    if len(shape) != 4:
        raise DataError(f"{source}: images: rank {len(shape)} with shape {shape}; "
                        f"expected (N, {image_size}, {image_size}, 3)")
    if shape[-1] != 3:
        raise DataError(f"{source}: images: {shape[-1]} channels in shape {shape}; expected 3 (RGB)")
    if shape[0] == 0:
        raise DataError(f"{source}: images: empty set (0 images); expected at least one image")


def _check_image_dtype(dtype: np.dtype, source: str) -> None:
    if dtype.kind == "b":  # 0/1 would become black images
        raise DataError(f"{source}: images: bool images; expected uint8 or float pixels")
    if dtype == object or dtype.kind not in "iuf":
        raise DataError(f"{source}: images: dtype {dtype}; expected uint8 or float pixels")


def _to_uint8(images: np.ndarray, source: str, field_name: str, notices: list[str]) -> np.ndarray:
    as_float = images.astype(np.float32, copy=False)
    if images.dtype.kind == "f" and not np.isfinite(as_float).all():
        bad = int((~np.isfinite(as_float)).sum())
        raise DataError(f"{source}: {field_name}: {bad} NaN or infinite values; expected finite pixels in 0-255")
    lo, hi = float(as_float.min()), float(as_float.max())
    if lo < -0.5 or hi > 255.5:  # half a level of slack: rounding noise from float pipelines
        raise DataError(f"{source}: {field_name}: values span {lo:g}..{hi:g}; expected 0-255 (or 0-1 floats)")
    if images.dtype.kind == "f" and hi <= 1.0:
        notices.append(f"{source}: float images in 0-1 scaled to 0-255 uint8")
        as_float = as_float * 255.0
    else:
        notices.append(f"{source}: {images.dtype} images in 0-255 converted to uint8")
    return np.clip(np.rint(as_float), 0, 255).astype(np.uint8)


def _validate_labels(labels: np.ndarray, n_images: int, source: str, notices: list[str]) -> np.ndarray:
    field_name = "labels"
    if labels.dtype == object or labels.dtype.kind not in "biuf":
        raise DataError(f"{source}: {field_name}: dtype {labels.dtype}; expected integer class labels 0-7")
    if labels.ndim == 2 and labels.shape[1] == NUM_CLASSES and labels.shape[0] == n_images:
        rows_ok = np.all((labels == 0) | (labels == 1)) and np.all(labels.sum(axis=1) == 1)
        if not rows_ok:
            raise DataError(f"{source}: {field_name}: shape {labels.shape} but rows are not one-hot; "
                            f"expected (N,) or (N, 1) integer labels 0-7")
        notices.append(f"{source}: one-hot labels converted to class indices")
        labels = labels.argmax(axis=1)
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim != 1:
        raise DataError(f"{source}: {field_name}: shape {labels.shape}; expected (N,) or (N, 1)")
    if len(labels) != n_images:
        raise DataError(f"{source}: {field_name}: {len(labels)} labels for {n_images} images; "
                        f"expected one label per image")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise DataError(f"{source}: {field_name}: NaN or infinite labels; expected integers 0-7")
        if not np.all(labels == np.round(labels)):
            raise DataError(f"{source}: {field_name}: non-integer values (e.g. {labels[labels != np.round(labels)][0]:g}); "
                            f"expected integers 0-7")
        notices.append(f"{source}: float labels with integer values converted to int")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise DataError(f"{source}: {field_name}: {int(bad.sum())} values outside 0-7 (e.g. {labels[bad][0]}); "
                        f"expected integers 0-7")
    return labels


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images with an area filter when shrinking, bilinear when growing."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    method = Image.Resampling.BOX if images.shape[1] > size else Image.Resampling.BILINEAR
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), method))
    return out


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


# -- splits -----------------------------------------------------------------------------

# The held-out test file written by --holdout carries this marker, so tools that choose
# something (bloodcells.ensemble_select) can refuse it; readers ignore the extra key.
ROLE_KEY = "role"
HELD_OUT_ROLE = "held_out_test"


def held_out_reason(path, split: str | None = None) -> str | None:
    """Why (path, split) is a test set nothing may be chosen on, or None: a MedMNIST
    file's `test` split, or a file that `--holdout` wrote as the held-out test."""
    if split == "test":
        return "the 'test' split is the held-out test"
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            role = str(archive[ROLE_KEY]) if ROLE_KEY in archive.files else None
    except Exception:  # unreadable: load_dataset reports it properly
        return None
    if role == HELD_OUT_ROLE:
        return f"written by `python -m bloodcells.data --holdout` as the held-out test ({ROLE_KEY}={role})"
    return None


def fingerprint(*arrays) -> str:
    """sha256 over the raw bytes of arrays (e.g. images, labels): identifies a data set's
    content whatever file or split it came from."""
    import hashlib

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def stratified_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0):
    """Per-class seeded split. Returns sorted (train_index, val_index). Every class with
    at least two images keeps at least one image on each side."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_val = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def _has_own_splits(path: Path) -> bool:
    """Whether `path` is a MedMNIST file with its own train and val splits."""
    if path.suffix != ".npz" or not path.is_file():
        return False
    with _open_npz(path) as archive:
        return {"train_images", "val_images"} <= set(archive.files)


def train_val(path, val_fraction: float = 0.2, seed: int = 0, notify=print):
    """Training and validation sets from one path: a MedMNIST file's own train/val
    splits when it has them, otherwise a stratified seeded split. Neither may be empty."""
    path = Path(path)
    if _has_own_splits(path):
        train, val = load_dataset(path, "train", notify=notify), load_dataset(path, "val", notify=notify)
    else:
        data = load_dataset(path, notify=notify)
        train_index, val_index = stratified_split(data.labels, val_fraction, seed)
        train, val = data.subset(train_index), data.subset(val_index)
    _check_both_sides(str(path), len(train), len(val), val_fraction)
    return train, val


def check_train_val(path, val_fraction: float = 0.2, seed: int = 0) -> tuple[int, int] | None:
    """(training, validation) image counts `train_val` will give an npz, from its labels
    and the image arrays' headers only (no pixels read), so a broken file or an empty side
    is refused before a training run sets anything up. None for a folder (read in full
    by train_val)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; expected an .npz file or a folder of class folders")
    if path.is_dir():
        return None
    with _open_npz(path) as archive:
        own_splits = {"train_images", "val_images"} <= set(archive.files)
        counts = []
        for split in (("train", "val") if own_splits else (None,)):
            image_key, label_key, source = _npz_keys(archive, path, split, require_labels=True)
            shape, dtype = _array_header(archive, image_key, path)
            _check_image_dtype(dtype, source)
            _check_image_shape(shape, source, IMAGE_SIZE)
            labels = _validate_labels(_read_array(archive, label_key, path), shape[0], source, [])
            counts.append(len(labels) if own_splits else labels)
    if own_splits:
        n_train, n_val = counts
    else:
        train_index, val_index = stratified_split(counts[0], val_fraction, seed)
        n_train, n_val = len(train_index), len(val_index)
    _check_both_sides(str(path), n_train, n_val, val_fraction)
    return n_train, n_val


def _check_both_sides(source: str, n_train: int, n_val: int, val_fraction: float) -> None:
    if n_train == 0 or n_val == 0:
        raise DataError(f"{source}: images: {n_train + n_val} images split into {n_train} for training and "
                        f"{n_val} for validation (data.val_fraction {val_fraction:g}); expected at least one "
                        f"on each side (a class with 2 or more images)")


# -- command line: inspect a file, or hold out a local test set --------------------------

@run_cli
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bloodcells.data",
        description="Validate a data file and print its class counts; with --holdout, split off a "
                    "stratified local test set that training never sees; with --out-selection, write "
                    "the images a training run on this file chooses its epoch on.")
    parser.add_argument("path")
    parser.add_argument("--split", default=None, help="MedMNIST split: train, val or test")
    parser.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                        help="fraction of each class to hold out as a local test set (e.g. 0.15)")
    parser.add_argument("--out-train", type=Path, help="where the remaining images go (AN2DL layout)")
    parser.add_argument("--out-test", type=Path, help="where the held-out images go (AN2DL layout)")
    parser.add_argument("--out-selection", type=Path,
                        help="write the validation part training carves from this file (data.val_fraction "
                             "--val-fraction, seed --seed): the selection set for build_submission.py --select")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="the training config's data.val_fraction (with --out-selection)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out_selection is not None:
        return _write_selection(args)
    if args.holdout is not None:
        _check_holdout_args(args)
    elif args.out_train or args.out_test:
        raise UserError("--out-train/--out-test: given without --holdout; expected --holdout FRACTION "
                        "(e.g. 0.15) to write a split")
    data = load_dataset(args.path, args.split)
    print(f"{data.source}: {len(data)} images, {data.images.shape[1]}x{data.images.shape[2]} RGB uint8")
    for label, count in enumerate(data.class_counts()):
        print(f"  {label} {CLASS_NAMES[label]:<22} {count}")
    if args.holdout is None:
        return
    from .files import save_npz_atomic

    train_index, test_index = stratified_split(data.labels, args.holdout, args.seed)
    if len(train_index) == 0 or len(test_index) == 0:
        raise UserError(f"{data.source}: --holdout {args.holdout:g}: {len(data)} images split into "
                        f"{len(train_index)} to keep and {len(test_index)} to hold out; expected at least "
                        f"one on each side (a class with 2 or more images)")
    for out, index, role in ((args.out_train, train_index, None), (args.out_test, test_index, HELD_OUT_ROLE)):
        marker = {ROLE_KEY: np.asarray(role)} if role else {}
        save_npz_atomic(out, images=data.images[index], labels=data.labels[index].astype(np.uint8), **marker)
        print(f"wrote {out}: {len(index)} images")


def _write_selection(args) -> None:
    """The selection split: exactly the validation images `train_val` gives a training run
    with the same file, fraction and seed, so members trained with that seed never saw them."""
    if args.holdout is not None or args.out_train or args.out_test:
        raise UserError("--out-selection: given with --holdout/--out-train/--out-test; expected one of the two")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction: {args.val_fraction}; expected a fraction between 0 and 1")
    if Path(args.out_selection).resolve() == Path(args.path).resolve():
        raise UserError(f"{args.path}: --out-selection: would overwrite the input; expected a new path")
    check_output_file(args.out_selection, "--out-selection")
    if held_out_reason(args.path, args.split):
        raise UserError(f"{args.path}: {held_out_reason(args.path, args.split)}; expected the training file "
                        f"(a selection split of the held-out test would choose on it)")
    from .files import save_npz_atomic

    _, selection = train_val(args.path, args.val_fraction, args.seed)
    save_npz_atomic(args.out_selection, images=selection.images, labels=selection.labels.astype(np.uint8))
    print(f"wrote {args.out_selection}: {len(selection)} images ({selection.source}, the validation part of "
          f"data.val_fraction {args.val_fraction:g}, seed {args.seed})")


def _check_holdout_args(args) -> None:
    """Everything about --holdout's outputs that can be checked before the input is read."""
    if not 0 < args.holdout < 1:
        raise UserError(f"--holdout: {args.holdout}; expected a fraction between 0 and 1")
    if not args.out_train or not args.out_test:
        raise UserError("--holdout: needs --out-train and --out-test; expected two output .npz paths")
    check_distinct_outputs({"--out-train": args.out_train, "--out-test": args.out_test})
    inputs = {Path(args.path).resolve()}
    if {args.out_train.resolve(), args.out_test.resolve()} & inputs:
        raise UserError(f"{args.path}: --out-train/--out-test: would overwrite the input; expected new paths")
    check_output_file(args.out_train, "--out-train")
    check_output_file(args.out_test, "--out-test")

if __name__ == "__main__":
    main()
