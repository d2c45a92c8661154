"""bloodcells.train: the whole run's outputs, resume == uninterrupted, and every loss /
optimiser / imbalance / scale option on a tiny network and a few images, with the checks of
the options that go together (the config files themselves: tests/test_config.py)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bloodcells import train
from bloodcells.cli import UserError
from bloodcells.config import TrainConfig, resolve_config
from bloodcells.files import save_npz_atomic
from conftest import snapshot

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"backbone": "small_cnn", "weights": "none",
              "backbone_options": {"widths": [4, 8], "residual": True, "stem_stride": 2},
              "head": {"dense_units": 8}}
LIGHT_AUG = {"rotation": 0.2, "geometry_prob": 0.5, "noise_prob": 0.3, "randaugment_prob": 0.3,
             "cutmix_prob": 0.3, "mixup_prob": 0.3, "ramp_epochs": 2}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """A tiny AN2DL-layout file: 48 random-texture images with a class-dependent tint."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 6)
    images = rng.integers(0, 120, (48, 96, 96, 3)).astype(np.int16)
    images[..., 0] += (labels * 16)[:, None, None]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_npz_atomic(path, images=np.clip(images, 0, 255).astype(np.uint8), labels=labels)
    return path


def tiny_config(**changes):
    raw = {"name": "tiny", "seed": 3, "data": {"val_fraction": 0.25},
           "model": TINY_MODEL, "augment": LIGHT_AUG,
           "train": {"batch_size": 12, "optimizer": "adamw", "schedule": "cosine", "warmup_epochs": 0.5},
           "phase1": {"epochs": 1, "lr": 1e-2}, "phase2": {"epochs": 2, "lr": 1e-2, "freeze_batchnorm": False}}
    raw = copy.deepcopy(raw)  # changes must not reach the shared TINY_MODEL / LIGHT_AUG tables
    for key, value in changes.items():
        table, _, field = key.rpartition(".")
        target = raw
        for part in filter(None, table.split(".")):
            target = target.setdefault(part, {})
        target[field] = value
    return resolve_config(raw, "test")


# -- command line --------------------------------------------------------------------------

def test_cli_bad_input_exits_2(tmp_path, data_file):
    cmd = [sys.executable, "-m", "bloodcells.train", "--config", str(tmp_path / "nope.toml"),
           "--data", str(data_file), "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nope.toml" in result.stderr and not (tmp_path / "run").exists()


# -- pieces ----------------------------------------------------------------------------------

def test_learning_rate_warmup_cosine_and_constant():
    t = TrainConfig(warmup_epochs=1.0, schedule="cosine", min_lr=0.0)
    lrs = [train.learning_rate(1.0, t, s, 40, 10) for s in range(40)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01
    assert train.learning_rate(1.0, dataclasses.replace(t, schedule="constant", warmup_epochs=0), 30, 40, 10) == 1.0


def _one_step(loss_cfg=None, optimizer="adam"):
    """One training step of the tiny network (mixed precision, XLA and the strategies
    are tests/test_distribute.py's, as whole runs)."""
    from bloodcells import network

    t = TrainConfig(**{**(loss_cfg or {}), "optimizer": optimizer})
    net = network.build(network.make_spec(TINY_MODEL), "none")
    net.compile(optimizer=train.make_optimizer(t, 1e-2), loss=train.make_loss(t))
    x = np.random.default_rng(1).integers(0, 256, (4, 96, 96, 3)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[[0, 1, 2, 3]]
    before = [w.copy() for w in net.get_layer("logits").get_weights()]
    loss = net.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][-1]
    after = net.get_layer("logits").get_weights()
    assert np.isfinite(loss)
    assert not np.array_equal(before[0], after[0])
    return net, loss


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "rmsprop", "lion"])
def test_optimizers_take_a_step(optimizer):
    net, _ = _one_step(optimizer=optimizer)
    kind = type(net.optimizer).__name__.lower()
    assert kind == optimizer


@pytest.mark.parametrize("loss_cfg", [
    {"loss": "categorical_crossentropy", "label_smoothing": 0.1},
    {"loss": "focal", "focal_gamma": 2.0, "focal_alpha": 0.25},
    {"loss": "focal", "focal_gamma": 1.0, "focal_alpha": [0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]},
])
def test_losses_take_a_step(loss_cfg):
    _one_step(loss_cfg)


def test_focal_loss_values():
    """Focal with gamma 0 and alpha 1 is cross-entropy; per-class alpha weights by class."""
    y = np.eye(8, dtype=np.float32)[[0, 1]]
    p = np.full((2, 8), 0.05, np.float32)
    p[0, 0] = p[1, 1] = 0.65
    ce = float(train.make_loss(TrainConfig())(y, p))
    focal0 = float(train.make_loss(TrainConfig(loss="focal", focal_gamma=0.0, focal_alpha=1.0))(y, p))
    assert focal0 == pytest.approx(ce, rel=1e-4)
    alpha = [1.0, 0.0] + [0.5] * 6
    per_class = float(train.make_loss(TrainConfig(loss="focal", focal_gamma=0.0, focal_alpha=alpha))(y, p))
    assert per_class == pytest.approx(ce / 2, rel=1e-4)  # class 1's sample weighs 0


def test_consistency_loss_is_the_base_loss_plus_jensen_shannon_per_image():
    """Rows are (image, view, view) triples. Identical views: the loss is the base loss
    of the images' own rows alone. Different views: plus weight x the Jensen-Shannon
    divergence of the triple (computed here by hand), once per image, sample weights
    counting once per image."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.eye(8, dtype=np.float32)[[0, 3]], 3, axis=0)
    p = rng.dirichlet(np.ones(8), size=6).astype(np.float32)
    cfg = TrainConfig(label_smoothing=0.1, consistency_weight=12.0)
    loss = train.make_loss(cfg, views=2)
    base = train.make_loss(TrainConfig(label_smoothing=0.1))
    same = np.repeat(p[0::3], 3, axis=0)
    assert float(loss(y, same)) == pytest.approx(float(base(y[0::3], p[0::3])), rel=1e-5)

    def kl(a, b):
        return float(np.sum(a * (np.log(a) - np.log(b))))

    js = [np.mean([kl(p[g + k], p[g:g + 3].mean(axis=0)) for k in range(3)]) for g in (0, 3)]
    expected = float(base(y[0::3], p[0::3])) + 12.0 * float(np.mean(js))
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-4)
    per_image = [float(base(y[g:g + 1], p[g:g + 1])) + 12.0 * js[i] for i, g in enumerate((0, 3))]
    weighted = float(loss(y, p, sample_weight=np.repeat([1.0, 0.0], 3)))
    assert weighted == pytest.approx(per_image[0] / 2, rel=1e-4)  # Keras divides by the rows


def test_augmix_views_and_consistency_weight_come_together():
    with pytest.raises(UserError, match=r"test: train.consistency_weight: 12.0; expected 0, or > 0 with "
                                        r"augment.augmix_views >= 1"):
        tiny_config(**{"train.consistency_weight": 12.0})
    with pytest.raises(UserError, match=r"test: augment.augmix_views: 2; expected 0 unless"):
        tiny_config(**{"augment.augmix_views": 2})
    with pytest.raises(UserError, match=r"test: augment.augmix_views: 2 with train.strategy 'mirrored'"):
        tiny_config(**{"augment.augmix_views": 2, "train.consistency_weight": 1.0, "train.strategy": "mirrored"})
    with pytest.raises(UserError, match=r"test: augment.augmix_views: -1; expected an integer >= 0"):
        tiny_config(**{"augment.augmix_views": -1})


def test_blur_kernel_must_be_an_odd_integer():
    assert tiny_config(**{"augment.blur_kernel": 13}).augment["blur_kernel"] == 13
    for bad in (4, 1, 5.0, "7"):
        with pytest.raises(UserError, match=rf"test: augment.blur_kernel: {bad!r}; expected an odd integer >= 3"):
            tiny_config(**{"augment.blur_kernel": bad})


def test_overlay_opacity_must_be_a_fraction():
    assert tiny_config(**{"augment.overlay_opacity": 0.5}).augment["overlay_opacity"] == 0.5
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(UserError, match=rf"test: augment.overlay_opacity: {bad!r}; expected a number in \[0, 1\]"):
            tiny_config(**{"augment.overlay_opacity": bad})


def test_a_run_with_augmix_views_trains_validates_and_exports(tmp_path, data_file):
    """The consistency loss end to end: the stream's triples, the loss, validation on
    plain images and an export that predicts single images."""
    from bloodcells import network

    cfg = tiny_config(**{"augment.augmix_views": 2, "train.consistency_weight": 12.0, "phase1.epochs": 0,
                         "phase2.epochs": 1})
    metrics = train.Trainer(cfg, data_file, tmp_path / "run", tmp_path / "export").run()
    history = _history(tmp_path / "run")
    assert len(history) == 1 and np.isfinite(float(history[0]["loss"]))
    assert 0.0 <= metrics["val_acc"] <= 1.0
    net, _ = network.load_exported(tmp_path / "export")
    assert net.predict(np.zeros((2, 96, 96, 3), np.float32), verbose=0).shape == (2, 8)


# -- whole runs ------------------------------------------------------------------------------

def _history(run):
    with open(run / "history.csv") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def test_full_run_writes_everything_and_exports(tmp_path, data_file):
    cfg = tiny_config(**{"data.imbalance": "class_weights", "train.plateau_patience": 1})
    out, export = tmp_path / "run", tmp_path / "weights" / "tiny"
    metrics = train.Trainer(cfg, data_file, out, export).run()
    for name in ("config.json", "augmentation.png", "history.csv", "curves.png", "metrics.json",
                 "confusion.png", "checkpoint.npz", "best.npz"):
        assert (out / name).is_file(), name
    info = json.loads((out / "config.json").read_text())
    from bloodcells.files import sha256_file
    assert info["data_sha256"] == sha256_file(data_file) and info["seed"] == 3
    assert {"tensorflow", "keras", "numpy", "python"} <= set(info["versions"])
    assert info["config"]["augment"]["cutmix_prob"] == 0.3  # resolved, defaults filled in
    rows = _history(out)
    assert [r["phase"] for r in rows] == ["phase1", "phase2", "phase2"]
    saved = json.loads((out / "metrics.json").read_text())
    assert 0 <= saved["val_acc"] <= 1 and 0 <= saved["val_shifted_acc"] <= 1
    assert set(saved["val_recall"]) == set(__import__("bloodcells").CLASS_NAMES)
    best = max(float(r["val_shifted_acc"]) for r in rows)
    assert saved["best_epoch"] in [i + 1 for i, r in enumerate(rows) if float(r["val_shifted_acc"]) == best]
    assert metrics["val_shifted_acc"] == pytest.approx(best)  # the exported model is the best epoch's
    spec = json.loads((export / "model.json").read_text())
    assert spec["format"] == "bloodcells-model/2" and (export / "model.weights.h5").is_file()

    # A second run into the same folder without --resume is refused.
    with pytest.raises(UserError, match="--out"):
        train.Trainer(cfg, data_file, out).run()


class _Interrupt(Exception):
    pass


def _run_until_checkpoint(cfg, data_file, out, monkeypatch, n):
    """A run killed right after its n-th checkpoint is written, as an interrupted job is."""
    real_save = train.save_checkpoint
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise _Interrupt()

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupt):
        train.Trainer(cfg, data_file, out).run()
    monkeypatch.setattr(train, "save_checkpoint", real_save)

def test_init_from_starts_the_network_from_an_export_of_the_same_network(tmp_path, data_file):
    from bloodcells import network

    first = tiny_config(**{"phase1.epochs": 0, "phase2.epochs": 1})
    train.Trainer(first, data_file, tmp_path / "first", tmp_path / "export").run()
    exported, _ = network.load_exported(tmp_path / "export")
    again = train.Trainer(tiny_config(**{"model.init_from": str(tmp_path / "export")}), data_file,
                          tmp_path / "again")
    again.set_up()
    for mine, theirs in zip(again.model.get_weights(), exported.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    other = tiny_config(**{"model.init_from": str(tmp_path / "export"), "model.head": {"dense_units": 16}})
    with pytest.raises(UserError, match=r"model.json: head: .*expected the config's .*same network"):
        train.Trainer(other, data_file, tmp_path / "other").set_up()


def test_resume_ends_where_the_uninterrupted_run_ends(tmp_path, data_file, monkeypatch):
    cfg = tiny_config()
    train.Trainer(cfg, data_file, tmp_path / "whole").run()

    _run_until_checkpoint(cfg, data_file, tmp_path / "cut", monkeypatch, 2)  # mid phase 2
    assert len(_history(tmp_path / "cut")) == 2
    with pytest.raises(UserError, match="--resume"):
        train.Trainer(cfg, data_file, tmp_path / "cut").run()
    train.Trainer(cfg, data_file, tmp_path / "cut", resume=True).run()

    whole, cut = _history(tmp_path / "whole"), _history(tmp_path / "cut")
    assert len(whole) == len(cut) == 3
    for a, b in zip(whole, cut):
        for key in ("loss", "accuracy", "val_loss", "val_acc", "val_shifted_acc", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
    with np.load(tmp_path / "whole" / "best.npz") as w, np.load(tmp_path / "cut" / "best.npz") as c:
        for key in w.files:
            np.testing.assert_allclose(w[key], c[key], rtol=1e-4, atol=1e-5)


def test_early_stopping_plateau_and_monitor(tmp_path, data_file):
    # lr 1e-12 (a rate must be > 0; this one is below float32's resolution of the weights):
    # nothing improves after the first epoch, so patience 1 stops the phase early and the
    # plateau rule halves the rate; monitor on clean accuracy.
    cfg = tiny_config(**{"phase1.epochs": 0, "phase2.epochs": 5, "phase2.lr": 1e-12, "train.monitor": "val_acc",
                         "train.early_stopping_patience": 2, "train.plateau_patience": 1,
                         "data.imbalance": "downsample", "augment.enabled": False})
    messages = []
    metrics = train.Trainer(cfg, data_file, tmp_path / "run", log=messages.append).run()
    rows = _history(tmp_path / "run")
    assert len(rows) == 3 and metrics["best_epoch"] == 1 and metrics["monitor"] == "val_acc"
    assert any(m.startswith("early stop") for m in messages)
    assert sum(m.startswith("plateau") for m in messages) == 2


def test_upsampling_run_and_cli_resume(tmp_path, data_file):
    config = tmp_path / "c.toml"
    config.write_text(
        'name = "cli"\nseed = 1\n[data]\nimbalance = "upsample"\nmax_train = 24\n'
        '[model]\nbackbone = "small_cnn"\nweights = "none"\n'
        'backbone_options = { widths = [4], stem_stride = 2, residual = true }\nhead = { dense_units = 8 }\n'
        '[augment]\nrot90 = true\n[train]\nbatch_size = 16\nloss = "focal"\noptimizer = "lion"\n'
        '[phase2]\nepochs = 1\nlr = 1e-3\nfreeze_batchnorm = false\n')
    env = {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"}
    run, export = tmp_path / "run", tmp_path / "w"
    base = [sys.executable, "-m", "bloodcells.train", "--config", str(config), "--data", str(data_file),
            "--out", str(run)]
    result = subprocess.run(base + ["--export", str(export), "--epochs", "1", "--seed", "2"],
                            capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shifted val acc" in result.stdout
    assert "epoch 1 (phase2)" in result.stderr  # progress per epoch
    assert json.loads((run / "config.json").read_text())["seed"] == 2
    assert (export / "model.json").is_file()
    # --resume on a finished run: nothing left to do, same metrics.
    before = json.loads((run / "metrics.json").read_text())
    result = subprocess.run(base + ["--resume"], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["val_acc"] == before["val_acc"]


def _checkpoint_arrays(path):
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k != "state_json"}


def test_mixed_precision_resume_restores_the_loss_scale_and_ends_exactly(tmp_path, data_file, monkeypatch):
    """mixed_float16 (CPU, tiny model): compile wraps the optimiser in a LossScaleOptimizer;
    its loss scale and step counter are checkpointed, so an interrupted run ends exactly
    where an uninterrupted one does. Here the scale starts high (2^18: the first steps
    overflow, are skipped and halve it) and grows every 2 steps (default 2,000), so it
    changes within this short run, and a resume that restarted it would differ."""
    import keras

    real_init = keras.optimizers.LossScaleOptimizer.__init__

    def fast_growth(self, inner, initial_scale=2.0 ** 15, dynamic_growth_steps=2000, **kwargs):
        real_init(self, inner, initial_scale=2.0 ** 18, dynamic_growth_steps=2, **kwargs)

    monkeypatch.setattr(keras.optimizers.LossScaleOptimizer, "__init__", fast_growth)
    cfg = tiny_config(**{"train.mixed_precision": True, "phase1.epochs": 0, "phase2.epochs": 3})
    try:
        whole = train.Trainer(cfg, data_file, tmp_path / "whole")
        whole.run()
        assert "LossScale" in type(whole.model.optimizer).__name__
        scale = float(whole.model.optimizer.dynamic_scale.numpy())
        assert scale < 2.0 ** 18  # the scale moved during the run

        _run_until_checkpoint(cfg, data_file, tmp_path / "cut", monkeypatch, 2)
        cut = train.Trainer(cfg, data_file, tmp_path / "cut", resume=True)
        cut.run()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert float(cut.model.optimizer.dynamic_scale.numpy()) == scale
    assert int(cut.model.optimizer.step_counter.numpy()) == int(whole.model.optimizer.step_counter.numpy())
    assert _history(tmp_path / "whole") == _history(tmp_path / "cut")
    w, c = _checkpoint_arrays(tmp_path / "whole" / "best.npz"), _checkpoint_arrays(tmp_path / "cut" / "best.npz")
    assert w.keys() == c.keys() and all(np.array_equal(w[k], c[k]) for k in w)


def test_resume_refuses_other_data_seed_or_epochs(tmp_path, data_file, capsys):
    cfg = tiny_config(**{"phase1.epochs": 0, "phase2.epochs": 2})
    run = tmp_path / "run"
    train.Trainer(cfg, data_file, run).run()
    other = tmp_path / "other.npz"
    with np.load(data_file) as d:
        images = d["images"].copy()
        images[0, 0, 0, 0] ^= 1
        save_npz_atomic(other, images=images, labels=d["labels"])
    with pytest.raises(UserError, match=r"other.npz: --data: sha256 .* differs from the run's"):
        train.Trainer(cfg, other, run, resume=True).run()
    config = tmp_path / "unused.toml"
    config.write_text('name = "x"\n')
    base = ["--config", str(config), "--data", str(data_file), "--out", str(run), "--resume"]
    capsys.readouterr()  # the runs' progress lines
    for flag, value, started in (("--seed", "4", "3"), ("--epochs", "5", "2")):
        with pytest.raises(SystemExit) as exit_:
            train.main(base + [flag, value])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--resume {flag} {value}: the run was started with {flag} {started}" in err[0]
    with pytest.raises(SystemExit) as exit_:
        train.main(base + ["--seed", "3", "--epochs", "2"])  # the values it was started with
    assert exit_.value.code == 0


# -- issue 27: bad data and unusable outputs refused before training -----------------------

def test_bad_data_and_unusable_outputs_are_refused_before_epoch_1(tmp_path, data_file, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nbackbone = "small_cnn"\nweights = "none"\nbackbone_options = { widths = [4] }\n'
                      '[phase2]\nepochs = 1\n')
    bad_fraction = tmp_path / "fraction.toml"
    bad_fraction.write_text(config.read_text() + "[data]\nval_fraction = 1.5\n")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data_file.read_bytes()[:20000])
    with np.load(data_file) as f:
        images, labels = f["images"], f["labels"]
    np.savez(tmp_path / "one.npz", images=images[:1], labels=labels[:1])
    np.savez(tmp_path / "bool.npz", images=images > 100, labels=labels)
    (tmp_path / "a_file").write_text("x")
    run, data = tmp_path / "run", str(data_file)
    cases = [
        ([bad_fraction, data, run], r"fraction\.toml: data\.val_fraction: 1\.5; expected a number in \(0, 1\)"),
        ([config, truncated, run], r"truncated\.npz: file: unreadable or truncated"),
        ([config, tmp_path / "one.npz", run], r"one\.npz: images: 1 images split into 1 for training and 0 for "
                                              r"validation"),
        ([config, tmp_path / "bool.npz", run], r"bool\.npz: images: bool images; expected uint8 or float pixels"),
        ([config, data, tmp_path / "a_file"], r"a_file: --out: is a file, not a folder"),
        ([config, data, run, tmp_path / "a_file" / "export"], r"--export: .*a_file is a file, not a folder"),
        ([config, data, tmp_path / "exp" / "run", tmp_path / "exp"], r"exp: --export: holds --out .*which the "
                                                                    r"export would replace"),
        ([config, data, run, "/proc/bloodcells_export"], r"--export: cannot write in /proc"),
    ]
    before = snapshot(tmp_path)
    for (cfg, data_path, out, *export), pattern in cases:
        argv = ["--config", str(cfg), "--data", str(data_path), "--out", str(out)]
        with pytest.raises(SystemExit) as exit:
            train.main(argv + (["--export", str(export[0])] if export else []))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit.value.code == 2 and len(err) == 1 and re.search(pattern, err[0]), (pattern, err)
    assert snapshot(tmp_path) == before and not run.exists()  # no run started
