"""bloodcells.untrained: the untrained exports the tests and CI build on (`make
server-check-tiny`): a contract-1 export of the CPU recipe's layers in miniature, seeded,
its logits scaled away from uniform probabilities, and its command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bloodcells import network
from bloodcells.shipped import probe_images, shipped_model_module
from bloodcells.untrained import TINY_BACKBONE, export_main, export_tiny, export_untrained


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("untrained") / "tiny", seed=0, name="tiny")


def weights(folder) -> list:
    return network.load_exported(folder)[0].get_weights()


def test_export_tiny_is_a_seeded_contract_1_export(tiny, tmp_path):
    assert sorted(p.name for p in tiny.iterdir()) == ["model.json", "model.weights.h5"]
    spec = json.loads((tiny / "model.json").read_text())
    assert (spec["name"], spec["source_run"], spec["backbone"]) == ("tiny", "untrained", "small_cnn")
    assert spec["backbone_options"] == dict(TINY_BACKBONE, widths=[8, 16]) and spec["head"]["dense_units"] == 16
    again = export_tiny(tmp_path / "again", seed=0, name="tiny")
    assert all(np.array_equal(a, b) for a, b in zip(weights(tiny), weights(again), strict=True))


def test_logit_scale_multiplies_the_last_layer_alone(tiny, tmp_path):
    head = dict(shipped_model_module().DEFAULT_HEAD, dense_units=16)
    plain = export_untrained(tmp_path / "plain", seed=0, name="tiny", head=head,
                             backbone_options=dict(TINY_BACKBONE, widths=[8, 16]))
    scaled_net, plain_net = network.load_exported(tiny)[0], network.load_exported(plain)[0]
    for layer in plain_net.layers:
        factor = 20.0 if layer.name == "logits" else 1.0
        for a, b in zip(scaled_net.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True):
            np.testing.assert_array_equal(a, factor * b)
    x = probe_images(16).astype(np.float32)
    # an untrained network's probabilities are nearly uniform (1/8); scaled, they are not
    assert plain_net.predict(x, verbose=0).max(axis=1).max() < 0.25
    assert scaled_net.predict(x, verbose=0).max(axis=1).mean() > 0.4


def test_the_command_writes_the_export_and_prints_its_folder(tiny, tmp_path, capsys):
    export_main(["--out", str(tmp_path / "cli"), "--name", "cli", "--seed", "2"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    spec = json.loads((tmp_path / "cli" / "model.json").read_text())
    assert spec["name"] == "cli" and spec["backbone_options"] == dict(TINY_BACKBONE, widths=[8, 16])
    assert not np.array_equal(weights(tmp_path / "cli")[0], weights(tiny)[0])  # another seed, other weights
