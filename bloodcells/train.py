"""Train a classifier from a TOML configuration; resumable and reproducible.

    python -m bloodcells.train --config configs/cpu.toml --data D --out runs/NAME
        [--export weights/NAME] [--resume] [--epochs N] [--seed S]

Two phases: the head alone with the backbone frozen (`[phase1]`), then fine-tuning of
the top N backbone layers with BatchNorm kept frozen (`[phase2]`); a from-scratch
network skips phase 1 and trains everything. Each epoch is measured on the clean
validation set and on the same set under a fixed seeded shift (bloodcells.shift,
profile "server" by default); best-model selection, early stopping and
ReduceLROnPlateau watch either (default: shifted).

The run folder holds: config.json (resolved config, seed, package versions, data
sha256), augmentation.png, history.csv, curves.png, metrics.json, confusion.png,
checkpoint.npz (last epoch: weights, optimiser and loop state; written atomically)
and best.npz. `--resume` continues from checkpoint.npz and ends exactly where an
uninterrupted run with the same seed would: every epoch's data order and
augmentation are seeded by (seed, epoch), and the checkpoint holds every variable,
random-generator states included.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, NUM_CLASSES
from . import augment as augment_mod
from .cli import Progress, UserError, run_cli
from .files import save_npz_atomic, sha256_file, write_json_atomic, write_text_atomic

DEFAULTS = {
    "name": "run",
    "seed": 0,
    "data": {"val_fraction": 0.2, "imbalance": "none", "max_train": 0, "max_val": 0},
    "model": {
        "backbone": "efficientnetb7",
        "weights": "imagenet",
        "cache_dir": "",
        "resize_to": 0,
        "backbone_options": {},
        "head": {"dense_units": 128, "dropout": 0.2, "bn_momentum": 0.9, "activation": "relu"},
        "tta": {"views": 10, "merge": "softmax_mean_logits", "mode": "random"},
    },
    "augment": {},
    "train": {
        "batch_size": 32,
        "loss": "categorical_crossentropy",
        "label_smoothing": 0.0,
        "focal_gamma": 2.0,
        "focal_alpha": 0.25,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "min_lr": 1e-6,
        "monitor": "val_shifted_acc",
        "early_stopping_patience": 0,
        "plateau_patience": 0,
        "plateau_factor": 0.5,
        "mixed_precision": False,
        "xla": False,
        "strategy": "default",
        "tpu": "",
        "eval_batch_size": 128,
        "eval_every": 1,            # validate every k epochs (and always the last); 1 = every epoch
        "steps_per_epoch": 0,
    },
    "phase1": {"epochs": 0, "lr": 1e-3},
    "phase2": {"epochs": 10, "lr": 1e-4, "unfreeze": "all", "freeze_batchnorm": True},
    "shift": {"profile": "server", "seed": 0},
}

CHOICES = {
    ("data", "imbalance"): ("none", "class_weights", "downsample", "upsample"),
    ("train", "loss"): ("categorical_crossentropy", "focal"),
    ("train", "optimizer"): ("adam", "adamw", "rmsprop", "lion"),
    ("train", "schedule"): ("constant", "cosine"),
    ("train", "monitor"): ("val_acc", "val_shifted_acc"),
    ("train", "strategy"): ("default", "mirrored", "multiworker", "tpu"),
}
FREE_TABLES = {("model", "backbone_options"), ("model", "head"), ("model", "tta")}
HISTORY_FIELDS = ("epoch", "phase", "lr", "loss", "accuracy", "val_loss", "val_acc", "val_shifted_acc",
                  "seconds")


# -- configuration -----------------------------------------------------------------------

def load_config(path, overrides: dict | None = None) -> dict:
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


def resolve_config(raw: dict, source: str = "config", overrides: dict | None = None) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    _merge(cfg, raw, source, ())
    try:
        cfg["augment"] = augment_mod.resolve(cfg["augment"])
    except KeyError as exc:
        raise UserError(f"{source}: augment.{exc.args[0]}: unknown key; expected one of "
                        f"{', '.join(augment_mod.DEFAULTS)}") from None
    for key, value in (overrides or {}).items():
        table, _, field = key.rpartition(".")
        target = cfg
        for part in filter(None, table.split(".")):
            target = target[part]
        target[field] = value
    for (table, field), allowed in CHOICES.items():
        value = str(cfg[table][field]).lower()
        if value not in allowed:
            raise UserError(f"{source}: {table}.{field}: '{cfg[table][field]}'; expected one of {', '.join(allowed)}")
        cfg[table][field] = value
    for phase in ("phase1", "phase2"):
        if int(cfg[phase]["epochs"]) < 0:
            raise UserError(f"{source}: {phase}.epochs: {cfg[phase]['epochs']}; expected an integer >= 0")
    if int(cfg["train"]["batch_size"]) < 1:
        raise UserError(f"{source}: train.batch_size: {cfg['train']['batch_size']}; expected an integer >= 1")
    from .shift import TRAINING_PROFILES

    profile = cfg["shift"]["profile"]
    if profile not in TRAINING_PROFILES:
        why = ("is held out for evaluation (epochs chosen on it would fit it); "
               if profile == "second_opinion" else "")
        raise UserError(f"{source}: shift.profile: '{profile}' {why}expected one of {', '.join(TRAINING_PROFILES)}")
    alpha = cfg["train"]["focal_alpha"]
    if isinstance(alpha, list) and len(alpha) != NUM_CLASSES:
        raise UserError(f"{source}: train.focal_alpha: {len(alpha)} values; expected a number or "
                        f"{NUM_CLASSES} (one per class)")
    return cfg


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


# -- pieces ------------------------------------------------------------------------------

def make_loss(train_cfg: dict):
    import keras

    smoothing = float(train_cfg["label_smoothing"])
    if train_cfg["loss"] == "focal":
        alpha = train_cfg["focal_alpha"]
        alpha = [float(a) for a in alpha] if isinstance(alpha, list) else float(alpha)
        return keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=float(train_cfg["focal_gamma"]),
                                                         label_smoothing=smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)


def make_optimizer(train_cfg: dict, lr: float):
    import keras

    name, wd = train_cfg["optimizer"], float(train_cfg["weight_decay"])
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd or 1e-4)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.Lion(lr, weight_decay=wd or None)


def make_strategy(train_cfg: dict):
    """The tf.distribute strategy named by train.strategy. "multiworker" reads the
    cluster from the standard TF_CONFIG variable (no TF_CONFIG: one worker) and must be
    created before TensorFlow does anything else in the process."""
    import tensorflow as tf

    kind = train_cfg["strategy"]
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multiworker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"config: train.strategy: 'multiworker' ({' '.join(str(exc).split())[:160]}); expected "
                            f"a valid TF_CONFIG and a strategy created before any other TensorFlow work") from None
    if kind == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=train_cfg["tpu"] or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            raise UserError(f"config: train.strategy: 'tpu' but no TPU found ({' '.join(str(exc).split())[:120]}); "
                            f"expected a TPU runtime, or strategy 'default'") from None
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster (the
    chief is task "chief", or worker 0 when the cluster has no "chief")."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster or resolver.task_type in (None, "chief"):
        return True
    return resolver.task_type == "worker" and int(resolver.task_id or 0) == 0 and "chief" not in cluster


def worker_scratch(out: Path, resume: bool):
    """A temporary run folder for a non-chief worker: it computes everything the chief
    does (the collectives need it) but writes only here; resuming copies the chief's
    checkpoint and best weights in (the run folder must be readable by every worker).
    Deleted when the returned TemporaryDirectory is cleaned up or collected."""
    scratch = tempfile.TemporaryDirectory(prefix="bloodcells-worker-")
    if resume:
        for name in ("checkpoint.npz", "best.npz"):
            if (out / name).is_file():
                shutil.copy2(out / name, Path(scratch.name) / name)
    return scratch


def precision_policy(train_cfg: dict, strategy) -> str:
    """Keras's dtype policy: float32, or mixed float16 (GPU, CPU), or mixed bfloat16 on
    a TPU (TPUs compute in bfloat16; float16 there is unsupported or emulated)."""
    import tensorflow as tf

    if not train_cfg["mixed_precision"]:
        return "float32"
    return "mixed_bfloat16" if isinstance(strategy, tf.distribute.TPUStrategy) else "mixed_float16"


def strategy_summary(strategy) -> dict:
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return {"kind": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync),
            "workers": sum(len(v) for v in cluster.values()) if cluster else 1, "chief": is_chief(strategy)}


def synchronize_batchnorm(model, strategy) -> int:
    """With several replicas, BatchNormalization uses the global batch's statistics
    (all-reduced) instead of each replica's share: the network then trains as on one
    device with the same global batch. Only how training computes the statistics
    changes; the exported weights and the shipped network are the same. Returns the
    number of layers switched."""
    import keras

    if strategy.num_replicas_in_sync <= 1:
        return 0
    switched = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            switched += 1
        stack.extend(getattr(layer, "layers", []))
    return switched


def uncapture_multiworker_strategy(model, strategy) -> None:
    """Keras 3's `fit` under MultiWorkerMirroredStrategy fails in its symbolic build
    (it reduces a data batch over the workers: keras-team/keras#20585). A model that has
    not captured the strategy skips that build and takes the strategy from the enclosing
    scope, which is why the run calls `fit` inside `strategy.scope()`. Keras then
    averages each step's logs over the replicas along axis 0, which fails on scalars:
    the step returns them with shape (1,), and the mean over the workers is a scalar
    again. Evaluation runs each worker on the whole set (`predict`)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    model._distribute_strategy = None
    model._bloodcells_predict_per_worker = True
    step = model.train_step

    def train_step(data):
        return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    model.train_step = train_step


def learning_rate(phase_cfg: dict, train_cfg: dict, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Per-step learning rate: linear warm-up then constant or cosine to min_lr."""
    base = float(phase_cfg["lr"])
    warm = int(round(float(train_cfg["warmup_epochs"]) * steps_per_epoch))
    if warm and step < warm:
        return base * (step + 1) / warm
    if train_cfg["schedule"] == "cosine":
        span = max(total_steps - warm, 1)
        t = min(max(step - warm, 0) / span, 1.0)
        low = float(train_cfg["min_lr"])
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))
    return base


def epoch_order(labels: np.ndarray, imbalance: str, seed: int, epoch: int) -> np.ndarray:
    """The epoch's training indices in order: a seeded permutation, after downsampling
    every class to the rarest's count or upsampling to the commonest's (the repeats
    differ through augmentation)."""
    rng = np.random.default_rng(augment_mod._seed(seed, epoch, 7))
    if imbalance in ("downsample", "upsample"):
        counts = np.bincount(labels, minlength=NUM_CLASSES)
        present = counts[counts > 0]
        target = present.min() if imbalance == "downsample" else present.max()
        index = []
        for label in np.flatnonzero(counts):
            members = np.flatnonzero(labels == label)
            if len(members) >= target:
                index.append(rng.choice(members, target, replace=False))
            else:
                index.append(np.concatenate([members, rng.choice(members, target - len(members), replace=True)]))
        index = np.concatenate(index)
        return index[rng.permutation(len(index))]
    return rng.permutation(len(labels))


def class_weights(labels: np.ndarray) -> np.ndarray:
    """n / (k * count_c): the balanced weights, mean 1 over the training set."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    present = counts > 0
    weights = np.zeros(NUM_CLASSES)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def package_versions() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> dict:
    probs = predict(model, images.astype(np.float32), batch_size)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    counts = confusion.sum(axis=1)
    recall = {CLASS_NAMES[c]: (float(confusion[c, c] / counts[c]) if counts[c] else None) for c in range(NUM_CLASSES)}
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    return {"accuracy": float((pred == labels).mean()), "loss": loss, "recall": recall, "confusion": confusion}


def predict(model, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Probabilities for every image. Under MultiWorkerMirroredStrategy Keras's predict
    would shard the images over the workers and return each only its share, so there
    each worker runs the whole set itself (all workers then decide alike)."""
    import tensorflow as tf

    if not getattr(model, "_bloodcells_predict_per_worker", False):
        return model.predict(images, batch_size=batch_size, verbose=0)
    if not hasattr(model, "_bloodcells_local_predict"):
        model._bloodcells_local_predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    parts = [model._bloodcells_local_predict(tf.constant(images[i:i + batch_size]))
             for i in range(0, len(images), batch_size)]
    return np.concatenate([np.asarray(p) for p in parts]) if parts else np.zeros((0, NUM_CLASSES), np.float32)


# -- checkpoints -------------------------------------------------------------------------

def _variables_to_arrays(prefix: str, variables) -> dict:
    return {f"{prefix}{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}


def save_checkpoint(path, model, optimizer, state: dict) -> None:
    """Every model variable (random-generator states included), the optimiser's
    variables and the loop state in one npz, written atomically."""
    arrays = _variables_to_arrays("model_", model.variables)
    if optimizer is not None and optimizer.built:
        arrays.update(_variables_to_arrays("opt_", optimizer.variables))
    arrays["state_json"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    save_npz_atomic(path, compress=False, **arrays)


def read_checkpoint(path):
    with np.load(path, allow_pickle=False) as archive:
        state = json.loads(archive["state_json"].tobytes().decode())
        model_vars = [archive[k] for k in sorted(k for k in archive.files if k.startswith("model_"))]
        opt_vars = [archive[k] for k in sorted(k for k in archive.files if k.startswith("opt_"))]
    return state, model_vars, opt_vars


def check_resume(run_info: dict, data_sha256: str, data_path, state: dict, cfg: dict) -> None:
    """--resume continues the run it was started as: same data (sha256), and a run whose
    checkpoint predates the shipped-network fix must not continue on a different graph."""
    from .models import SPEC_FORMAT, shipped_model_module

    saved = run_info.get("data_sha256")
    if saved and saved != data_sha256:
        raise UserError(f"{data_path}: --data: sha256 {data_sha256[:12]}... differs from the run's "
                        f"{saved[:12]}...; expected the data the run was started with")
    model = cfg["model"]
    if state.get("spec_format") is None and shipped_model_module().build_dependent(model["backbone"]) \
            and str(model["weights"]).lower() not in ("none", ""):
        raise UserError(f"--resume: this {model['backbone']} run predates {SPEC_FORMAT} (its stem was built "
                        f"differently from the shipped network); start a new run")


def assign_variables(variables, values, what: str) -> None:
    if len(variables) != len(values):
        raise UserError(f"{what}: {len(values)} saved variables for {len(variables)} in the network; "
                        f"expected a checkpoint from the same config")
    for var, value in zip(variables, values):
        if tuple(var.shape) != tuple(value.shape):
            raise UserError(f"{what}: variable {var.path} has shape {tuple(var.shape)}, saved {value.shape}; "
                            f"expected a checkpoint from the same config")
        var.assign(value)


# -- the run -----------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: dict, data_path, out_dir, export_dir=None, resume: bool = False, log=None):
        self.cfg = cfg
        self.data_path = Path(data_path)
        self.out = Path(out_dir)
        self.export_dir = Path(export_dir) if export_dir else None
        self.resume = resume
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.seed = int(cfg["seed"])

    # data -----------------------------------------------------------------------------
    def load_data(self):
        from .data import train_val

        d = self.cfg["data"]
        train, val = train_val(self.data_path, float(d["val_fraction"]), self.seed, notify=self.log)
        if int(d["max_train"]):
            train = train.subset(np.sort(np.random.default_rng(self.seed).permutation(len(train))[: int(d["max_train"])]))
        if int(d["max_val"]):
            val = val.subset(np.sort(np.random.default_rng(self.seed + 1).permutation(len(val))[: int(d["max_val"])]))
        self.train, self.val = train, val
        profile = self.cfg["shift"]["profile"]
        from .shift import apply_shift  # contract 2

        self.val_shifted = apply_shift(val.images, profile=profile, seed=int(self.cfg["shift"]["seed"]))
        self.log(f"data: {len(train)} training, {len(val)} validation images; shifted validation "
                 f"profile '{profile}' seed {self.cfg['shift']['seed']}")

    def data_checksum(self) -> str:
        if self.data_path.is_file():
            return sha256_file(self.data_path)
        from .data import fingerprint
        return fingerprint(self.train.images, self.train.labels, self.val.images, self.val.labels)

    # phases -----------------------------------------------------------------------------
    def phases(self):
        """[(name, phase config)] with at least one epoch."""
        return [(name, self.cfg[name]) for name in ("phase1", "phase2") if int(self.cfg[name]["epochs"]) > 0]

    def epoch_plan(self, epoch: int):
        """(epoch, training indices in order, cut to train.steps_per_epoch batches if set)
        for the augmentation stream."""
        order = epoch_order(self.train.labels, self.cfg["data"]["imbalance"], self.seed, epoch)
        cap = int(self.cfg["train"]["steps_per_epoch"])
        return epoch, (order[: cap * int(self.cfg["train"]["batch_size"])] if cap else order)

    def steps_per_epoch(self, epoch: int) -> int:
        return math.ceil(len(self.epoch_plan(epoch)[1]) / int(self.cfg["train"]["batch_size"]))

    @staticmethod
    def epoch_batches(batches, steps: int):
        """The next `steps` batches of a run-long pipeline iterator, as a dataset for one
        `fit` call (a new pipeline per epoch would re-instantiate the augmentation graph).
        Iterating it again replays the batches already read (see _EpochSlice)."""
        import tensorflow as tf
        ds = tf.data.Dataset.from_generator(_EpochSlice(batches, steps), output_signature=batches.element_spec)
        # Several workers: each runs the same seeded stream and keeps its share of every
        # global batch (there are no files to shard).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.apply(tf.data.experimental.assert_cardinality(steps)).with_options(options)

    def setup_phase(self, phase: str):
        from . import models

        if phase == "phase1":
            models.freeze_backbone(self.model)
        else:
            p = self.cfg["phase2"]
            models.unfreeze_top(self.model, p["unfreeze"], bool(p["freeze_batchnorm"]))
        with self.strategy.scope():
            self.optimizer = make_optimizer(self.cfg["train"], float(self.cfg[phase]["lr"]))
            self.model.compile(optimizer=self.optimizer, loss=make_loss(self.cfg["train"]),
                               metrics=["accuracy"], jit_compile=bool(self.cfg["train"]["xla"]))
        # mixed_float16: compile wrapped it in a LossScaleOptimizer, whose loss scale and
        # step counter are state to checkpoint with the inner optimiser's
        self.optimizer = self.model.optimizer

    def run(self) -> dict:
        import keras

        from . import models
        from .report import save_confusion_matrix, save_curves

        cfg, t = self.cfg, self.cfg["train"]
        if cfg["model"]["cache_dir"]:
            models.set_weights_cache(cfg["model"]["cache_dir"])
        ckpt_path = self.out / "checkpoint.npz"
        best_path = self.out / "best.npz"
        if self.resume and not ckpt_path.is_file():
            raise UserError(f"{ckpt_path}: --resume: no checkpoint; expected a run folder written by an "
                            f"earlier (interrupted) run")
        if not self.resume and ckpt_path.exists():
            raise UserError(f"{self.out}: --out: already holds a run; expected a new folder, or --resume")
        run_folder = self.out  # the chief's: a resumed worker checks its config.json there too
        self.strategy = make_strategy(t)  # first: a multi-worker strategy must precede other TensorFlow work
        self.scratch = None if is_chief(self.strategy) else worker_scratch(self.out, self.resume)
        if self.scratch is not None:  # only the chief writes the run folder and the export
            self.out, self.export_dir = Path(self.scratch.name), self.export_dir and Path(self.scratch.name) / "export"
            ckpt_path, best_path = self.out / "checkpoint.npz", self.out / "best.npz"
        self.out.mkdir(parents=True, exist_ok=True)
        self.load_data()

        keras.utils.set_random_seed(self.seed)
        keras.mixed_precision.set_global_policy(precision_policy(t, self.strategy))
        spec = models.make_spec(cfg["model"], name=cfg["name"], source_run=str(self.out))
        with self.strategy.scope():
            self.model = models.build(spec, cfg["model"]["weights"] if not self.resume else None,
                                      cfg["model"]["cache_dir"] or None)
        synchronize_batchnorm(self.model, self.strategy)
        uncapture_multiworker_strategy(self.model, self.strategy)

        run_info = {"config": cfg, "seed": self.seed, "data": str(self.data_path),
                    "data_sha256": self.data_checksum(), "train_images": len(self.train),
                    "val_images": len(self.val), "versions": package_versions(),
                    "strategy": strategy_summary(self.strategy),
                    "command": " ".join(sys.argv)}
        write_json_atomic(self.out / ("config.json" if not self.resume else "config_resume.json"), run_info)
        weights = (class_weights(self.train.labels)[self.train.labels]
                   if cfg["data"]["imbalance"] == "class_weights" else None)
        with models.float32_policy():  # mixed_float16 would make the augmentation layers mix dtypes
            self.augmentation = augment_mod.TrainingStream(self.train.images, self.train.labels, cfg["augment"],
                                                           seed=self.seed, batch_size=int(t["batch_size"]),
                                                           weights=weights)
        augment_mod.save_augmentation_grid(self.out / "augmentation.png", self.augmentation, epoch=0)

        phases = self.phases()
        if not phases:
            raise UserError(f"config: phase1.epochs/phase2.epochs: both 0; expected at least one epoch")
        state = {"phase_index": 0, "epoch_in_phase": 0, "epoch": 0, "history": [], "best": None,
                 "best_epoch": None, "phase_best": None, "wait": 0, "plateau_wait": 0, "lr_scale": 1.0,
                 "done": False, "spec_format": models.SPEC_FORMAT}
        restored = None
        if self.resume:
            state, model_vars, opt_vars = read_checkpoint(ckpt_path)
            check_resume(json.loads((run_folder / "config.json").read_text()), run_info["data_sha256"],
                         self.data_path, state, cfg)
            restored = (model_vars, opt_vars)
            self.log(f"resume: from epoch {state['epoch']} ({ckpt_path})")

        monitor = t["monitor"]
        while not state["done"] and state["phase_index"] < len(phases):
            phase, pcfg = phases[state["phase_index"]]
            self.setup_phase(phase)
            if restored is not None:
                assign_variables(self.model.variables, restored[0], f"{ckpt_path}: model")
                models.finalize_states(self.model)
                if restored[1]:
                    with self.strategy.scope():  # distributed optimizer variables
                        self.optimizer.build(self.model.trainable_variables)
                    assign_variables(self.optimizer.variables, restored[1], f"{ckpt_path}: optimizer")
                restored = None
            n_epochs = int(pcfg["epochs"])
            first_epoch_of_phase = state["epoch"] - state["epoch_in_phase"]
            phase_steps = sum(self.steps_per_epoch(first_epoch_of_phase + e) for e in range(n_epochs))
            # one augmentation pipeline for the rest of the phase
            batches = iter(self.augmentation.epochs(
                [self.epoch_plan(e) for e in range(state["epoch"], first_epoch_of_phase + n_epochs)]))
            while state["epoch_in_phase"] < n_epochs:
                epoch = state["epoch"]
                steps = self.steps_per_epoch(epoch)
                step0 = sum(self.steps_per_epoch(first_epoch_of_phase + e) for e in range(state["epoch_in_phase"]))
                started = time.monotonic()
                lr_cb = _LearningRate(self, pcfg, step0, phase_steps, steps, state["lr_scale"],
                                      f"epoch {epoch + 1} ({phase})")
                with self.strategy.scope():
                    fit = self.model.fit(self.epoch_batches(batches, steps), epochs=1, verbose=0,
                                         callbacks=[lr_cb], shuffle=False)
                last = state["epoch_in_phase"] + 1 >= n_epochs
                if (state["epoch_in_phase"] + 1) % max(int(t["eval_every"]), 1) == 0 or last:
                    clean = evaluate(self.model, self.val.images, self.val.labels, int(t["eval_batch_size"]))
                    shifted = evaluate(self.model, self.val_shifted, self.val.labels, int(t["eval_batch_size"]))
                else:  # not validated this epoch: never the best, no patience counted
                    clean = shifted = {"accuracy": float("nan"), "loss": float("nan")}
                row = {"epoch": epoch + 1, "phase": phase, "lr": lr_cb.last_lr,
                       "loss": float(fit.history["loss"][-1]), "accuracy": float(fit.history["accuracy"][-1]),
                       "val_loss": clean["loss"], "val_acc": clean["accuracy"],
                       "val_shifted_acc": shifted["accuracy"], "seconds": round(time.monotonic() - started, 1)}
                state["history"].append(row)
                self.log(f"epoch {epoch + 1} ({phase}): loss {row['loss']:.4f} train acc {row['accuracy']:.3f} "
                         f"val acc {row['val_acc']:.3f} shifted val acc {row['val_shifted_acc']:.3f} "
                         f"lr {row['lr']:.2e} {row['seconds']:.0f}s")
                score = row[monitor]
                if math.isnan(score):
                    pass
                elif state["best"] is None or score > state["best"]:
                    state["best"], state["best_epoch"] = score, epoch + 1
                    save_npz_atomic(best_path, compress=False,
                                    **_variables_to_arrays("model_", self.model.variables))
                if math.isnan(score):
                    pass
                elif state["phase_best"] is None or score > state["phase_best"]:
                    state["phase_best"], state["wait"], state["plateau_wait"] = score, 0, 0
                else:
                    state["wait"] += 1
                    state["plateau_wait"] += 1
                if int(t["plateau_patience"]) and state["plateau_wait"] >= int(t["plateau_patience"]):
                    state["lr_scale"] *= float(t["plateau_factor"])
                    state["plateau_wait"] = 0
                    self.log(f"plateau: {monitor} flat for {t['plateau_patience']} epochs; lr x{state['lr_scale']:.3g}")
                state["epoch"] += 1
                state["epoch_in_phase"] += 1
                stop = int(t["early_stopping_patience"]) and state["wait"] >= int(t["early_stopping_patience"])
                if stop:
                    self.log(f"early stop: {monitor} did not improve for {state['wait']} epochs")
                    state["epoch_in_phase"] = n_epochs
                if state["epoch_in_phase"] >= n_epochs:  # next phase starts from the best weights so far
                    state["phase_index"] += 1
                    state["epoch_in_phase"], state["phase_best"], state["wait"] = 0, None, 0
                    state["plateau_wait"], state["lr_scale"] = 0, 1.0
                    state["done"] = state["phase_index"] >= len(phases)
                    if best_path.is_file():
                        _load_weights_npz(self.model, best_path)
                self.write_history(state["history"])
                phase_over = state["epoch_in_phase"] == 0
                save_checkpoint(ckpt_path, self.model, None if phase_over else self.optimizer, state)
                if phase_over:
                    break
            del batches  # stops its prefetching before the next phase's pipeline starts

        # Final: the best epoch's weights (EarlyStopping's restore_best_weights).
        _load_weights_npz(self.model, best_path)
        clean = evaluate(self.model, self.val.images, self.val.labels, int(t["eval_batch_size"]))
        shifted = evaluate(self.model, self.val_shifted, self.val.labels, int(t["eval_batch_size"]))
        history = state["history"]
        metrics = {
            "best_epoch": state["best_epoch"], "monitor": monitor, "epochs_run": len(history),
            "val_acc": clean["accuracy"], "val_shifted_acc": shifted["accuracy"],
            "val_recall": clean["recall"], "val_shifted_recall": shifted["recall"],
            "val_confusion": clean["confusion"], "val_shifted_confusion": shifted["confusion"],
            "shift_profile": cfg["shift"]["profile"], "train_seconds": round(sum(r["seconds"] for r in history), 1),
        }
        write_json_atomic(self.out / "metrics.json", metrics)
        save_curves(self.out / "curves.png", {
            "loss": {"train (augmented)": [r["loss"] for r in history], "val": [r["val_loss"] for r in history]},
            "accuracy": {"train (augmented)": [r["accuracy"] for r in history],
                         "val": [r["val_acc"] for r in history],
                         "val shifted": [r["val_shifted_acc"] for r in history]},
            "learning rate": {"lr": [r["lr"] for r in history]},
        }, title=f"{cfg['name']}: training curves")
        save_confusion_matrix(self.out / "confusion.png", shifted["confusion"],
                              title=f"Shifted validation ({cfg['shift']['profile']}), best epoch")
        if self.export_dir:
            models.export(self.model, spec, self.export_dir)
            self.log(f"export: {self.export_dir}/model.json + model.weights.h5")
        self.metrics = metrics
        if self.scratch is not None:
            self.scratch.cleanup()
        return metrics

    def write_history(self, history) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(self.out / "history.csv", buffer.getvalue())


class _EpochSlice:
    """A generator function over the next `steps` batches of a shared iterator, safe to
    call twice: under a distribution strategy Keras's `fit` first reads one batch from a
    fresh iterator to build the model, then iterates again from the start. A later pass
    replays the first batches (kept, at most REPLAY); an abandoned earlier pass never
    pulls new ones, so the run's stream is consumed exactly once."""

    REPLAY = 4

    def __init__(self, batches, steps: int):
        import threading

        self.batches, self.steps = batches, steps
        self.kept, self.read, self.passes = [], 0, 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.passes += 1
            me = self.passes
        for i in range(self.steps):
            with self.lock:
                if i < self.read:
                    if i >= len(self.kept):
                        raise RuntimeError(f"training input: batch {i} of the epoch was read by an earlier pass "
                                           f"and not kept (only the first {self.REPLAY} are)")
                    item = self.kept[i]
                elif me != self.passes:  # superseded by a newer pass: stop without consuming
                    return
                else:
                    item = next(self.batches)
                    self.read += 1
                    if i < self.REPLAY:
                        self.kept.append(item)
            yield item


def _load_weights_npz(model, path) -> None:
    with np.load(path, allow_pickle=False) as archive:
        values = [archive[k] for k in sorted(archive.files)]
    assign_variables(model.variables, values, str(path))
    from .models import finalize_states
    finalize_states(model)


def _lr_callback_base():
    import keras
    return keras.callbacks.Callback


class _LearningRate(_lr_callback_base()):
    """Sets the per-step learning rate and prints progress within the epoch."""

    def __init__(self, trainer, phase_cfg, step0, total_steps, steps, scale, label):
        super().__init__()
        self.trainer, self.phase_cfg, self.step0 = trainer, phase_cfg, step0
        self.total_steps, self.steps_in_epoch, self.scale = total_steps, steps, scale
        self.spe = max(steps, 1)
        self.progress = Progress(steps, label, every=30.0)
        self.last_lr = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        lr = learning_rate(self.phase_cfg, self.trainer.cfg["train"], self.step0 + batch, self.total_steps,
                           self.spe) * self.scale
        self.last_lr = lr
        self.model.optimizer.learning_rate.assign(lr)

    def on_train_batch_end(self, batch, logs=None):
        self.progress.update(1)


# -- command line ------------------------------------------------------------------------

@run_cli
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bloodcells.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="TOML configuration (see configs/)")
    parser.add_argument("--data", required=True, help="training data: npz (AN2DL or MedMNIST) or class folders")
    parser.add_argument("--out", required=True, help="run folder (new, or an interrupted one with --resume)")
    parser.add_argument("--export", default=None, help="export the best model here (model.json + weights)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    parser.add_argument("--epochs", type=int, default=None, help="override phase2.epochs (fine-tuning)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    args = parser.parse_args(argv)
    overrides = {}
    if args.epochs is not None:
        overrides["phase2.epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.resume:  # the run's own resolved config wins over the file
        saved = Path(args.out) / "config.json"
        if not saved.is_file():
            raise UserError(f"{saved}: --resume: missing; expected the run folder of an earlier run")
        cfg = json.loads(saved.read_text())["config"]
        for flag, given, started in (("--seed", args.seed, cfg["seed"]), ("--epochs", args.epochs, cfg["phase2"]["epochs"])):
            if given is not None and int(given) != int(started):
                raise UserError(f"{saved}: --resume {flag} {given}: the run was started with {flag} {started}; "
                                f"expected the same (or none), or a new --out to train differently")
    else:
        cfg = load_config(args.config, overrides)
    metrics = Trainer(cfg, args.data, args.out, args.export, args.resume).run()
    print(f"best epoch {metrics['best_epoch']}: val acc {metrics['val_acc']:.4f}, "
          f"shifted val acc {metrics['val_shifted_acc']:.4f} ({metrics['shift_profile']})")


if __name__ == "__main__":
    main()
