"""bloodcells.checkpoint, the stopping rule (end_epoch) as a pure function of the run state and
the epoch's scores: best epoch, patience, early stopping, the plateau rule, phase ends and
epochs without validation. No network, no Keras."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

from bloodcells.checkpoint import RunState, end_epoch, validates
from bloodcells.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")


def row(epoch: int, shifted: float, clean: float | None = None) -> dict:
    """A history row with the scores the rule reads (clean defaults to shifted)."""
    return {"epoch": epoch, "val_shifted_acc": shifted, "val_acc": shifted if clean is None else clean}


def run(scores, phase_epochs=(10,), state=None, **train):
    """The rule over epochs scored `scores` (shifted accuracy, or (shifted, clean)
    pairs): the final state and each epoch's decisions."""
    t = TrainConfig(**train)
    state = state or RunState()
    decisions = []
    for score in scores:
        shifted, clean = score if isinstance(score, tuple) else (score, None)
        state, decided = end_epoch(state, row(state.epoch + 1, shifted, clean), t, list(phase_epochs))
        decisions.append(decided)
    return state, decisions


def test_an_improvement_is_the_new_best_and_resets_patience():
    before = RunState(epoch=2, epoch_in_phase=2, best=0.5, best_epoch=1, phase_best=0.5, wait=1, plateau_wait=1,
                      history=[row(1, 0.5), row(2, 0.4)])
    kept = copy.deepcopy(before)
    after, decided = end_epoch(before, row(3, 0.6), TrainConfig(early_stopping_patience=3), [10])
    assert decided.new_best and not decided.phase_over and decided.early_stop_after is None
    assert (after.best, after.best_epoch, after.phase_best, after.wait, after.plateau_wait) == (0.6, 3, 0.6, 0, 0)
    assert (after.epoch, after.epoch_in_phase) == (3, 3) and after.history[-1] == row(3, 0.6)
    assert before == kept  # pure: the given state is left as it was


def test_no_improvement_within_patience_counts_and_goes_on():
    state, decided = run([0.5, 0.5, 0.4], early_stopping_patience=3)
    assert [d.new_best for d in decided] == [True, False, False]  # a tie is no improvement
    assert (state.best, state.best_epoch, state.wait) == (0.5, 1, 2)
    assert not any(d.phase_over or d.early_stop_after for d in decided)
    assert (state.phase_index, state.epoch_in_phase, state.done) == (0, 3, False)


def test_exhausted_patience_stops_the_phase_and_the_next_starts_fresh():
    state, decided = run([0.5, 0.4, 0.3], phase_epochs=(10, 10), early_stopping_patience=2, plateau_patience=1)
    assert decided[-1].early_stop_after == 2 and decided[-1].phase_over
    assert not any(d.phase_over for d in decided[:-1])
    assert (state.phase_index, state.epoch_in_phase, state.epoch, state.done) == (1, 0, 3, False)
    assert (state.phase_best, state.wait, state.plateau_wait, state.lr_scale) == (None, 0, 0, 1.0)
    assert (state.best, state.best_epoch) == (0.5, 1)  # the run's best outlives the phase

    # in the last phase it ends the run
    last, decided = run([0.5, 0.4, 0.3], phase_epochs=(10,), early_stopping_patience=2)
    assert decided[-1].phase_over and last.done and last.epoch == 3


def test_plateau_lowers_the_rate_by_its_factor_each_time_patience_runs_out():
    state, decided = run([0.5, 0.5, 0.4, 0.4, 0.6, 0.5], plateau_patience=2, plateau_factor=0.5)
    assert [d.reduced_lr_scale for d in decided] == [None, None, 0.5, None, None, None]
    assert state.lr_scale == 0.5 and state.plateau_wait == 1 and state.wait == 1
    # the plateau rule resets its own count, not early stopping's
    state, decided = run([0.5, 0.4, 0.4, 0.4], plateau_patience=1, plateau_factor=0.5, early_stopping_patience=4)
    assert [d.reduced_lr_scale for d in decided] == [None, 0.5, 0.25, 0.125]
    assert state.wait == 3 and not any(d.early_stop_after for d in decided)


def test_the_phase_ends_after_its_epochs_and_a_new_phase_keeps_the_runs_best():
    state, decided = run([0.5, 0.6, 0.55, 0.58, 0.7], phase_epochs=(2, 3), plateau_patience=1, plateau_factor=0.5)
    assert [d.phase_over for d in decided] == [False, True, False, False, True]
    # phase 2's first epoch (0.55) is below the run's best: not saved, but it is the
    # phase's best, so patience counts from it
    assert [d.new_best for d in decided] == [True, True, False, False, True]
    assert [d.reduced_lr_scale for d in decided] == [None, None, None, None, None]
    assert state.done and (state.best, state.best_epoch, state.epoch) == (0.7, 5, 5)


def test_monitor_chooses_the_clean_or_the_shifted_score():
    scores = [(0.5, 0.9), (0.6, 0.8)]  # (shifted, clean)
    shifted, _ = run(scores, monitor="val_shifted_acc")
    clean, _ = run(scores, monitor="val_acc")
    assert (shifted.best, shifted.best_epoch) == (0.6, 2)
    assert (clean.best, clean.best_epoch, clean.wait) == (0.9, 1, 1)


def test_epochs_without_validation_are_neither_best_nor_counted():
    t = TrainConfig(eval_every=3)
    due = []
    state = RunState()
    for _ in range(7):
        due.append(validates(state, t.eval_every, 7))
        state.epoch_in_phase += 1
    assert due == [False, False, True, False, False, True, True]  # every 3rd and the phase's last

    scores = [0.5 if d else NAN for d in due[:6]] + [0.4]
    state, decided = run(scores, phase_epochs=(7,), early_stopping_patience=2, plateau_patience=1, eval_every=3)
    assert [d.new_best for d in decided] == [False, False, True, False, False, False, False]
    # two flat validated epochs (6, 7): patience 2 is exhausted on the last, not earlier
    assert [d.reduced_lr_scale for d in decided] == [None] * 5 + [0.5, 0.25]
    assert decided[-1].early_stop_after == 2 and state.best_epoch == 3


def test_the_rule_imports_no_keras():
    code = ("import sys, bloodcells.checkpoint; "
            "assert not {'keras', 'tensorflow'} & set(sys.modules), 'keras imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_zero_patience_is_off():
    state, decided = run([0.5] + [0.1] * 6, early_stopping_patience=0, plateau_patience=0)
    assert not any(d.early_stop_after or d.reduced_lr_scale or d.phase_over for d in decided)
    assert state.wait == 6 and state.lr_scale == 1.0
