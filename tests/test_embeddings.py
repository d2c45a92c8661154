"""bloodcells.embeddings: what the cleaning compares images by; the fixed descriptor and
the stain blob counts, and a network's pooled features instead (an exported model or an
ImageNet backbone, also through the clean command's --embedding)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bloodcells import embeddings
from bloodcells.cleaning import DEFAULT_NEAR_THRESHOLD
from bloodcells.cli import UserError
from cells import cell_images, edge_shift
from clean_helpers import run


def test_embedding_from_an_exported_model_and_a_backbone(tmp_path, monkeypatch):
    keras = pytest.importorskip("keras")
    from bloodcells import network
    model_py = network.shipped_model_module()
    spec = {"format": "bloodcells-model/1", "name": "tiny", "weights_file": "model.weights.h5",
            "backbone": "small_cnn", "backbone_options": {"widths": [4, 8], "convs_per_block": 1},
            "input_size": 96, "resize_to": None, "num_classes": 8,
            "head": {"dense_units": 8, "dropout": 0.0, "bn_momentum": 0.9, "activation": "relu"}}
    folder = tmp_path / "tiny"
    folder.mkdir()
    model_py.build_network(spec).save_weights(folder / "model.weights.h5")
    (folder / "model.json").write_text(json.dumps(spec))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 96, 96, 3), dtype=np.uint8)
    embedder = embeddings.gap_embedder(str(folder))
    feats = embeddings.network_embeddings(images, embedder)
    assert feats.shape == (30, 8)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, rtol=1e-4)
    np.savez(tmp_path / "set.npz", images=images, labels=np.arange(30) % 8)
    assert run([tmp_path / "set.npz", "--out", tmp_path / "c.npz", "--report", tmp_path / "rep",
                "--embedding", folder, "--contamination", "0"]) == 0
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["settings"]["embedding"] == str(folder)

    # An ImageNet backbone: built untrained here (no network for the weight download)...
    backbone = embeddings.gap_embedder("mobilenetv2", backbone_weights=None)
    assert backbone(images[:2].astype(np.float32)).shape == (2, 1280)

    # ...and a failed download becomes one line naming the option.
    def offline(*args, **kwargs):
        raise OSError("URL fetch failure on https://storage.googleapis.com/...: no network")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(UserError, match=r"--embedding: mobilenetv2: could not load imagenet weights") as exc:
        embeddings.gap_embedder("mobilenetv2")
    assert "\n" not in str(exc.value)


def textured_cells(n: int, seed: int = 0) -> np.ndarray:
    """Stained discs with a coarse texture of their own on a noisy pink background: every
    cell looks different inside, as real ones do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    out = np.empty((n, 96, 96, 3), np.uint8)
    for i in range(n):
        img = np.array([235.0, 200.0, 190.0]) + rng.normal(0, 6, (96, 96, 3))
        cy, cx, r = rng.uniform(35, 60), rng.uniform(35, 60), rng.uniform(18, 25)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        texture = np.repeat(np.repeat(rng.uniform(-50, 50, (16, 16, 1)), 6, axis=0), 6, axis=1)
        img[disc] = (np.array([110.0, 60.0, 160.0]) + texture)[disc]
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def test_descriptor_keeps_shifted_copies_above_the_threshold_and_distinct_cells_below():
    """The documented promise: a copy shifted by a pixel or two (the sampling grid follows
    the stain) lands above the near-duplicate threshold, distinct cells stay below."""
    cells = textured_cells(30)
    original = embeddings.descriptor_embeddings(cells)
    assert original.shape == (30, 768) and original.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(original, axis=1), 1, rtol=1e-5)
    for dy, dx in ((1, 0), (2, -1), (-2, 2)):
        moved = embeddings.descriptor_embeddings(np.stack([edge_shift(c, dy, dx) for c in cells]))
        assert (np.sum(original * moved, axis=1) >= DEFAULT_NEAR_THRESHOLD).all(), (dy, dx)
    others = original @ original.T
    np.fill_diagonal(others, -1)
    assert others.max() < DEFAULT_NEAR_THRESHOLD


def test_descriptor_rows_do_not_depend_on_batching_or_selection_and_fill_the_blobs():
    images = cell_images(20, seed=2)
    whole = embeddings.descriptor_embeddings(images)
    np.testing.assert_allclose(embeddings.descriptor_embeddings(images, batch=7), whole, atol=1e-6)
    index = np.array([5, 3, 17])
    np.testing.assert_allclose(embeddings.descriptor_embeddings(images, index=index), whole[index], atol=1e-6)
    blobs = np.zeros((20, 3), np.float32)
    embeddings.descriptor_embeddings(images, blobs=blobs)
    np.testing.assert_array_equal(blobs, embeddings.stain_blobs(images))


def test_stain_blobs_count_the_cells_in_an_image():
    """One stained disc is one blob (no second largest); two discs are two, the second
    one's area counted: the outlier forest's sign of a multi-cell image."""
    one = cell_images(3, seed=1)
    two = np.empty_like(one)
    yy, xx = np.mgrid[:96, :96]
    for k, picture in enumerate(two):
        picture[:] = [235, 200, 190]
        for cy, cx in ((25, 25 + k), (70, 68)):
            picture[(yy - cy) ** 2 + (xx - cx) ** 2 < 14 ** 2] = [90, 50, 140]
    single, double = embeddings.stain_blobs(one), embeddings.stain_blobs(two)
    assert single[:, 0].tolist() == [1, 1, 1] and (single[:, 1] == 0).all()
    assert double[:, 0].tolist() == [2, 2, 2] and (double[:, 1] > 0).all()
    assert (double[:, 2] > double[:, 1]).all()  # the total covers both discs
