"""The training configuration: a TOML file read over the defaults, validated and typed
once, so training code reads `cfg.train.batch_size` as an int instead of casting where
it is used.

The defaults are the dataclasses' field defaults; the head and TTA defaults are
model.py's (the network the server rebuilds), the augmentation defaults
bloodcells.augment's. Every key, inline tables' (`head = { ... }`) included, is checked
against its type and range before anything runs, and without importing TensorFlow:
unknown keys, wrong types (no string "false", no 16.7 for an integer) and values out of
range are refused in one line naming the file, the key, the value and what was expected.
`Config.to_dict()` is the resolved record that config.json stores and `--resume` reads
back.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import NUM_CLASSES
from . import augment as augment_mod
from .cli import UserError
from .shipped import MODEL_PY

CHOICES = {
    ("data", "imbalance"): ("none", "class_weights", "downsample", "upsample"),
    ("train", "loss"): ("categorical_crossentropy", "focal"),
    ("train", "optimizer"): ("adam", "adamw", "rmsprop", "lion"),
    ("train", "schedule"): ("constant", "cosine"),
    ("train", "monitor"): ("val_acc", "val_shifted_acc"),
    ("train", "strategy"): ("default", "mirrored", "multiworker", "tpu"),
}
# tables merged as given and then checked key by key (check_inline_tables), since their
# allowed keys depend on model.py or on the backbone
INLINE_TABLES = {("model", "backbone_options"), ("model", "head"), ("model", "tta")}
SEED_RANGE = "[0, 4294967295]"  # numpy's and Keras's seeds are 32-bit



@functools.cache
def shipped_constants() -> dict:
    """model.py's top-level constants that plain values define (DEFAULT_HEAD, DEFAULT_TTA,
    MERGES, MODES, INPUT_NORMS, BACKBONES, ...), read from its source: model.py stays their
    one definition, and importing it would import TensorFlow, which a config check must
    not wait for. Evaluated in order without builtins (but `range`), so a constant may use
    the ones before it; anything needing more (imports, functions) is left out."""
    values = {}
    for node in ast.parse(MODEL_PY.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                code = compile(ast.Expression(node.value), str(MODEL_PY), "eval")
                values[node.targets[0].id] = eval(code, {**values, "__builtins__": {"range": range}})
            except Exception:  # noqa: BLE001 - not a plain value (TensorFlow, os, a function)
                continue
    return values


def _shipped(name: str):
    value = shipped_constants().get(name)
    if value is None:
        raise RuntimeError(f"{MODEL_PY}: {name}: not readable as a plain value; config needs it")
    return value


def _shipped_default(name: str):
    return lambda: copy.deepcopy(_shipped(name))


# -- what each key accepts ---------------------------------------------------------------
# A rule is (kind, limit): kind "integer", "number", "boolean", "string", "integers" (a
# non-empty list), "integer pair" / "number pair" ([low, high], low <= high); limit an
# interval written as in mathematics ("[0, 1)", "(0, inf)"; "odd [3, inf)" for odd
# integers) or, for strings, the tuple of allowed values.

def ranged(default, limit: str):
    """A dataclass field whose values must lie in `limit`."""
    return field(default=default, metadata={"limit": limit})


HEAD_LIMITS = {"dense_units": "[1, inf)", "dropout": "[0, 1)", "bn_momentum": "[0, 1]"}
TTA_LIMITS = {"views": "[1, inf)"}
# Per backbone, the keys of model.backbone_options model.py reads (build_network,
# _small_cnn), with their rules; a backbone not listed takes none (an empty table).
SMALL_CNN_OPTIONS = {
    "widths": ("integers", "[1, inf)"),
    "convs_per_block": ("integer", "[1, inf)"),
    "bn_momentum": ("number", "[0, 1]"),
    "residual": ("boolean", None),
    "stem_width": ("integer", "[1, inf)"),
    "stem_stride": ("integer", "[1, inf)"),
    "blocks_per_stage": ("integer", "[1, inf)"),
    "input_norm": ("string", "INPUT_NORMS"),  # model.py's tuple, looked up when checked
}
BACKBONE_OPTIONS = {"small_cnn": SMALL_CNN_OPTIONS}


@dataclass
class DataConfig:
    val_fraction: float = ranged(0.2, "(0, 1)")
    imbalance: str = "none"
    max_train: int = ranged(0, "[0, inf)")  # 0 = every image
    max_val: int = ranged(0, "[0, inf)")


@dataclass
class ModelConfig:
    backbone: str = "efficientnetb7"
    weights: str = "imagenet"   # "imagenet", "none" or a backbone weights file
    cache_dir: str = ""
    resize_to: int = ranged(0, "[0, inf)")  # 0 = the input size
    init_from: str = ""         # an exported model folder whose weights start the whole network
                                # (fine-tuning a trained model; same architecture)
    backbone_options: dict = field(default_factory=dict)
    head: dict = field(default_factory=_shipped_default("DEFAULT_HEAD"))
    tta: dict = field(default_factory=_shipped_default("DEFAULT_TTA"))


@dataclass
class TrainConfig:
    batch_size: int = ranged(32, "[1, inf)")
    loss: str = "categorical_crossentropy"
    label_smoothing: float = ranged(0.0, "[0, 1)")
    focal_gamma: float = ranged(2.0, "[0, inf)")
    focal_alpha: float | list = ranged(0.25, "[0, 1]")  # a number, or one per class
    optimizer: str = "adam"
    weight_decay: float = ranged(0.0, "[0, inf)")
    schedule: str = "constant"
    warmup_epochs: float = ranged(0.0, "[0, inf)")
    min_lr: float = ranged(1e-6, "[0, inf)")
    monitor: str = "val_shifted_acc"
    early_stopping_patience: int = ranged(0, "[0, inf)")  # 0 = off
    plateau_patience: int = ranged(0, "[0, inf)")         # 0 = off
    plateau_factor: float = ranged(0.5, "(0, 1]")
    mixed_precision: bool = False
    xla: bool = False
    strategy: str = "default"
    tpu: str = ""
    eval_batch_size: int = ranged(128, "[1, inf)")
    eval_every: int = ranged(1, "[1, inf)")              # validate every k epochs (and always the last)
    steps_per_epoch: int = ranged(0, "[0, inf)")         # 0 = the whole epoch
    consistency_weight: float = ranged(0.0, "[0, inf)")  # Jensen-Shannon weight between an image and its
                                                         # AugMix views (needs augment.augmix_views; the
                                                         # paper used 12)


@dataclass
class PhaseConfig:
    """Phase 1: the head alone, the backbone frozen."""
    epochs: int = ranged(0, "[0, inf)")
    lr: float = ranged(1e-3, "(0, inf)")


@dataclass
class FineTuneConfig(PhaseConfig):
    """Phase 2: the top `unfreeze` backbone layers ("all", a count, or "blocks:K" whole
    blocks and what follows them) learn too."""
    epochs: int = ranged(10, "[0, inf)")
    lr: float = ranged(1e-4, "(0, inf)")
    unfreeze: str | int = ranged("all", "[0, inf)")
    freeze_batchnorm: bool = True


@dataclass
class ShiftConfig:
    profile: str = "server"     # the shift the shifted validation set is made with
    seed: int = ranged(0, SEED_RANGE)


@dataclass
class Config:
    name: str = "run"
    seed: int = ranged(0, SEED_RANGE)
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
    """Read a TOML config over the defaults; unknown keys, wrong types and values out of
    range raise a one-line UserError naming the file and key. A config may start from
    another (`base = "b7_reference.toml"`, relative to its own folder) and state only what
    differs: its tables are merged key by key over the base's."""
    path = Path(path)
    return resolve_config(read_toml_with_base(path), str(path), overrides)


def read_toml_with_base(path: Path, _seen: tuple = ()) -> dict:
    """The TOML table of `path`, merged over its `base` chain (without the `base` key)."""
    if not path.is_file():
        raise UserError(f"{path}: config: file not found; expected a TOML file (see configs/)")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: config: not valid TOML ({' '.join(str(exc).split())}); expected TOML") from None
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base:
        raise UserError(f"{path}: base: {base!r}; expected the file name of another config, e.g. "
                        f"\"b7_reference.toml\"")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        chain = " -> ".join(p.name for p in (*_seen, path.resolve(), base_path))
        raise UserError(f"{path}: base: {base!r} comes back to itself ({chain}); expected a chain that ends")
    merged = read_toml_with_base(base_path, (*_seen, path.resolve()))
    _deep_update(merged, raw)
    return merged


def _deep_update(base: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


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
        value = cfg[table][name]
        if not isinstance(value, str) or value.lower() not in allowed:
            raise UserError(f"{source}: {table}.{name}: {value!r}; expected one of {', '.join(allowed)}")
        cfg[table][name] = value.lower()
    typed = _typed(Config, cfg, source, ())
    typed.augment = _checked_augment(typed.augment, source)
    _check_inline_tables(typed.model, source)
    from .shift import TRAINING_PROFILES

    profile = typed.shift.profile
    if profile not in TRAINING_PROFILES:
        why = ("is held out for evaluation (epochs chosen on it would fit it); "
               if profile == "second_opinion" else "")
        raise UserError(f"{source}: shift.profile: '{profile}' {why}expected one of {', '.join(TRAINING_PROFILES)}")
    _check_consistency(typed, source)
    return typed


def _check_consistency(typed: Config, source: str) -> None:
    """augment.augmix_views and train.consistency_weight come together or not at all."""
    views, weight = typed.augment["augmix_views"], typed.train.consistency_weight
    if weight > 0 and views == 0:
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
        if where == ("augment",) or (*where,) in INLINE_TABLES:
            base[key] = value  # checked key by key once merged
            continue
        if key not in base:
            raise UserError(f"{source}: {dotted}: unknown key; expected one of {', '.join(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {dotted}: {value!r}; expected a table [{dotted}] "
                                f"or {{ key = value, ... }}")
            _merge(base[key], value, source, (*where, key))
        else:
            base[key] = value


# -- checking ------------------------------------------------------------------------------

_TABLES = {cls.__name__: cls for cls in (DataConfig, ModelConfig, TrainConfig, PhaseConfig, FineTuneConfig,
                                         ShiftConfig)}
_KINDS = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def _typed(cls, values: dict, source: str, where: tuple):
    """The dataclass `cls` from a merged table, each scalar checked against its field's
    type and range."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        value, dotted = values[f.name], ".".join((*where, f.name))
        limit = f.metadata.get("limit")
        if f.type in _TABLES:
            value = _typed(_TABLES[f.type], value, source, (*where, f.name))
        elif f.type == "dict":
            value = copy.deepcopy(value)
        elif f.type == "float | list":  # focal_alpha: one number, or one per class
            if isinstance(value, list) and len(value) == NUM_CLASSES:
                value = [check_value(v, "number", limit, source, dotted, whole=value,
                                     expected=f"{NUM_CLASSES} numbers in {limit} (one per class)")
                         for v in value]
            elif isinstance(value, list):
                raise UserError(f"{source}: {dotted}: {len(value)} values; expected a number or "
                                f"{NUM_CLASSES} (one per class) in {limit}")
            else:
                value = check_value(value, "number", limit, source, dotted)
        elif f.type == "str | int":  # unfreeze: "all", a layer count, or "blocks:K" whole blocks
            blocks = isinstance(value, str) and re.fullmatch(r"blocks:(\d+)", value.strip().lower())
            if blocks:
                value = f"blocks:{int(blocks.group(1))}"
            elif not (isinstance(value, str) and value.lower() == "all"):
                value = check_value(value, "integer", limit, source, dotted,
                                    expected="'all', an integer >= 0 or 'blocks:K' (the top K blocks)")
            else:
                value = "all"
        else:
            value = check_value(value, _KINDS[f.type], limit, source, dotted)
        kwargs[f.name] = value
    return cls(**kwargs)


def _checked_augment(options: dict, source: str) -> dict:
    """Every [augment] option typed like its default and within augment.LIMITS."""
    checked = {}
    for key, value in options.items():
        default = augment_mod.DEFAULTS[key]
        kind = ("boolean" if isinstance(default, bool) else "integer" if isinstance(default, int)
                else "number" if isinstance(default, float) else "string" if isinstance(default, str)
                else "integer pair" if all(isinstance(v, int) for v in default) else "number pair")
        checked[key] = check_value(value, kind, augment_mod.LIMITS.get(key), source, f"augment.{key}")
    return checked


def _check_inline_tables(model: ModelConfig, source: str) -> None:
    """model.head, model.tta and model.backbone_options key by key: known keys only (the
    head's and TTA's are model.py's defaults', backbone_options' those of BACKBONE_OPTIONS
    for the backbone), each value typed and in range. Values are replaced by their
    checked (typed) form."""
    backbones = shipped_constants().get("BACKBONES")
    backbone = model.backbone.lower()
    if backbones is not None and backbone not in backbones:
        raise UserError(f"{source}: model.backbone: {model.backbone!r}; expected one of {', '.join(sorted(backbones))}")
    head_defaults, tta_defaults = _shipped("DEFAULT_HEAD"), _shipped("DEFAULT_TTA")
    head_rules = {key: (_kind_of(default), HEAD_LIMITS.get(key)) for key, default in head_defaults.items()}
    tta_rules = {key: (_kind_of(default), TTA_LIMITS.get(key)) for key, default in tta_defaults.items()}
    tta_rules["merge"] = ("string", _shipped("MERGES"))
    tta_rules["mode"] = ("string", _shipped("MODES"))
    option_rules = BACKBONE_OPTIONS.get(backbone, {})
    for name, rules in (("head", head_rules), ("tta", tta_rules), ("backbone_options", option_rules)):
        table = getattr(model, name)
        for key, value in table.items():
            dotted = f"model.{name}.{key}"
            if key not in rules:
                expected = (f"one of {', '.join(rules)}" if rules else
                            f"an empty table (backbone '{backbone}' takes no options)")
                raise UserError(f"{source}: {dotted}: unknown key; expected {expected}")
            kind, limit = rules[key]
            if isinstance(limit, str) and limit.isupper():  # a tuple model.py defines
                limit = tuple(_shipped(limit))
            table[key] = check_value(value, kind, limit, source, dotted)
    if model.tta["mode"] == "dihedral" and model.tta["views"] > 8:
        raise UserError(f"{source}: model.tta.views: {model.tta['views']} with mode 'dihedral'; expected at "
                        f"most 8 (the flips and quarter turns), or mode 'random'")


def _kind_of(default) -> str:
    return ("boolean" if isinstance(default, bool) else "integer" if isinstance(default, int)
            else "number" if isinstance(default, float) else "string")


_INTERVAL = re.compile(r"^(odd )?([\[(])\s*(-?[\d.e+-]+|-inf)\s*,\s*(inf|-?[\d.e+-]+)\s*([\])])$")


def _interval(limit: str):
    """(odd, low, high, low included, high included) of an interval like "[0, 1)"."""
    match = _INTERVAL.match(limit)
    if not match:
        raise ValueError(f"not an interval: {limit!r}")
    odd, opening, low, high, closing = match.groups()
    return bool(odd), float(low), float(high), opening == "[", closing == "]"


def _within(value, limit) -> bool:
    if limit is None:
        return True
    odd, low, high, low_in, high_in = _interval(limit)
    return ((value > low or (low_in and value == low)) and (value < high or (high_in and value == high))
            and (not odd or value % 2 == 1))


def describe(kind: str, limit) -> str:
    """What a rule accepts, in words: "an integer >= 1", "a number in [0, 1)"."""
    if kind == "boolean":
        return "true or false"
    if kind == "string":
        return f"one of {', '.join(limit)}" if limit else "a string"
    noun = {"integer": "an integer", "number": "a number", "integers": "a non-empty list of integers",
            "integer pair": "[low, high] integers", "number pair": "[low, high] numbers"}[kind]
    if limit is None:
        return noun
    odd, low, high, low_in, high_in = _interval(limit)
    if odd:
        noun = noun.replace("an integer", "an odd integer")
    show = lambda v: f"{v:g}"  # noqa: E731
    if math.isinf(high):
        where = f"{'>=' if low_in else '>'} {show(low)}"
    else:
        where = f"in {limit[limit.index('[' if low_in else '('):]}"
    pair = ", low <= high" if kind.endswith("pair") else ""
    return f"{noun} {where}{pair}"


def check_value(value, kind: str, limit, source: str, dotted: str, *, whole=None, expected: str | None = None):
    """`value` if it is of `kind` within `limit` (numbers as float, integers as int),
    else a UserError naming source, key, the value (`whole`, when it is part of a list)
    and what is expected."""
    def refuse():
        shown = value if whole is None else whole
        raise UserError(f"{source}: {dotted}: {shown!r}; expected {expected or describe(kind, limit)}")

    def number(v, integer: bool) -> bool:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return False
        return math.isfinite(v) and _within(v, limit)

    if kind == "boolean":
        if not isinstance(value, bool):
            refuse()
        return value
    if kind == "string":
        if not isinstance(value, str) or (limit and value not in limit):
            refuse()
        return value
    if kind in ("integer", "number"):
        if not number(value, kind == "integer"):
            refuse()
        return value if kind == "integer" else float(value)
    if kind == "integers":
        if not isinstance(value, list) or not value or not all(number(v, True) for v in value):
            refuse()
        return list(value)
    # a [low, high] pair
    integer = kind == "integer pair"
    if (not isinstance(value, list) or len(value) != 2 or not all(number(v, integer) for v in value)
            or value[0] > value[1]):
        refuse()
    return [v if integer else float(v) for v in value]
