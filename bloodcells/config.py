"""The training configuration: a TOML file read over the defaults, validated and typed
once, so training code reads `cfg.train.batch_size` as an int instead of casting where
it is used.

The defaults are the dataclasses' field defaults; the head and TTA defaults are
model.py's (the network the server rebuilds), the augmentation defaults
bloodcells.augment's. Unknown keys and bad choices are refused in one line naming the
file and the field. `Config.to_dict()` is the resolved record that config.json stores
and `--resume` reads back.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import NUM_CLASSES
from . import augment as augment_mod
from .cli import UserError

CHOICES = {
    ("data", "imbalance"): ("none", "class_weights", "downsample", "upsample"),
    ("train", "loss"): ("categorical_crossentropy", "focal"),
    ("train", "optimizer"): ("adam", "adamw", "rmsprop", "lion"),
    ("train", "schedule"): ("constant", "cosine"),
    ("train", "monitor"): ("val_acc", "val_shifted_acc"),
    ("train", "strategy"): ("default", "mirrored", "multiworker", "tpu"),
}
# tables whose keys are free (passed on to the network spec as given)
FREE_TABLES = {("model", "backbone_options"), ("model", "head"), ("model", "tta")}


def _shipped_default(name: str):
    from .models import shipped_model_module
    return lambda: dict(getattr(shipped_model_module(), name))


@dataclass
class DataConfig:
    val_fraction: float = 0.2
    imbalance: str = "none"
    max_train: int = 0          # 0 = every image
    max_val: int = 0


@dataclass
class ModelConfig:
    backbone: str = "efficientnetb7"
    weights: str = "imagenet"   # "imagenet", "none" or a backbone weights file
    cache_dir: str = ""
    resize_to: int = 0          # 0 = the input size
    init_from: str = ""         # an exported model folder whose weights start the whole network
                                # (fine-tuning a trained model; same architecture)
    backbone_options: dict = field(default_factory=dict)
    head: dict = field(default_factory=_shipped_default("DEFAULT_HEAD"))
    tta: dict = field(default_factory=_shipped_default("DEFAULT_TTA"))


@dataclass
class TrainConfig:
    batch_size: int = 32
    loss: str = "categorical_crossentropy"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float | list = 0.25     # a number, or one per class
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    monitor: str = "val_shifted_acc"
    early_stopping_patience: int = 0    # 0 = off
    plateau_patience: int = 0           # 0 = off
    plateau_factor: float = 0.5
    mixed_precision: bool = False
    xla: bool = False
    strategy: str = "default"
    tpu: str = ""
    eval_batch_size: int = 128
    eval_every: int = 1                 # validate every k epochs (and always the last)
    steps_per_epoch: int = 0            # 0 = the whole epoch
    consistency_weight: float = 0.0     # Jensen-Shannon weight between an image and its AugMix
                                        # views (needs augment.augmix_views; the paper used 12)


@dataclass
class PhaseConfig:
    """Phase 1: the head alone, the backbone frozen."""
    epochs: int = 0
    lr: float = 1e-3


@dataclass
class FineTuneConfig(PhaseConfig):
    """Phase 2: the top `unfreeze` backbone layers ("all" or a count) learn too."""
    epochs: int = 10
    lr: float = 1e-4
    unfreeze: str | int = "all"
    freeze_batchnorm: bool = True


@dataclass
class ShiftConfig:
    profile: str = "server"     # the shift the shifted validation set is made with
    seed: int = 0


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: dict = field(default_factory=lambda: augment_mod.resolve({}))
    train: TrainConfig = field(default_factory=TrainConfig)
    phase1: PhaseConfig = field(default_factory=PhaseConfig)
    phase2: FineTuneConfig = field(default_factory=FineTuneConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def phases(self) -> list:
        """[(name, phase config)] of the phases with at least one epoch."""
        return [(name, getattr(self, name)) for name in ("phase1", "phase2") if getattr(self, name).epochs > 0]


# -- reading -----------------------------------------------------------------------------

def load_config(path, overrides: dict | None = None) -> Config:
    """Read a TOML config over the defaults; unknown keys and bad choices raise a
    one-line UserError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config: file not found; expected a TOML file (see configs/)")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: config: not valid TOML ({' '.join(str(exc).split())}); expected TOML") from None
    return resolve_config(raw, str(path), overrides)


def resolve_config(raw: dict, source: str = "config", overrides: dict | None = None) -> Config:
    """`raw` (a TOML table, or a config.json record) over the defaults, with `overrides`
    ({"table.field": value}) applied, validated and typed."""
    cfg = Config().to_dict()
    _merge(cfg, raw, source, ())
    try:
        cfg["augment"] = augment_mod.resolve(cfg["augment"])
    except KeyError as exc:
        raise UserError(f"{source}: augment.{exc.args[0]}: unknown key; expected one of "
                        f"{', '.join(augment_mod.DEFAULTS)}") from None
    for key, value in (overrides or {}).items():
        table, _, name = key.rpartition(".")
        target = cfg
        for part in filter(None, table.split(".")):
            target = target[part]
        target[name] = value
    for (table, name), allowed in CHOICES.items():
        value = str(cfg[table][name]).lower()
        if value not in allowed:
            raise UserError(f"{source}: {table}.{name}: '{cfg[table][name]}'; expected one of {', '.join(allowed)}")
        cfg[table][name] = value
    typed = _typed(Config, cfg, source, ())
    for phase in ("phase1", "phase2"):
        if getattr(typed, phase).epochs < 0:
            raise UserError(f"{source}: {phase}.epochs: {cfg[phase]['epochs']}; expected an integer >= 0")
    if typed.train.batch_size < 1:
        raise UserError(f"{source}: train.batch_size: {cfg['train']['batch_size']}; expected an integer >= 1")
    from .shift import TRAINING_PROFILES

    profile = typed.shift.profile
    if profile not in TRAINING_PROFILES:
        why = ("is held out for evaluation (epochs chosen on it would fit it); "
               if profile == "second_opinion" else "")
        raise UserError(f"{source}: shift.profile: '{profile}' {why}expected one of {', '.join(TRAINING_PROFILES)}")
    _check_consistency(typed, source)
    kernel = typed.augment["blur_kernel"]
    if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 3 or kernel % 2 == 0:
        raise UserError(f"{source}: augment.blur_kernel: {kernel!r}; expected an odd integer >= 3")
    opacity = typed.augment["overlay_opacity"]
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
        raise UserError(f"{source}: augment.overlay_opacity: {opacity!r}; expected a number in [0, 1]")
    alpha = typed.train.focal_alpha
    if isinstance(alpha, list) and len(alpha) != NUM_CLASSES:
        raise UserError(f"{source}: train.focal_alpha: {len(alpha)} values; expected a number or "
                        f"{NUM_CLASSES} (one per class)")
    return typed


def _check_consistency(typed: Config, source: str) -> None:
    """augment.augmix_views and train.consistency_weight come together or not at all."""
    views, weight = typed.augment["augmix_views"], typed.train.consistency_weight
    if not isinstance(views, int) or isinstance(views, bool) or views < 0:
        raise UserError(f"{source}: augment.augmix_views: {views!r}; expected an integer >= 0")
    if weight < 0 or (weight > 0 and views == 0):
        raise UserError(f"{source}: train.consistency_weight: {weight}; expected 0, or > 0 with "
                        f"augment.augmix_views >= 1 (the views it compares)")
    if views and weight == 0:
        raise UserError(f"{source}: augment.augmix_views: {views}; expected 0 unless "
                        f"train.consistency_weight > 0 (views without the loss only multiply the batch)")
    if views and typed.train.strategy != "default":
        raise UserError(f"{source}: augment.augmix_views: {views} with train.strategy "
                        f"'{typed.train.strategy}'; expected strategy 'default' (splitting a batch "
                        f"across devices would part an image from its views)")


def _merge(base: dict, new: dict, source: str, where: tuple) -> None:
    for key, value in new.items():
        dotted = ".".join((*where, key))
        if where == ("augment",) or (*where,) in FREE_TABLES:
            base[key] = value
            continue
        if key not in base:
            raise UserError(f"{source}: {dotted}: unknown key; expected one of {', '.join(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {dotted}: a value; expected a table [{dotted}]")
            _merge(base[key], value, source, (*where, key))
        else:
            base[key] = value


_CASTS = {"int": (int, "an integer"), "float": (float, "a number"), "bool": (bool, "true or false"),
          "str": (str, "a string")}
_TABLES = {cls.__name__: cls for cls in (DataConfig, ModelConfig, TrainConfig, PhaseConfig, FineTuneConfig,
                                         ShiftConfig)}


def _number_or_list(value):
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def _typed(cls, values: dict, source: str, where: tuple):
    """The dataclass `cls` from a merged table, each scalar cast to its field's type."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = values[f.name]
        if f.type in _TABLES:
            value = _typed(_TABLES[f.type], value, source, (*where, f.name))
        elif f.type == "dict":
            value = copy.deepcopy(value)
        elif f.type in _CASTS or f.type == "float | list":
            cast, expected = _CASTS.get(f.type, (_number_or_list, "a number or a list of numbers"))
            try:
                value = cast(value)
            except (TypeError, ValueError):
                raise UserError(f"{source}: {'.'.join((*where, f.name))}: {value!r}; expected {expected}") from None
        kwargs[f.name] = value
    return cls(**kwargs)
