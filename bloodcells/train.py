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
import csv
import functools
import io
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, NUM_CLASSES
from . import augment as augment_mod
from .checkpoint import EpochDecisions, RunState, assign_variables, check_resume, end_epoch, load_weights_npz, \
    read_checkpoint, save_checkpoint, save_weights_npz, validates
from .cli import Progress, UserError, run_cli
from .config import Config, PhaseConfig, TrainConfig, load_config, resolve_config
from .distribute import is_chief, make_strategy, precision_policy, predict, strategy_summary, \
    synchronize_batchnorm, uncapture_multiworker_strategy, worker_scratch
from .epochs import class_weights, epoch_batches, epoch_order
from .files import sha256_file, write_json_atomic, write_text_atomic

HISTORY_FIELDS = ("epoch", "phase", "lr", "loss", "accuracy", "val_loss", "val_acc", "val_shifted_acc",
                  "seconds")


# -- pieces ------------------------------------------------------------------------------

def make_loss(t: TrainConfig, views: int = 0):
    """The configured loss; with `views` AugMix views per image (augment.augmix_views),
    wrapped in the Jensen-Shannon consistency loss (`consistency_loss`)."""
    import keras

    reduction = None if views else "sum_over_batch_size"
    if t.loss == "focal":
        base = keras.losses.CategoricalFocalCrossentropy(alpha=t.focal_alpha, gamma=t.focal_gamma,
                                                         label_smoothing=t.label_smoothing, reduction=reduction)
    else:
        base = keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing, reduction=reduction)
    return consistency_loss(base, views, t.consistency_weight) if views else base


def consistency_loss(base, views: int, weight: float):
    """AugMix's training loss (Hendrycks et al. 2020, eq. 1): `base` (per-sample) on each
    image's own row plus `weight` times the Jensen-Shannon divergence among the class
    probabilities of the image and its `views` AugMix views. The rows come interleaved
    (image, its views, next image: bloodcells.augment). Returned per row, the image's
    loss (x (views + 1)) on its own row and 0 on its views', so Keras's mean over rows is
    the mean over images and a sample weight counts once per image."""
    import keras
    from keras import ops

    group = views + 1

    class AugMixConsistency(keras.losses.Loss):
        def call(self, y_true, y_pred):
            probs = ops.reshape(ops.cast(y_pred, "float32"), (-1, group, NUM_CLASSES))
            labels = ops.reshape(ops.cast(y_true, "float32"), (-1, group, NUM_CLASSES))[:, 0]
            p = ops.clip(probs, 1e-7, 1.0)
            mixture = ops.mean(p, axis=1, keepdims=True)
            jensen_shannon = ops.mean(ops.sum(p * (ops.log(p) - ops.log(mixture)), axis=-1), axis=1)
            per_image = base(labels, probs[:, 0]) + weight * jensen_shannon
            rows = ops.concatenate([per_image[:, None] * group, ops.zeros_like(probs[:, 1:, 0])], axis=1)
            return ops.reshape(rows, (-1,))

    return AugMixConsistency(name="augmix_consistency")


def make_optimizer(t: TrainConfig, lr: float):
    import keras

    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay or 1e-4)
    if t.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.Lion(lr, weight_decay=t.weight_decay or None)


def learning_rates(base: float, t: TrainConfig, steps: np.ndarray, total_steps: int, steps_per_epoch: int) -> np.ndarray:
    """The learning rate at each of `steps` (float64) of a phase of `total_steps` whose
    peak is `base`: linear warm-up, then constant or cosine down to min_lr. Vectorised,
    so an epoch's rates are one call, not one per batch."""
    import keras

    steps = np.asarray(steps, dtype=np.int64)
    warm = int(round(t.warmup_epochs * steps_per_epoch))
    if t.schedule == "cosine":
        # Keras's floor (alpha) is a fraction of the peak, min_lr an absolute rate (also
        # under a zero peak): decay the part above min_lr, in float64.
        decay = keras.optimizers.schedules.CosineDecay(np.float64(base - t.min_lr), max(total_steps - warm, 1))
        rates = t.min_lr + np.asarray(decay(np.maximum(steps - warm, 0)), dtype=np.float64)
    else:
        rates = np.full(steps.shape, base, dtype=np.float64)
    # Warm-up by hand: Keras's (CosineDecay's warmup_steps) starts from its initial rate
    # at step 0 and decays from the step it reaches the peak; this one starts at
    # base / warm, reaches base on the last warm-up step, and serves the constant schedule too.
    if warm:
        rates = np.where(steps < warm, base * (steps + 1) / warm, rates)
    return rates


def learning_rate(base: float, t: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """`learning_rates` at one step."""
    return float(learning_rates(base, t, np.array([step]), total_steps, steps_per_epoch)[0])


def package_versions() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


def validation_metrics(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> dict:
    """Accuracy, mean cross-entropy, per-class recall (None for a class absent from
    `labels`) and the confusion matrix of `model` on a labelled set."""
    from .scoring import confusion_matrix  # here: sklearn takes a second to import

    probs = predict(model, images.astype(np.float32), batch_size)
    pred = probs.argmax(axis=1)
    confusion = confusion_matrix(labels, pred)
    counts = confusion.sum(axis=1)
    recall = {CLASS_NAMES[c]: (float(confusion[c, c] / counts[c]) if counts[c] else None) for c in range(NUM_CLASSES)}
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    return {"accuracy": float((pred == labels).mean()), "loss": loss, "recall": recall, "confusion": confusion}


@functools.cache
def _learning_rate_callback():
    """The callback class, made on first use: importing this module must not import
    Keras (TensorFlow), so --help and config errors answer at once."""
    import keras

    class _LearningRate(keras.callbacks.Callback):
        """Sets the per-step learning rate and prints progress within the epoch."""

        def __init__(self, base, train_cfg, step0, total_steps, steps, scale, label):
            super().__init__()
            # the epoch's rates in one call: nothing is computed per batch but the assignment
            self.rates = learning_rates(base, train_cfg, step0 + np.arange(steps), total_steps, max(steps, 1)) * scale
            self.progress = Progress(steps, label, every=30.0)
            self.last_lr = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.last_lr = float(self.rates[batch])
            self.model.optimizer.learning_rate.assign(self.last_lr)

        def on_train_batch_end(self, batch, logs=None):
            self.progress.update(1)

    return _LearningRate


# -- the run -----------------------------------------------------------------------------

@dataclass
class _Phase:
    """A phase as the epoch loop needs it: its config, first epoch, total steps (the
    learning-rate schedule's span) and the augmentation pipeline for its epochs left."""
    name: str
    cfg: PhaseConfig
    first_epoch: int
    total_steps: int
    batches: object


class Trainer:
    """One training run: `run()` = set_up, then per phase start_phase and per epoch
    run_epoch (fit, validate when due), the stopping rule (checkpoint.end_epoch) and
    apply_decisions (its files), then finish."""

    def __init__(self, cfg: Config, data_path, out_dir, export_dir=None, resume: bool = False, log=None):
        self.cfg = cfg
        self.data_path = Path(data_path)
        self.run_folder = Path(out_dir)  # the chief's: --resume reads its config.json
        self.out = self.run_folder       # where this process writes (a non-chief worker: its scratch)
        self.export_dir = Path(export_dir) if export_dir else None
        self.resume = resume
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.seed = cfg.seed
        # set by set_up's steps
        self.strategy = None
        self.scratch = None              # a non-chief worker's temporary folder
        self.train = self.val = None     # the data's training and validation sides
        self.val_shifted = None          # the validation images under the fixed shift
        self.spec = self.model = None
        self.augmentation = None         # the run's augment.TrainingStream
        self.restored = None             # on --resume: (model, optimiser) values for start_phase
        # set later
        self.optimizer = None            # the phase's (start_phase)
        self.metrics = None              # the best epoch's (finish)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.npz"

    @property
    def best_path(self) -> Path:
        return self.out / "best.npz"

    # setting up, one step each ------------------------------------------------------
    def set_up(self) -> RunState:
        """Everything before the first epoch; the loop state, new or read from the
        checkpoint (whose variables start_phase restores)."""
        self.check_phases()
        self.check_run_folder()
        self.start_strategy()
        self.load_data()
        self.build_network()
        run_info = self.write_run_info()
        self.build_augmentation()
        return self.initial_state(run_info["data_sha256"])

    def check_phases(self) -> None:
        if not self.cfg.phases():
            raise UserError("config: phase1.epochs/phase2.epochs: both 0; expected at least one epoch")

    def check_run_folder(self) -> None:
        """A new run needs a folder without a run in it; --resume, one with a checkpoint."""
        checkpoint = self.run_folder / "checkpoint.npz"
        if self.resume and not checkpoint.is_file():
            raise UserError(f"{checkpoint}: --resume: no checkpoint; expected a run folder written by an "
                            f"earlier (interrupted) run")
        if not self.resume and checkpoint.exists():
            raise UserError(f"{self.run_folder}: --out: already holds a run; expected a new folder, or --resume")

    def start_strategy(self) -> None:
        """The distribution strategy, first: a multi-worker strategy must precede other
        TensorFlow work. Only the chief writes the run folder and the export; another
        worker computes the same but writes to a scratch folder."""
        t = self.cfg.train
        self.strategy = make_strategy(t.strategy, t.tpu)
        if not is_chief(self.strategy):
            self.scratch = worker_scratch(self.run_folder, self.resume)
            self.out = Path(self.scratch.name)
            self.export_dir = self.export_dir and self.out / "export"
        self.out.mkdir(parents=True, exist_ok=True)

    def load_data(self) -> None:
        """The training and validation sides (cut to data.max_train/max_val if set) and
        the validation images under the fixed shift."""
        from .data import train_val
        from .shift import apply_shift  # contract 2

        d = self.cfg.data
        train, val = train_val(self.data_path, d.val_fraction, self.seed, notify=self.log)
        if d.max_train:
            train = train.subset(np.sort(np.random.default_rng(self.seed).permutation(len(train))[: d.max_train]))
        if d.max_val:
            val = val.subset(np.sort(np.random.default_rng(self.seed + 1).permutation(len(val))[: d.max_val]))
        self.train, self.val = train, val
        shift = self.cfg.shift
        self.val_shifted = apply_shift(val.images, profile=shift.profile, seed=shift.seed)
        self.log(f"data: {len(train)} training, {len(val)} validation images; shifted validation "
                 f"profile '{shift.profile}' seed {shift.seed}")

    def build_network(self) -> None:
        """The network, seeded, under the strategy and the precision policy, with the
        config's initial weights or an export's (model.init_from); on --resume without
        either (start_phase assigns the checkpoint's)."""
        import keras

        from . import network
        from .pretrained import set_weights_cache

        cfg = self.cfg
        if cfg.model.cache_dir:
            set_weights_cache(cfg.model.cache_dir)
        keras.utils.set_random_seed(self.seed)
        keras.mixed_precision.set_global_policy(precision_policy(cfg.train.mixed_precision, self.strategy))
        self.spec = network.make_spec(cfg.model, name=cfg.name, source_run=str(self.out))
        with self.strategy.scope():
            self.model = network.build(self.spec, cfg.model.weights if not self.resume else None,
                                      cfg.model.cache_dir or None)
            if cfg.model.init_from and not self.resume:
                network.load_into(self.model, self.spec, cfg.model.init_from)
                self.log(f"init: weights from {cfg.model.init_from}")
        synchronize_batchnorm(self.model, self.strategy)
        uncapture_multiworker_strategy(self.model, self.strategy)

    def write_run_info(self) -> dict:
        """config.json (config_resume.json on --resume): resolved config, seed, data
        checksum, sizes, package versions, strategy and command line."""
        run_info = {"config": self.cfg.to_dict(), "seed": self.seed, "data": str(self.data_path),
                    "data_sha256": self.data_checksum(), "train_images": len(self.train),
                    "val_images": len(self.val), "versions": package_versions(),
                    "strategy": strategy_summary(self.strategy),
                    "command": " ".join(sys.argv)}
        write_json_atomic(self.out / ("config.json" if not self.resume else "config_resume.json"), run_info)
        return run_info

    def data_checksum(self) -> str:
        if self.data_path.is_file():
            return sha256_file(self.data_path)
        from .data import fingerprint
        return fingerprint(self.train.images, self.train.labels, self.val.images, self.val.labels)

    def build_augmentation(self) -> None:
        """The run's augmented training stream (with per-image class weights if
        data.imbalance asks) and its preview, augmentation.png."""
        from . import network

        cfg = self.cfg
        weights = class_weights(self.train.labels)[self.train.labels] if cfg.data.imbalance == "class_weights" else None
        with network.float32_policy():  # mixed_float16 would make the augmentation layers mix dtypes
            self.augmentation = augment_mod.TrainingStream(self.train.images, self.train.labels, cfg.augment,
                                                           seed=self.seed, batch_size=cfg.train.batch_size,
                                                           weights=weights)
        augment_mod.save_augmentation_grid(self.out / "augmentation.png", self.augmentation, epoch=0)

    def initial_state(self, data_sha256: str) -> RunState:
        """A new RunState; on --resume the checkpoint's, once check_resume accepts the
        run (its variables are kept for start_phase)."""
        from . import network

        if not self.resume:
            return RunState(spec_format=network.SPEC_FORMAT)
        state, model_vars, opt_vars = read_checkpoint(self.checkpoint_path)
        check_resume(json.loads((self.run_folder / "config.json").read_text()), data_sha256, self.data_path,
                     state, self.cfg.model)
        self.restored = (model_vars, opt_vars)
        self.log(f"resume: from epoch {state.epoch} ({self.checkpoint_path})")
        return state

    # the epochs -----------------------------------------------------------------------
    def epoch_plan(self, epoch: int):
        """(epoch, training indices in order, cut to train.steps_per_epoch batches if set)
        for the augmentation stream."""
        order = epoch_order(self.train.labels, self.cfg.data.imbalance, self.seed, epoch)
        t = self.cfg.train
        return epoch, (order[: t.steps_per_epoch * t.batch_size] if t.steps_per_epoch else order)

    def steps_per_epoch(self, epoch: int) -> int:
        return math.ceil(len(self.epoch_plan(epoch)[1]) / self.cfg.train.batch_size)

    def start_phase(self, state: RunState) -> _Phase:
        """Freeze or unfreeze, a fresh optimiser, the checkpoint's variables on resume,
        and one augmentation pipeline for the rest of the phase."""
        from . import network

        name, pcfg = self.cfg.phases()[state.phase_index]
        if name == "phase1":
            network.freeze_backbone(self.model)
        else:
            network.unfreeze_top(self.model, pcfg.unfreeze, pcfg.freeze_batchnorm)
        self.compile(pcfg.lr)
        if self.restored is not None:
            self.restore_checkpoint_variables()
        first = state.epoch - state.epoch_in_phase
        total = sum(self.steps_per_epoch(first + e) for e in range(pcfg.epochs))
        batches = iter(self.augmentation.epochs([self.epoch_plan(e) for e in range(state.epoch, first + pcfg.epochs)]))
        return _Phase(name, pcfg, first, total, batches)

    def compile(self, lr: float) -> None:
        with self.strategy.scope():
            optimizer = make_optimizer(self.cfg.train, lr)
            loss = make_loss(self.cfg.train, self.augmentation.augmenter.views)
            self.model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=self.cfg.train.xla)
        # mixed_float16: compile wrapped it in a LossScaleOptimizer, whose loss scale and
        # step counter are state to checkpoint with the inner optimiser's
        self.optimizer = self.model.optimizer

    def restore_checkpoint_variables(self) -> None:
        """The checkpoint's model and optimiser variables (once, in the first phase run)."""
        from . import network

        model_vars, opt_vars = self.restored
        assign_variables(self.model.variables, model_vars, f"{self.checkpoint_path}: model")
        network.finalize_states(self.model)
        if opt_vars:
            with self.strategy.scope():  # distributed optimizer variables
                self.optimizer.build(self.model.trainable_variables)
            assign_variables(self.optimizer.variables, opt_vars, f"{self.checkpoint_path}: optimizer")
        self.restored = None

    def run_epoch(self, state: RunState, phase: _Phase) -> dict:
        """One epoch trained, validated when due (checkpoint.validates) and logged: its
        history row."""
        row, started = self.fit_epoch(state, phase)
        if validates(state, self.cfg.train.eval_every, phase.cfg.epochs):
            clean, shifted = self.validate()
        else:  # NaN: the stopping rule neither takes it as best nor counts it for patience
            clean = shifted = {"accuracy": float("nan"), "loss": float("nan")}
        row.update(val_loss=clean["loss"], val_acc=clean["accuracy"], val_shifted_acc=shifted["accuracy"],
                   seconds=round(time.monotonic() - started, 1))
        self.log(f"epoch {row['epoch']} ({phase.name}): loss {row['loss']:.4f} train acc {row['accuracy']:.3f} "
                 f"val acc {row['val_acc']:.3f} shifted val acc {row['val_shifted_acc']:.3f} "
                 f"lr {row['lr']:.2e} {row['seconds']:.0f}s")
        return row

    def fit_epoch(self, state: RunState, phase: _Phase) -> tuple[dict, float]:
        """One epoch of training: its history row without the validation columns, and
        when it started."""
        epoch, steps = state.epoch, self.steps_per_epoch(state.epoch)
        step0 = sum(self.steps_per_epoch(phase.first_epoch + e) for e in range(state.epoch_in_phase))
        started = time.monotonic()
        lr_cb = _learning_rate_callback()(phase.cfg.lr, self.cfg.train, step0, phase.total_steps, steps, state.lr_scale,
                                          f"epoch {epoch + 1} ({phase.name})")
        with self.strategy.scope():
            fit = self.model.fit(epoch_batches(phase.batches, steps), epochs=1, verbose=0, callbacks=[lr_cb],
                                 shuffle=False)
        return {"epoch": epoch + 1, "phase": phase.name, "lr": lr_cb.last_lr,
                "loss": float(fit.history["loss"][-1]), "accuracy": float(fit.history["accuracy"][-1])}, started

    def validate(self) -> tuple[dict, dict]:
        """Metrics on the clean and on the shifted validation set."""
        size = self.cfg.train.eval_batch_size
        return (validation_metrics(self.model, self.val.images, self.val.labels, size),
                validation_metrics(self.model, self.val_shifted, self.val.labels, size))

    def apply_decisions(self, state: RunState, decisions: EpochDecisions) -> None:
        """The stopping rule's decisions on disk and in the network: best.npz, the log,
        the best weights back at a phase's end; then history.csv and the checkpoint
        (without the optimiser after a phase: the next makes its own)."""
        t = self.cfg.train
        if decisions.new_best:
            save_weights_npz(self.best_path, self.model)
        if decisions.reduced_lr_scale is not None:
            self.log(f"plateau: {t.monitor} flat for {t.plateau_patience} epochs; lr x{decisions.reduced_lr_scale:.3g}")
        if decisions.early_stop_after is not None:
            self.log(f"early stop: {t.monitor} did not improve for {decisions.early_stop_after} epochs")
        if decisions.phase_over and self.best_path.is_file():
            load_weights_npz(self.model, self.best_path)
        self.write_history(state.history)
        save_checkpoint(self.checkpoint_path, self.model, None if decisions.phase_over else self.optimizer, state)

    def run(self) -> dict:
        state = self.set_up()
        phase_epochs = [pcfg.epochs for _, pcfg in self.cfg.phases()]
        while not state.done and state.phase_index < len(phase_epochs):
            phase = self.start_phase(state)
            phase_over = False
            while not phase_over:
                row = self.run_epoch(state, phase)
                state, decisions = end_epoch(state, row, self.cfg.train, phase_epochs)
                self.apply_decisions(state, decisions)
                phase_over = decisions.phase_over
            del phase  # stops its pipeline's prefetching before the next phase's starts
        return self.finish(state)

    def finish(self, state: RunState) -> dict:
        """The best epoch's weights (EarlyStopping's restore_best_weights) measured once
        more: metrics.json, the figures, and the export."""
        from . import network
        from .figures import save_confusion_matrix, save_curves

        cfg = self.cfg
        load_weights_npz(self.model, self.best_path)
        clean, shifted = self.validate()
        history = state.history
        metrics = {
            "best_epoch": state.best_epoch, "monitor": cfg.train.monitor, "epochs_run": len(history),
            "val_acc": clean["accuracy"], "val_shifted_acc": shifted["accuracy"],
            "val_recall": clean["recall"], "val_shifted_recall": shifted["recall"],
            "val_confusion": clean["confusion"], "val_shifted_confusion": shifted["confusion"],
            "shift_profile": cfg.shift.profile, "train_seconds": round(sum(r["seconds"] for r in history), 1),
        }
        write_json_atomic(self.out / "metrics.json", metrics)
        save_curves(self.out / "curves.png", {
            "loss": {"train (augmented)": [r["loss"] for r in history], "val": [r["val_loss"] for r in history]},
            "accuracy": {"train (augmented)": [r["accuracy"] for r in history],
                         "val": [r["val_acc"] for r in history],
                         "val shifted": [r["val_shifted_acc"] for r in history]},
            "learning rate": {"lr": [r["lr"] for r in history]},
        }, title=f"{cfg.name}: training curves")
        save_confusion_matrix(self.out / "confusion.png", shifted["confusion"],
                              title=f"Shifted validation ({cfg.shift.profile}), best epoch")
        if self.export_dir:
            network.export(self.model, self.spec, self.export_dir)
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


# -- command line ------------------------------------------------------------------------

def check_paths(cfg: Config, data, out, export=None) -> None:
    """What can be checked before TensorFlow starts and before epoch 1, so a run never
    fails at its end: the data (readable, non-empty training and validation sides) and
    every output folder writable. The export replaces its folder as a whole, so it may
    not hold the run folder or the data."""
    from .cli import check_output_folder
    from .data import check_train_val

    check_output_folder(out, "--out")
    if export:
        check_output_folder(export, "--export", replaced=True)
        export_path = Path(export).resolve()
        for flag, path in (("--out", out), ("--data", data)):
            if Path(path).resolve().is_relative_to(export_path):
                raise UserError(f"{export}: --export: holds {flag} {path}, which the export would replace; "
                                f"expected a folder of its own")
    check_train_val(data, cfg.data.val_fraction, cfg.seed)


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
        cfg = resolve_config(json.loads(saved.read_text())["config"], str(saved))
        for flag, given, started in (("--seed", args.seed, cfg.seed), ("--epochs", args.epochs, cfg.phase2.epochs)):
            if given is not None and given != started:
                raise UserError(f"{saved}: --resume {flag} {given}: the run was started with {flag} {started}; "
                                f"expected the same (or none), or a new --out to train differently")
    else:
        cfg = load_config(args.config, overrides)
    check_paths(cfg, args.data, args.out, args.export)
    metrics = Trainer(cfg, args.data, args.out, args.export, args.resume).run()
    print(f"best epoch {metrics['best_epoch']}: val acc {metrics['val_acc']:.4f}, "
          f"shifted val acc {metrics['val_shifted_acc']:.4f} ({metrics['shift_profile']})")


if __name__ == "__main__":
    main()
