"""Test-time distribution shift: our model of the corruptions in the competition's hidden test
set (a guess from published team reports, not a copy of it: README, "What is known about the server").

The profiles are a registry (REGISTRY, in the order reports, comparisons and the leaderboard
show them); each Profile holds its label, whether training may choose epochs on it, the
corruption families its plans name, its plan (image i -> [(family, severity), ...]) and its
per-image step. Severities are corruptions.SEVERITIES (1-5).

  * `none`   - images unchanged;
  * `server` - every image gets 1-3 random operations (random families, random severity,
               random order), RandAugment/AugMix-like, our guess at the competition's test;
  * `second_opinion` - 1-3 corruptions per image from a third-party library
               (albumentations; bloodcells.second_opinion): an estimate written by
               nobody on the team. Evaluation only: training refuses it.
  * `sweep`  - one family at one severity per image, cycling through all of them, so a
               single set covers the robustness table evenly. `sweep(images, seed)`
               yields the full table instead: every family at every severity.

A plan is written as text `family:severity+family:severity` (encode_ops / decode_ops): in
the shifted-set cache, the `ops` of `python -m bloodcells.shift` and predictions.csv. One
draw of a profile is the image set `set_name(profile, seed)`.

Deterministic: image i's result depends only on (seed, i, profile) - never on the batch
it is in or on the other images - so a subset of a shifted set equals the shifted subset.
Pure numpy/PIL/scipy (no TensorFlow): training's shifted validation and local_eval use it
(`second_opinion` adds albumentations/OpenCV when it runs).

CLI: python -m bloodcells.shift --data D [--split val] --profile server --seed 0
         --out shifted.npz [--preview shifted.png]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from . import second_opinion
from .cli import Progress, UserError, run_cli
from .corruptions import FAMILIES, OPERATIONS, SEVERITIES, check_images, corrupt, image_rng, random_severity

Plan = list[tuple[str, int]]


@dataclass(frozen=True)
class Profile:
    """One shift profile: everything the rest of the code asks about it."""

    name: str
    label: str  # how reports, comparisons and the leaderboard name it
    for_training: bool  # may training and ensemble selection choose on it
    evaluated_by_default: bool  # local_eval runs it when --profile is not given
    families: tuple[str, ...]  # the families its plans name, for per-family tables
    plan: Callable[[int, int], Plan]  # (i, seed) -> image i's [(family, severity), ...] in order
    # (image, family, severity, i, seed, step index) -> image; None: images stay as they are
    step: Callable[..., np.ndarray] | None
    # (images, family, severity, seed) -> every image under one family at one severity (grids)
    corrupt: Callable[..., np.ndarray] | None

    def shift_image(self, img: np.ndarray, i: int, seed: int) -> np.ndarray:
        """Image i under this profile: its plan's steps in order."""
        for index, (family, severity) in enumerate(self.plan(i, seed)):
            img = self.step(img, family, severity, i, seed, index)
        return img


# How often each family is drawn by the `server` profile (relative weights). Flips are
# cheap to be robust to and common in any augmentation, so they are not weighted up.
_SERVER_WEIGHTS = {**{f: 1.0 for f in FAMILIES}, "solarize": 0.5}
_SERVER_OPS = (1, 2, 3)


def _no_plan(i: int, seed: int) -> Plan:
    return []


def _server_plan(i: int, seed: int) -> Plan:
    # The profile's name seeds the draw: renaming it would change every plan.
    rng = image_rng(seed, i, "plan", "server")
    count = int(rng.choice(_SERVER_OPS))
    weights = np.array([_SERVER_WEIGHTS[f] for f in FAMILIES])
    chosen = rng.choice(len(FAMILIES), size=count, replace=False, p=weights / weights.sum())
    return [(FAMILIES[k], random_severity(rng)) for k in chosen]


def _sweep_plan(i: int, seed: int) -> Plan:
    family = FAMILIES[i % len(FAMILIES)]
    severity = SEVERITIES[(i // len(FAMILIES)) % len(SEVERITIES)]
    return [(family, severity)]


def _our_step(profile: str, img, family: str, severity: int, i: int, seed: int, index: int) -> np.ndarray:
    # Each step has its own generator from (seed, i, profile, step): nothing else matters.
    return OPERATIONS[family](img, severity, image_rng(seed, i, "step", profile, index))


REGISTRY: dict[str, Profile] = {p.name: p for p in (
    Profile("none", "clean", for_training=True, evaluated_by_default=True, families=(),
            plan=_no_plan, step=None, corrupt=None),
    Profile("server", "server-like", for_training=True, evaluated_by_default=True, families=FAMILIES,
            plan=_server_plan, step=partial(_our_step, "server"), corrupt=corrupt),
    # Shift code nobody on the team wrote (albumentations): a check on `server`, never fitted.
    Profile("second_opinion", "second_opinion", for_training=False, evaluated_by_default=True,
            families=second_opinion.FAMILIES, plan=second_opinion.plan, step=second_opinion.step,
            corrupt=second_opinion.corrupt),
    Profile("sweep", "sweep", for_training=True, evaluated_by_default=False, families=FAMILIES,
            plan=_sweep_plan, step=partial(_our_step, "sweep"), corrupt=corrupt),
)}
PROFILES = tuple(REGISTRY)
TRAINING_PROFILES = tuple(name for name, p in REGISTRY.items() if p.for_training)


def get(profile: str) -> Profile:
    try:
        return REGISTRY[profile]
    except KeyError:
        raise ValueError(f"unknown shift profile '{profile}'; expected one of {PROFILES}") from None


def label(profile: str) -> str:
    """The profile's label; a name the registry does not know (an old leaderboard column) as it is."""
    return REGISTRY[profile].label if profile in REGISTRY else profile


def set_name(profile: str, seed: int | None) -> str:
    """The name of one draw of a profile (`server_seed2`; `none` has no seed): the key of
    an image set in ingestion, metrics.json's `sets` and comparisons."""
    return profile if seed is None else f"{profile}_seed{seed}"


def encode_ops(steps: Plan) -> str:
    """A plan as text, e.g. 'blur:3+jpeg:2' ('' for none)."""
    return "+".join(f"{family}:{severity}" for family, severity in steps)


def decode_ops(text) -> Plan:
    """encode_ops' text back to [(family, severity), ...]."""
    steps = []
    for op in str(text).split("+"):
        if not op:
            continue
        family, _, severity = op.partition(":")
        try:
            steps.append((family, int(severity)))
        except ValueError:
            raise ValueError(f"ops text '{text}': '{op}' is not family:severity") from None
    return steps


# -- public API ---------------------------------------------------------------------------

def apply_shift(images, profile: str = "server", seed: int = 0, progress: bool = False) -> np.ndarray:
    """Shift a batch of uint8 images (N, 96, 96, 3) under a profile; returns a new array."""
    images = check_images(images)
    chosen = get(profile)
    if chosen.step is None:
        return images.copy()
    out = np.empty_like(images)
    bar = Progress(len(images), f"shift {profile}") if progress else None
    for i, img in enumerate(images):
        out[i] = chosen.shift_image(img, i, seed)
        if bar and (i % 256 == 255 or i == len(images) - 1):
            bar.update(min(256, i + 1 - bar.done))
    return out


def sweep(images, seed: int = 0, families=None, severities=SEVERITIES):
    """Yield (family, severity, shifted images) for every family at every severity."""
    images = check_images(images)
    for family in families or FAMILIES:
        for severity in severities:
            yield family, severity, corrupt(images, family, severity, seed)


def plan(i: int, profile: str, seed: int = 0) -> Plan:
    """The operations image i gets under a profile: [(family, severity), ...] in order."""
    return get(profile).plan(i, seed)


def families(profile: str = "server") -> tuple[str, ...]:
    """The corruption families a profile's plans name (for per-family tables)."""
    return get(profile).families


def describe(n: int, profile: str, seed: int = 0) -> list[str]:
    """Per image, its operations as text (encode_ops)."""
    chosen = get(profile)
    return [encode_ops(chosen.plan(i, seed)) for i in range(n)]


# -- preview ------------------------------------------------------------------------------------

def save_preview(path, clean, shifted, labels=None, captions=None, pairs: int = 40, ncols: int = 10,
                 title: str | None = None) -> None:
    """Grid of (clean, shifted) pairs side by side; captions name the operations."""
    from .figures import class_caption, save_image_grid

    n = min(pairs, len(clean))
    images, titles = [], []
    for i in range(n):
        images += [clean[i], shifted[i]]
        head = class_caption(labels[i]) if labels is not None and labels[i] >= 0 else f"#{i}"
        titles += [f"{head} clean", (captions[i] if captions is not None else "shifted")[:28]]
    save_image_grid(path, np.stack(images), titles=titles, title=title, ncols=ncols,
                    max_images=2 * n, cell_inches=1.3)


def save_sweep_preview(path, image, seed: int = 0, title: str | None = None, profile: str = "server",
                       labels=None) -> None:
    """Every family of a profile (rows) at every severity (columns), clean first. `image`
    is one image, or several (N, H, W, 3): row r then shows image r mod N (so a grid
    shows every class), captioned with its class when labels are given."""
    from .figures import class_caption, save_image_grid

    chosen = get(profile)
    pool = image[None] if image.ndim == 3 else image
    images, titles = [], []
    for row, family in enumerate(chosen.families):
        picked = pool[row % len(pool)]
        images.append(picked)
        head = f"{class_caption(labels[row % len(pool)])} " if labels is not None else ""
        titles.append(f"{head}{family}"[:28])
        for severity in SEVERITIES:
            images.append(chosen.corrupt(picked[None], family, severity, seed)[0])
            titles.append(f"severity {severity}")
    save_image_grid(path, np.stack(images), titles=titles, title=title, ncols=1 + len(SEVERITIES),
                    max_images=len(images), cell_inches=1.2)


def preview_index(labels, count: int, seed: int = 0) -> np.ndarray:
    """A few images of every class, in class order, for preview grids."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = max(1, count // max(len(classes), 1))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picks))[:count] if picks else np.arange(0)


# -- command line ------------------------------------------------------------------------------

@run_cli
def main(argv=None):
    from .data import load_dataset
    from .files import save_npz_atomic

    parser = argparse.ArgumentParser(
        prog="python -m bloodcells.shift",
        description="Write a distribution-shifted copy of a labelled set (AN2DL npz layout).")
    parser.add_argument("--data", required=True, help="any labelled format bloodcells.data reads")
    parser.add_argument("--split", default=None, help="MedMNIST split (train, val, test)")
    parser.add_argument("--profile", default="server", choices=PROFILES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .npz (images, labels, ops)")
    parser.add_argument("--preview", default=None, help="PNG grid of clean/shifted pairs")
    parser.add_argument("--preview-pairs", type=int, default=40)
    parser.add_argument("--sweep-preview", default=None,
                        help="PNG: one image under every family at severities 1-5")
    args = parser.parse_args(argv)
    if not args.out.endswith(".npz"):
        raise UserError(f"{args.out}: --out: expected a path ending in .npz")
    for option, value in (("--preview", args.preview), ("--sweep-preview", args.sweep_preview)):
        if value and not value.lower().endswith(".png"):
            raise UserError(f"{value}: {option}: expected a path ending in .png")
    data = load_dataset(args.data, args.split)
    shifted = apply_shift(data.images, args.profile, args.seed, progress=True)
    ops = np.asarray(describe(len(data), args.profile, args.seed))
    save_npz_atomic(args.out, images=shifted, labels=data.labels, ops=ops)
    print(f"{args.out}: {len(data)} images from {data.source}, profile {args.profile}, seed {args.seed}")
    if args.preview:
        index = preview_index(data.labels, args.preview_pairs, args.seed)
        save_preview(args.preview, data.images[index], shifted[index], data.labels[index], ops[index],
                     pairs=args.preview_pairs,
                     title=f"{data.source}: clean | shifted ({args.profile}, seed {args.seed})")
        print(f"{args.preview}: preview of {len(index)} clean/shifted pairs")
    if args.sweep_preview and args.profile == "second_opinion":
        # One image per row, cycling through the classes: can a person still name each cell?
        rng = np.random.default_rng(args.seed)
        per_class = [rng.permutation(np.flatnonzero(data.labels == c)) for c in np.unique(data.labels)]
        picks = np.array([order[r // len(per_class) % len(order)]
                          for r, order in ((r, per_class[r % len(per_class)]) for r in range(64))])
        save_sweep_preview(args.sweep_preview, data.images[picks], args.seed, profile=args.profile,
                           labels=data.labels[picks],
                           title=f"{data.source}: second opinion (albumentations), every family at "
                                 f"severities 1-5, clean first")
        print(f"{args.sweep_preview}: every second-opinion family at every severity, one image per row")
    elif args.sweep_preview:
        pick = int(preview_index(data.labels, 1, args.seed)[0])
        save_sweep_preview(args.sweep_preview, data.images[pick], args.seed,
                           title=f"{data.source} image {pick}: every family at severities 1-5")
        print(f"{args.sweep_preview}: every family at every severity on image {pick}")


if __name__ == "__main__":
    main()
