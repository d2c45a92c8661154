"""bloodcells.ensemble_select, build_submission.py --select: greedy forward selection (Caruana
2004) on constructed predictions, the validator's limits, refusing the test split, and one
build from tiny exports."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bloodcells import data as data_mod
from bloodcells import ensemble_select, shift
from bloodcells.build import build_main
from bloodcells.cli import UserError
from bloodcells.ensemble_select import Candidate, greedy_select
from bloodcells.untrained import export_tiny
from bloodcells.preflight import Limits
from cells import cell_images

N = 100
LABELS = np.arange(N) % 8


def predictions(correct, right: float = 0.9, wrong: float = 0.5) -> np.ndarray:
    """(N, 8) probabilities: the true class where `correct`, else class (true + 1) % 8;
    the predicted class gets `right` or `wrong` (scalars or per image), the rest share 1 - that."""
    predicted = np.where(correct, LABELS, (LABELS + 1) % 8)
    confidence = np.where(correct, right, wrong) * np.ones(N)
    out = np.repeat(((1 - confidence) / 7)[:, None], 8, axis=1)
    out[np.arange(N), predicted] = confidence
    return out


def candidate(name, correct, right=0.9, wrong=0.5, size_mb=10.0, ms=1.0):
    return Candidate(name, predictions(correct, right, wrong), size_mb, ms / 1000)


def library(**costs):
    """strong and its near-twin (same errors) are the two best singles; complement is
    worse alone but right exactly where they are wrong; all are unsure where wrong."""
    index = np.arange(N)
    return {
        "strong": candidate("strong", index < 75, **costs.get("strong", {})),
        "twin": candidate("twin", index < 74, **costs.get("twin", {})),
        "complement": candidate("complement", index >= 40, wrong=0.4, **costs.get("complement", {})),
    }


def test_picks_the_complementary_pair_over_the_two_best_singles():
    candidates = library()
    assert [ensemble_select.accuracy_of(c.probabilities, LABELS) for c in candidates.values()] == [0.75, 0.74, 0.60]
    selection = greedy_select(candidates, LABELS, Limits())
    # The two best singles make an ensemble of 75 %; strong + complement makes 100 %.
    assert ensemble_select.accuracy_of(candidates["strong"].probabilities + candidates["twin"].probabilities,
                                       LABELS) == 0.75
    assert selection.members == ["strong", "complement"] and selection.accuracy == 1.0
    assert selection.log[0].startswith("step 1: + strong: best single member, 75.00 %")
    assert selection.log[1].startswith("step 2: + complement: 75.00 -> 100.00 % (+25.00 pt)")
    assert selection.log[-1].startswith("stop: no addition improves 100.00 %")


def test_selection_is_with_replacement():
    # images 0-39 both right; 40-59 only a (sure on 40-49, unsure on 50-59 where b is
    # sure and wrong); 60-79 only b (a unsure and wrong); 80-99 both wrong. a + b loses
    # 50-59, a + a + b wins them and keeps 60-79.
    index = np.arange(N)
    a_right = np.where(index < 50, 0.9, 0.6)
    b_wrong = np.where(index < 50, 0.5, 0.9)
    candidates = {"a": candidate("a", index < 60, right=a_right, wrong=0.4),
                  "b": candidate("b", (index < 40) | ((index >= 60) & (index < 80)), wrong=b_wrong)}
    selection = greedy_select(candidates, LABELS, Limits())
    assert selection.members == ["a", "b", "a"] and selection.accuracy == 0.8
    assert "step 3: + a (again: weight 2): 70.00 -> 80.00 %" in selection.log[2]


def test_respects_the_size_and_time_limits():
    limits = Limits(max_size_mb=25.0)
    selection = greedy_select(library(complement={"size_mb": 20.0}), LABELS, limits)
    assert selection.members == ["strong"]  # twin fits but does not help; complement is too big
    assert any(line.startswith("  skipped complement: 100.00 % but 30.0 MB") for line in selection.log)
    slow = Limits(time_limit_s=100.0, test_images=20_000)  # strong alone: 20 s; complement: 200 s
    selection = greedy_select(library(complement={"ms": 10.0}), LABELS, slow)
    assert selection.members == ["strong"]
    size, seconds = ensemble_select.costs(selection.members, library(), slow)
    assert size <= slow.max_size_mb and seconds <= slow.time_limit_s
    nothing = greedy_select(library(), LABELS, Limits(max_size_mb=5.0))
    assert nothing.members == [] and nothing.log[-1] == "stop: no candidate fits the limits"


def _medmnist(path: Path, n: int = 16) -> Path:
    images, labels = cell_images(n, seed=4), np.arange(n) % 8
    np.savez(path, train_images=images, train_labels=labels, val_images=images, val_labels=labels,
             test_images=images, test_labels=labels)
    return path


def test_refuses_the_test_split_and_the_holdout_test_file(tmp_path):
    med = _medmnist(tmp_path / "med.npz")
    with pytest.raises(UserError, match=r"med\.npz: --selection-split: the 'test' split is the held-out test"):
        ensemble_select.load_selection_set(med, "test", "server", 0)
    with pytest.raises(UserError, match="never chooses anything"):
        ensemble_select.load_selection_set(med, "val", "second_opinion", 0)
    images, labels, _ = ensemble_select.load_selection_set(med, "val", "server", 0)
    assert np.array_equal(images, shift.apply_shift(cell_images(16, seed=4), "server", 0))
    # the file `python -m bloodcells.data --holdout` writes as test carries a marker ...
    flat = tmp_path / "flat.npz"
    np.savez(flat, images=cell_images(40, seed=1), labels=np.arange(40) % 8)
    with pytest.raises(SystemExit) as exit_info:
        data_mod.main([str(flat), "--holdout", "0.25", "--out-train", str(tmp_path / "tr.npz"),
                       "--out-test", str(tmp_path / "te.npz")])
    assert exit_info.value.code == 0
    with pytest.raises(UserError, match=r"te\.npz: --selection-split: written by `python -m bloodcells.data "
                                        r"--holdout` as the held-out test"):
        ensemble_select.load_selection_set(tmp_path / "te.npz", None, "server", 0)
    # ... and the training part does not: selecting on a split carved from it is allowed.
    assert len(ensemble_select.load_selection_set(tmp_path / "tr.npz", None, "server", 0)[1]) == 32
    assert data_mod.load_dataset(tmp_path / "te.npz", notify=None).images.shape == (8, 96, 96, 3)


def test_select_builds_the_zip_from_the_chosen_members(tmp_path, capsys):
    exports = [export_tiny(tmp_path / name, seed=seed, name=name) for name, seed in (("alpha", 1), ("beta", 2))]
    images = cell_images(24, seed=6)
    shifted = shift.apply_shift(images, "server", 0)
    probe = ensemble_select.measure(exports[:1], shifted, np.zeros(24, int), {"tta": 1})
    labels = np.argmax(probe["alpha"].probabilities, axis=1)  # alpha is right by construction
    selection_file = tmp_path / "selection.npz"
    np.savez(selection_file, images=images, labels=labels)
    with pytest.raises(SystemExit) as exit_info:
        build_main(["--select", *map(str, exports), "--selection-data", str(selection_file),
                               "--tta", "1", "--out", str(tmp_path / "sub"), "--probe-images", "8"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    assert "step 1: + alpha: best single member, 100.00 %" in out and "chosen: alpha (100.00 %" in out
    with zipfile.ZipFile(out.strip().splitlines()[-1]) as zf:
        assert sorted(zf.namelist()) == ["alpha.json", "alpha.weights.h5", "manifest.json", "model.py"]
        assert json.loads(zf.read("alpha.json"))["tta"]["views"] == 1
    with pytest.raises(SystemExit) as exit_info:
        build_main(["--select", *map(str, exports), "--weights", str(exports[0])])
    assert exit_info.value.code == 2 and "both given" in capsys.readouterr().err


def test_a_broken_candidate_is_a_one_line_error_naming_it(tmp_path):
    broken = export_tiny(tmp_path / "broken", name="broken")
    spec = json.loads((broken / "model.json").read_text())
    spec["backbone_options"]["widths"] = [4, 8]  # the saved weights no longer fit
    (broken / "model.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=r"broken: --select: the export does not run through model\.py"):
        ensemble_select.measure([broken], cell_images(4), np.zeros(4, int), {"tta": 1})
