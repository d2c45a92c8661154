"""A training run's checkpoint: every model variable (random-generator states
included), the optimiser's variables and the loop's `RunState`, in one npz written
atomically; `--resume` reads it back and refuses a run it cannot continue exactly."""

from __future__ import annotations

import dataclasses
import json
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
    from .models import finalize_states
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
    from .models import SPEC_FORMAT, shipped_model_module

    saved = run_info.get("data_sha256")
    if saved and saved != data_sha256:
        raise UserError(f"{data_path}: --data: sha256 {data_sha256[:12]}... differs from the run's "
                        f"{saved[:12]}...; expected the data the run was started with")
    if state.spec_format is None and shipped_model_module().build_dependent(model_cfg.backbone) \
            and str(model_cfg.weights).lower() not in ("none", ""):
        raise UserError(f"--resume: this {model_cfg.backbone} run predates {SPEC_FORMAT} (its stem was built "
                        f"differently from the shipped network); start a new run")
