"""bloodcells.network, the networks for training: built through model.py, weights options,
freezing (EfficientNet-Lite's by whole blocks too), export in format 1 (loadable by
model.py's build_network; a pretrained Lite one too), and the B7 recipe's one step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bloodcells import network, pretrained
from bloodcells.cli import UserError

TINY = {"backbone": "small_cnn", "backbone_options": {"widths": [4, 8], "residual": True, "stem_stride": 2},
        "head": {"dense_units": 8}}


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3)).astype(np.float32)


def test_spec_follows_contract_1():
    spec = network.make_spec({**TINY, "resize_to": 0}, name="tiny", source_run="runs/x")
    assert spec["format"] == "bloodcells-model/2"
    for key in ("name", "weights_file", "backbone", "backbone_options", "input_size", "resize_to",
                "num_classes", "head", "tta", "class_names", "pretrained", "source_run", "keras_version"):
        assert key in spec
    assert spec["input_size"] == 96 and spec["num_classes"] == 8 and spec["resize_to"] is None
    assert set(spec["head"]) == {"dense_units", "dropout", "bn_momentum", "activation"}
    assert set(spec["tta"]) == {"views", "merge", "mode"}
    with pytest.raises(UserError, match="model.backbone"):
        network.make_spec({"backbone": "vgg99"})
    with pytest.raises(UserError, match="model.backbone_options.input_norm: unknown 'imag'"):
        network.make_spec({**TINY, "backbone_options": {"input_norm": "imag"}})


@pytest.mark.parametrize("residual", [False, True])
def test_small_cnn_builds_with_stable_layer_names(residual):
    spec = network.make_spec({**TINY, "backbone_options": {"widths": [4, 8], "residual": residual}})
    net = network.build(spec, "none")
    names = [layer.name for layer in net.layers]
    assert names[-2:] == ["logits", "probs"]
    assert any("_add" in n for n in names) == residual
    probs = net.predict(_images(2), verbose=0)
    assert probs.shape == (2, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("norm", ["image", "channel"])
def test_input_standardization_cancels_brightness_and_contrast(norm):
    import keras
    keras.utils.set_random_seed(0)  # initial weights fixed: the result must not hang on earlier tests' draws
    spec = network.make_spec({**TINY, "backbone_options": {**TINY["backbone_options"], "input_norm": norm}})
    net = network.build(spec, "none")
    x = _images(2) * 0.5 + 40  # pixels in 40-168
    scale = np.array([1.4, 0.8, 1.2] if norm == "channel" else [1.4], np.float32)
    shifted = x * scale - 30  # contrast x scale, brightness -30: still within 0-255
    np.testing.assert_allclose(net.predict(shifted, verbose=0), net.predict(x, verbose=0), atol=1e-4)
    plain = network.build(network.make_spec(TINY), "none")
    assert "standardize" in [layer.name for layer in net.layers]
    assert "standardize" not in [layer.name for layer in plain.layers]


def test_every_backbone_name_maps_to_a_keras_application():
    import keras

    table = network.shipped_model_module().BACKBONES
    own = network.shipped_model_module().LITE_CONSTRUCTOR  # model.py's EfficientNet-Lite
    for name, (constructor, _) in table.items():
        assert constructor in (None, own) or hasattr(keras.applications, constructor), name
    wanted = {f"efficientnetb{i}" for i in range(8)} | {"efficientnetv2b0", "efficientnetv2s", "efficientnetv2l",
                                                         "mobilenetv2", "resnet50", "resnet101", "convnext_tiny",
                                                         "convnext_xlarge", "small_cnn", "efficientnet_lite0",
                                                         "efficientnet_lite1", "efficientnet_lite2"}
    assert wanted <= set(table)


def test_backbone_weights_options(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "before"))
    assert pretrained.resolve_backbone_weights("none", "mobilenetv2") is None
    assert pretrained.resolve_backbone_weights(None, "mobilenetv2") is None
    # imagenet is passed to keras.applications (its download-and-cache code); the cache
    # folder is set, nothing is downloaded here.
    assert pretrained.resolve_backbone_weights("imagenet", "mobilenetv2", tmp_path / "cache") == "imagenet"
    from keras.src.backend import config as keras_config
    assert Path(keras_config.keras_home()) == (tmp_path / "cache").resolve()
    weights_file = tmp_path / "backbone.h5"
    weights_file.write_bytes(b"x")
    assert pretrained.resolve_backbone_weights(str(weights_file), "resnet50") == str(weights_file)
    with pytest.raises(UserError, match="model.weights"):
        pretrained.resolve_backbone_weights(str(tmp_path / "missing.h5"), "resnet50")
    with pytest.raises(UserError, match="small_cnn"):
        pretrained.resolve_backbone_weights("imagenet", "small_cnn")


def test_backbone_weights_from_a_file_are_loaded(tmp_path):
    import keras

    spec = network.make_spec({"backbone": "mobilenetv2", "backbone_options": {}, "head": {"dense_units": 8}})
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    for var in reference.trainable_variables[:3]:
        var.assign(np.full(var.shape, 0.123, np.float32))
    path = tmp_path / "mobilenet.weights.h5"
    reference.save_weights(str(path))
    net = network.build(spec, str(path))
    backbone = [layer for layer in net.layers if isinstance(layer, keras.Model)][0]
    np.testing.assert_allclose(backbone.trainable_variables[0].numpy(), 0.123)


def test_freeze_and_unfreeze_top_layers_keep_batchnorm_frozen():
    import keras

    spec = network.make_spec({"backbone": "mobilenetv2", "head": {"dense_units": 8}})
    net = network.build(spec, "none")
    network.freeze_backbone(net)
    head_vars = {v.path for v in net.trainable_variables}
    assert head_vars and all(not p.startswith("mobilenet") for p in head_vars)
    count = network.unfreeze_top(net, 20, freeze_batchnorm=True)
    layers = network.backbone_layers(net)
    assert 0 < count <= 20
    assert not any(layer.trainable for layer in layers[:-20])
    top = layers[-20:]
    assert all(not layer.trainable for layer in top if isinstance(layer, keras.layers.BatchNormalization))
    assert any(layer.trainable for layer in top if isinstance(layer, keras.layers.Conv2D))
    network.unfreeze_top(net, "all", freeze_batchnorm=False)
    assert all(layer.trainable for layer in network.backbone_layers(net))


def test_freeze_small_cnn():
    net = network.build(network.make_spec(TINY), "none")
    network.freeze_backbone(net)
    assert all(v.path.split("/")[0] in network.HEAD_LAYERS for v in net.trainable_variables)
    network.unfreeze_top(net, "all", freeze_batchnorm=False)
    assert len(net.trainable_variables) > 6


def test_export_is_loadable_by_model_py_and_replaces_atomically(tmp_path, monkeypatch):
    spec = network.make_spec(TINY, name="tiny")
    net = network.build(spec, "none")
    x = _images(3)
    out = tmp_path / "weights" / "tiny"
    network.export(net, spec, out)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.weights.h5"]
    saved = json.loads((out / "model.json").read_text())
    assert saved["weights_file"] == "model.weights.h5" and saved["format"] == "bloodcells-model/2"
    rebuilt = network.shipped_model_module().build_network(saved)
    rebuilt.load_weights(str(out / "model.weights.h5"))
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), net.predict(x, verbose=0), atol=1e-5)

    # The training model's probabilities on the validator's probe images are stored.
    from bloodcells.preflight import probe_images
    reference = np.asarray(saved["reference"]["probs"])
    assert reference.shape == (64, 8) and saved["reference"]["probe_images"] == 64
    np.testing.assert_allclose(reference, net.predict(probe_images(64).astype(np.float32), verbose=0), atol=1e-6)

    # A failing export leaves the previous one intact and no temporary folder behind.
    before = (out / "model.weights.h5").read_bytes()

    def broken(self, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(type(net), "save_weights", broken)
    with pytest.raises(OSError):
        network.export(net, spec, out)
    assert (out / "model.weights.h5").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]


def test_b7_reference_config_builds_and_trains_one_step():
    """The real B7 recipe (weights none here): builds, freezes, and takes one step."""
    from bloodcells import train
    from bloodcells.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "b7_reference.toml")
    assert cfg.model.backbone == "efficientnetb7" and cfg.model.weights == "imagenet"
    spec = network.make_spec(cfg.model, name=cfg.name)
    net = network.build(spec, "none")
    assert net.count_params() > 60e6
    network.freeze_backbone(net)
    net.compile(optimizer=train.make_optimizer(cfg.train, cfg.phase1.lr),
                loss=train.make_loss(cfg.train))
    y = np.eye(8, dtype=np.float32)[[0, 1]]
    before = net.get_layer("logits").get_weights()[0].copy()
    history = net.fit(_images(2), y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, net.get_layer("logits").get_weights()[0])


def test_subsampled_shortcut_equals_a_strided_1x1_convolution():
    """The residual shortcut subsamples then convolves (TF 2.21's oneDNN strided 1x1 conv
    corrupts memory in training); the output must be that of the strided conv."""
    import keras

    x = _images(2)[:, :25, :25, :] / 255.0  # odd side: 'same' padding must agree too
    strided = keras.layers.Conv2D(6, 1, strides=2, padding="same", use_bias=False)
    expected = strided(x)
    plain = keras.layers.Conv2D(6, 1, use_bias=False)
    plain.build((None, 13, 13, 3))
    plain.set_weights(strided.get_weights())
    got = plain(keras.layers.MaxPooling2D(1, strides=2)(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)


def test_residual_cnn_trains_with_onednn_on_small_batches(tmp_path):
    """Regression: with a strided 1x1 conv, this crashed with heap corruption."""
    import os
    import subprocess
    import sys

    script = tmp_path / "train_small.py"
    script.write_text(
        "import numpy as np\n"
        "from bloodcells import network\n"
        "spec = network.make_spec({'backbone': 'small_cnn', 'head': {'dense_units': 8},\n"
        "    'backbone_options': {'widths': [4, 8], 'residual': True, 'stem_stride': 2}})\n"
        "net = network.build(spec, 'none')\n"
        "net.compile(optimizer='adam', loss='categorical_crossentropy')\n"
        "rng = np.random.default_rng(0)\n"
        "for batch in (2, 3, 6):\n"
        "    x = rng.integers(0, 256, (2 * batch + 1, 96, 96, 3)).astype('float32')\n"
        "    y = np.eye(8, dtype='float32')[rng.integers(0, 8, len(x))]\n"
        "    net.fit(x, y, batch_size=batch, epochs=2, verbose=0)\n"
        "print('trained')\n")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(Path(network.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-800:]


def test_export_refuses_a_network_model_py_would_rebuild_differently(tmp_path):
    """The safety net: the export is rebuilt as model.py rebuilds it and must compute what
    the training model computes. Here the spec says ELU where the trained head has ReLU."""
    spec = network.make_spec(TINY, name="tiny")
    net = network.build(spec, "none")
    layer = net.get_layer("logits")
    layer.set_weights([w * 20 for w in layer.get_weights()])
    wrong = {**spec, "head": {**spec["head"], "activation": "elu"}}
    out = tmp_path / "weights" / "tiny"
    with pytest.raises(UserError, match=r"export: the network model.py rebuilds .* max \|dp\| = "):
        network.export(net, wrong, out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def _legacy_export(tmp_path, backbone):
    """A bloodcells-model/1 export (written before the stem fix) of `backbone`."""
    spec = {**network.make_spec({**TINY, "backbone": backbone}, name="old"), "format": "bloodcells-model/1"}
    spec.pop("reference", None)
    folder = tmp_path / backbone
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(spec))
    (folder / "model.weights.h5").write_bytes(b"not read")
    return folder, spec


def test_format_1_exports_load_only_when_their_network_cannot_differ(tmp_path):
    folder, spec = _legacy_export(tmp_path, "small_cnn")
    net = network.build(spec, "none")
    net.save_weights(str(folder / "model.weights.h5"))
    rebuilt, _ = network.load_exported(folder)  # build-independent: loads as before
    x = _images(2)
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), net.predict(x, verbose=0), atol=1e-6)
    folder, spec = _legacy_export(tmp_path, "efficientnetb0")
    with pytest.raises(UserError, match=r"bloodcells-model/1 export of efficientnetb0, .* re-export it"):
        network.read_export(folder)
    with pytest.raises(ValueError, match="re-export"):  # model.py itself, on the server
        network.shipped_model_module().build_network(spec)


def test_fetch_weights_offline_is_one_line_naming_backbone_cache_and_command(tmp_path):
    import os
    import subprocess
    import sys

    # a proxy that refuses connections: the download fails here even on a connected machine
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TF_CPP_MIN_LOG_LEVEL": "3",
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "bloodcells.pretrained", "--backbone", "mobilenetv2",
                             "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "mobilenetv2" in errors[0] and str((tmp_path / "cache").resolve() / "models") in errors[0]
    assert "make fetch-weights BACKBONE=mobilenetv2" in errors[0]


def test_export_holds_the_network_alone_not_the_optimizer_state(tmp_path):
    """A compiled, trained model's save_weights also writes its optimizer's slots (Adam: twice
    the weights again); the shipped file must hold only what model.py loads."""
    import h5py
    import keras

    spec = network.make_spec({"backbone": "small_cnn", "backbone_options": {"widths": [8, 16]},
                             "head": {"dense_units": 16}})
    net = network.build(spec)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    net.fit(_images(4).astype(np.float32), np.eye(8, dtype=np.float32)[[0, 1, 2, 3]], epochs=1, verbose=0)
    folder = network.export(net, spec, tmp_path / "export")
    with h5py.File(folder / "model.weights.h5", "r") as f:
        groups = []
        f.visit(groups.append)
    assert not [g for g in groups if "optimizer" in g], [g for g in groups if "optimizer" in g][:5]
    rebuilt, _ = network.load_exported(folder)
    probe = _images(8).astype(np.float32)
    np.testing.assert_allclose(rebuilt.predict(probe, verbose=0), net.predict(probe, verbose=0), atol=1e-6)


def test_weights_that_do_not_fit_the_network_are_one_line_naming_the_file(tmp_path):
    """Both readers of an export (load_exported, and load_into for model.init_from) say
    which weights file does not fit, instead of Keras's traceback."""
    spec = network.make_spec(TINY, name="tiny")
    folder = network.export(network.build(spec, "none"), spec, tmp_path / "export")
    other = network.build({**spec, "backbone_options": {**spec["backbone_options"], "widths": [8, 8]}}, "none")
    other.save_weights(str(folder / "model.weights.h5"))
    weights = folder / "model.weights.h5"
    with pytest.raises(UserError, match=rf"^{weights}: weights: do not fit the network in model.json \("):
        network.load_exported(folder)
    with pytest.raises(UserError, match=rf"^{weights}: weights: do not fit the network in model.json \("):
        network.load_into(network.build(spec, "none"), network.read_export(folder)[0], folder)


def test_pretrained_lite_exports_and_model_py_rebuilds_it(tmp_path):
    spec = network.make_spec({"backbone": "efficientnet_lite0", "head": {"dense_units": 8}, "weights": "imagenet"},
                            name="lite")
    net = network.build(spec, "imagenet", cache_dir=str(tmp_path / "cache"))
    out = network.export(net, spec, tmp_path / "export")
    written = json.loads((out / "model.json").read_text())
    assert written["backbone"] == "efficientnet_lite0" and written["pretrained"] == "imagenet"
    rebuilt, _ = network.load_exported(out)
    x = np.random.default_rng(0).uniform(0, 255, (4, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), net.predict(x, verbose=0), atol=1e-5)


def test_unfreezing_by_whole_blocks():
    import keras

    net = network.build(network.make_spec({"backbone": "efficientnet_lite0", "head": {"dense_units": 8}}), "none")
    layers = network.backbone_layers(net)
    count = network.unfreeze_top(net, "blocks:2", freeze_batchnorm=True)
    on = [layer for layer in layers if layer.trainable]
    assert {network.layer_block(layer.name) for layer in on} == {"block6d", "block7a", "top"}
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in on)
    assert count == sum(bool(layer.weights) for layer in on)
    network.unfreeze_top(net, "blocks:0", freeze_batchnorm=False)
    assert {network.layer_block(layer.name) for layer in layers if layer.trainable} == {"top"}
