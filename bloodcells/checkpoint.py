"""A training run's loop state and checkpoint.

`RunState` is where the run is and what its stopping rule remembers; `end_epoch` is that
rule (best epoch, early stopping, the plateau rule, the end of a phase) as a pure
function, so it is tested without a network. The checkpoint holds every model variable
(random-generator states included), the optimiser's variables and the `RunState`, in
one npz written atomically; `--resume` reads it back and refuses a run it cannot
continue exactly."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from .cli import UserError
from .files import save_npz_atomic


@dataclass
class RunState:
    """Where the run is and what early stopping, the plateau rule and best-model
    selection remember: exactly what the checkpoint saves (as JSON)."""
    phase_index: int = 0
    epoch_in_phase: int = 0
    epoch: int = 0                  # epochs finished, over all phases
    history: list = field(default_factory=list)  # one history.csv row per epoch
    best: float | None = None       # best monitored score of the run (best.npz's)
    best_epoch: int | None = None
    phase_best: float | None = None  # best of this phase: patience counts from it
    wait: int = 0                   # epochs without improvement (early stopping)
    plateau_wait: int = 0           # the same, reset when the plateau rule lowers the rate
    lr_scale: float = 1.0           # product of the plateau rule's factors in this phase
    done: bool = False
    spec_format: str | None = None  # the network format the run started with (None: before format /2)


@dataclass(frozen=True)
class EpochDecisions:
    """What `end_epoch` decided; the Trainer acts on it (files, log, weights)."""
    new_best: bool = False                  # this epoch is the run's best: save its weights
    reduced_lr_scale: float | None = None   # the plateau rule lowered the rate to this scale
    early_stop_after: int | None = None     # early stopping ended the phase after this many flat epochs
    phase_over: bool = False                # the next phase (or the end) starts from the best weights


def validates(state: RunState, eval_every: int, phase_epochs: int) -> bool:
    """Whether the epoch about to end is validated: every `eval_every`-th of its phase,
    and always the phase's last."""
    done_in_phase = state.epoch_in_phase + 1
    return done_in_phase % max(eval_every, 1) == 0 or done_in_phase >= phase_epochs


def end_epoch(state: RunState, row: dict, train, phase_epochs: list) -> tuple[RunState, EpochDecisions]:
    """The stopping rule at the end of an epoch: the state after it (`row` appended to
    the history) and what to do. `row[train.monitor]` is the epoch's score (NaN: not
    validated, so neither best nor counted by patience); `train` holds monitor,
    early_stopping_patience, plateau_patience and plateau_factor (0 patience = off);
    `phase_epochs` is each phase's epoch count. `state` is left unchanged."""
    new = dataclasses.replace(state, history=[*state.history, row])
    score = row[train.monitor]
    new_best = False
    if not math.isnan(score):
        if new.best is None or score > new.best:
            new.best, new.best_epoch, new_best = score, row["epoch"], True
        if new.phase_best is None or score > new.phase_best:
            new.phase_best, new.wait, new.plateau_wait = score, 0, 0
        else:
            new.wait += 1
            new.plateau_wait += 1
    reduced_lr_scale = None
    if train.plateau_patience and new.plateau_wait >= train.plateau_patience:
        new.lr_scale *= train.plateau_factor
        new.plateau_wait, reduced_lr_scale = 0, new.lr_scale
    new.epoch += 1
    new.epoch_in_phase += 1
    early_stop_after = None
    if train.early_stopping_patience and new.wait >= train.early_stopping_patience:
        early_stop_after = new.wait
    phase_over = early_stop_after is not None or new.epoch_in_phase >= phase_epochs[new.phase_index]
    if phase_over:  # the next phase starts afresh (its own best, patience and rate)
        new.phase_index += 1
        new.epoch_in_phase, new.phase_best, new.wait, new.plateau_wait, new.lr_scale = 0, None, 0, 0, 1.0
        new.done = new.phase_index >= len(phase_epochs)
    return new, EpochDecisions(new_best, reduced_lr_scale, early_stop_after, phase_over)


def _variables_to_arrays(prefix: str, variables) -> dict:
    return {f"{prefix}{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}


def save_checkpoint(path, model, optimizer, state: RunState) -> None:
    """Every model variable, the optimiser's variables (if any) and `state`, atomically."""
    arrays = _variables_to_arrays("model_", model.variables)
    if optimizer is not None and optimizer.built:
        arrays.update(_variables_to_arrays("opt_", optimizer.variables))
    arrays["state_json"] = np.frombuffer(json.dumps(dataclasses.asdict(state)).encode(), dtype=np.uint8)
    save_npz_atomic(path, compress=False, **arrays)


def read_checkpoint(path):
    """(RunState, model variable values, optimiser variable values)."""
    with np.load(path, allow_pickle=False) as archive:
        state = RunState(**json.loads(archive["state_json"].tobytes().decode()))
        model_vars = [archive[k] for k in sorted(k for k in archive.files if k.startswith("model_"))]
        opt_vars = [archive[k] for k in sorted(k for k in archive.files if k.startswith("opt_"))]
    return state, model_vars, opt_vars


def save_weights_npz(path, model) -> None:
    """The model's variables alone (best.npz)."""
    save_npz_atomic(path, compress=False, **_variables_to_arrays("model_", model.variables))


def load_weights_npz(model, path) -> None:
    with np.load(path, allow_pickle=False) as archive:
        values = [archive[k] for k in sorted(archive.files)]
    assign_variables(model.variables, values, str(path))
    from .network import finalize_states
    finalize_states(model)


def assign_variables(variables, values, what: str) -> None:
    if len(variables) != len(values):
        raise UserError(f"{what}: {len(values)} saved variables for {len(variables)} in the network; "
                        f"expected a checkpoint from the same config")
    for var, value in zip(variables, values):
        if tuple(var.shape) != tuple(value.shape):
            raise UserError(f"{what}: variable {var.path} has shape {tuple(var.shape)}, saved {value.shape}; "
                            f"expected a checkpoint from the same config")
        var.assign(value)


def check_resume(run_info: dict, data_sha256: str, data_path, state: RunState, model_cfg) -> None:
    """--resume continues the run it was started as: same data (sha256), and a run whose
    checkpoint predates the shipped-network fix must not continue on a different graph."""
    from .network import SPEC_FORMAT, shipped_model_module

    saved = run_info.get("data_sha256")
    if saved and saved != data_sha256:
        raise UserError(f"{data_path}: --data: sha256 {data_sha256[:12]}... differs from the run's "
                        f"{saved[:12]}...; expected the data the run was started with")
    if state.spec_format is None and shipped_model_module().build_dependent(model_cfg.backbone) \
            and str(model_cfg.weights).lower() not in ("none", ""):
        raise UserError(f"--resume: this {model_cfg.backbone} run predates {SPEC_FORMAT} (its stem was built "
                        f"differently from the shipped network); start a new run")
