"""model.py, the file that ships: contract, input checks, streaming, determinism, TTA
views really reaching the network, ensemble and float16 weights (tiny untrained models),
and its EfficientNet-Lite against the layout of the checkpoints its weights come from."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf
import pytest

from bloodcells import network
from bloodcells.submission import stage, write_half_weights
from bloodcells.untrained import export_tiny
from bloodcells.preflight import probe_images
from shipped_folder import load_shipped
from tests.conftest import snapshot


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return [export_tiny(root / "a", seed=0, name="a"), export_tiny(root / "b", seed=1, name="b")]


@pytest.fixture(scope="module")
def shipped(exports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shipped")
    stage([exports[0]], folder)
    return folder


@pytest.fixture(scope="module")
def model(shipped):
    return load_shipped(shipped).Model()


@pytest.fixture(scope="module")
def images():
    noise = np.random.default_rng(3).integers(0, 256, size=(6, 96, 96, 3), dtype=np.uint8)
    return np.concatenate([probe_images(6, seed=1), noise])


def test_no_argument_constructor_finds_its_files_from_another_directory(shipped, tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)  # an empty working directory: model.py must not look here
    before = snapshot(shipped)
    m = load_shipped(shipped).Model()
    labels = m.predict(images)
    assert labels.shape == (len(images),) and labels.dtype == np.int64
    assert set(labels.tolist()) <= set(range(8))
    assert list(tmp_path.iterdir()) == [] and snapshot(shipped) == before


def test_no_spec_is_a_clear_error(tmp_path):
    (tmp_path / "model.py").write_text((Path(__file__).parents[1] / "model.py").read_text())
    with pytest.raises(FileNotFoundError, match="no model spec"):
        load_shipped(tmp_path).Model()


def test_uint8_float_and_list_inputs_agree(model, images):
    p = model.predict_proba(images)
    assert p.shape == (len(images), 8) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(model.predict_proba(images.astype(np.float32)), p)
    np.testing.assert_array_equal(model.predict_proba(images.astype(np.float64)), p)
    np.testing.assert_array_equal(model.predict_proba(list(images)), p)
    np.testing.assert_array_equal(model.predict(images), p.argmax(axis=1))


def test_zero_and_one_image(model, images):
    assert model.predict(images[:0]).shape == (0,) and model.predict(images[:0]).dtype == np.int64
    assert model.predict_proba(images[:0]).shape == (0, 8)
    one = model.predict(images[:1])
    assert one.shape == (1,) and one.dtype == np.int64
    np.testing.assert_allclose(model.predict_proba(images[:1]), model.predict_proba(images)[:1], atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((96, 96, 3), np.uint8), r"pass X\[None\]"),
    (np.zeros((2, 96, 96), np.uint8), "shape"),
    (np.zeros((2, 64, 64, 3), np.uint8), "shape"),
    (np.zeros((2, 3, 96, 96), np.uint8), "shape"),
    (np.zeros((2, 96, 96, 3), bool), "dtype"),
    (np.full((2, 96, 96, 3), "a"), "dtype"),
])
def test_wrong_shape_or_dtype_is_a_clear_error(model, bad, message):
    with pytest.raises(ValueError, match=message):
        model.predict(bad)


def test_nan_inf_and_far_out_of_range_pixels_are_clear_errors(model, images):
    x = images.astype(np.float32)
    x[3, 5, 5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN.*image 3"):
        model.predict(x)
    x[3, 5, 5, 1] = np.inf
    with pytest.raises(ValueError, match="infinite.*image 3"):
        model.predict(x)
    with pytest.raises(ValueError, match="0-255"):
        model.predict(images.astype(np.float32) * 4)
    with pytest.raises(ValueError, match="0-255"):  # [-1, 1] is not 0-1
        model.predict(images.astype(np.float32) / 127.5 - 1)


def test_nan_is_found_in_a_later_chunk(shipped, images, monkeypatch):
    module = load_shipped(shipped)
    monkeypatch.setattr(module, "CHECK_CHUNK", 5)
    x = images.astype(np.float64)
    x[11, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match="image 11"):
        module.Model().predict(x)


def test_unit_floats_are_scaled_and_slight_overshoot_is_clipped(model, images):
    p = model.predict_proba(images)
    np.testing.assert_allclose(model.predict_proba(images.astype(np.float32) / 255.0), p, atol=1e-5)
    np.testing.assert_allclose(model.predict_proba(images / 255.0), p, atol=1e-5)  # float64
    over = images.astype(np.float32)
    over[images == 0] = -3.0  # e.g. resampling overshoot
    over[images == 255] = 258.5
    over[0, 0, 0, :] = [-20.0, 270.0, 128.0]
    clipped = np.clip(over, 0, 255)
    assert not np.array_equal(over, clipped)
    np.testing.assert_array_equal(model.predict_proba(over), model.predict_proba(clipped))
    unit_over = clipped / 255.0
    unit_over[0, 0, 0, :] = [-0.05, 1.05, 0.5]
    np.testing.assert_allclose(model.predict_proba(unit_over), model.predict_proba(np.clip(unit_over, 0, 1) * 255),
                               atol=1e-5)
    # integers are never rescaled, even when all of X is 0 or 1
    dark = np.ones_like(images)
    np.testing.assert_array_equal(model.predict_proba(dark), model.predict_proba(dark.astype(np.int16)))
    np.testing.assert_array_equal(model.predict_proba(dark.astype(np.float32)), model.predict_proba(dark * 255))


def test_pixel_scale_decides_on_the_whole_x_not_per_batch(shipped):
    module = load_shipped(shipped)
    x = np.zeros((3, 96, 96, 3), np.float32)
    x[2] = 200.0  # the first images alone would look like 0-1
    assert module.pixel_scale(x) == 1.0
    assert module.pixel_scale(x / 255.0) == 255.0
    assert module.pixel_scale(x.astype(np.uint8)) == 1.0
    assert module.pixel_scale(x.astype(np.int16) - 4) == 1.0


def test_large_n_streams_in_fixed_batches_without_retracing(shipped, images):
    m = load_shipped(shipped).Model()
    m.batch_size = 40  # 10 views -> 4 images per compiled call
    calls = []
    forward = m._forward

    def counting(x, scale):
        calls.append(int(x.shape[0]))
        return forward(x, scale)

    m._forward = counting
    big = np.concatenate([images] * 3)  # 36 images -> 9 calls
    p = m.predict_proba(big)
    assert calls == [4] * 9
    np.testing.assert_allclose(p, np.concatenate([m.predict_proba(images)] * 3), atol=1e-5)
    calls.clear()
    m.predict_proba(np.concatenate([images, images[:2]]))  # 14 images -> 4 calls, none short
    assert calls == [3, 4, 3, 4]
    m.predict_proba(images[:3].astype(np.float32) / 255)  # another batch size and pixel scale
    assert forward.experimental_get_tracing_count() == 1


def test_batch_bounds_are_even(shipped):
    module = load_shipped(shipped)
    assert module.batch_bounds(0, 12) == []
    assert module.batch_bounds(64, 12) == [(0, 10), (10, 21), (21, 32), (32, 42), (42, 53), (53, 64)]
    for n, k in [(1, 12), (37, 4), (20000, 12), (5, 1)]:
        b = module.batch_bounds(n, k)
        sizes = [stop - start for start, stop in b]
        assert b[0][0] == 0 and b[-1][1] == n and all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
        assert max(sizes) <= k and max(sizes) - min(sizes) <= 1 and len(b) == -(-n // k)


def test_same_input_same_output_across_instances(shipped, model, images):
    p = model.predict_proba(images)
    np.testing.assert_array_equal(model.predict_proba(images), p)
    np.testing.assert_array_equal(load_shipped(shipped).Model().predict_proba(images), p)


def _view_numpy(x, v, max_shift):
    """The documented view transform, written independently of model.py's TF version."""
    if v["flip"]:
        x = x[:, :, ::-1]
    x = np.rot90(x, v["rot"], axes=(1, 2))
    if v["dx"] or v["dy"]:
        s = max_shift
        padded = np.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode="reflect")
        x = padded[:, s - v["dy"]:s - v["dy"] + 96, s - v["dx"]:s - v["dx"] + 96]
    if v["contrast"] != 1.0 or v["brightness"] != 0.0:
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = np.clip((x - mean) * v["contrast"] + mean + v["brightness"], 0, 255)
    return np.ascontiguousarray(x, dtype=np.float32)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("mode, views", [("random", 10), ("dihedral", 8)])
def test_every_view_reaches_the_network_and_merges_as_documented(exports, tmp_path, images, mode, views):
    def staged(name, **tta):
        stage([exports[0]], tmp_path / name, **tta)
        return load_shipped(tmp_path / name)

    module = staged("one", tta=1)
    p1 = module.Model().predict_proba(images)
    m = staged("many", tta=views, tta_mode=mode).Model()
    assert m.members[0]["tta"] == {"views": views, "mode": mode, "merge": "softmax_mean_logits"}
    pn = m.predict_proba(images)
    assert np.abs(pn - p1).max() > 1e-3, "TTA views changed nothing: they do not reach the network"

    net = m.members[0]["network"]  # the logits of the same weights, called view by view
    x = images.astype(np.float64)
    plan = module.tta_plan(views, mode)
    logits = np.stack([np.asarray(net(_view_numpy(x, v, module.MAX_SHIFT), training=False)) for v in plan])
    np.testing.assert_allclose(_softmax(logits[0]), p1, atol=1e-5)
    np.testing.assert_allclose(_softmax(logits.mean(axis=0)), pn, atol=1e-5)

    mean = staged("mean", tta=views, tta_mode=mode, tta_merge="mean_probs").Model()
    np.testing.assert_allclose(_softmax(logits).mean(axis=0), mean.predict_proba(images), atol=1e-5)


@pytest.mark.parametrize("n", [1, 5])
def test_stacked_views_are_the_documented_views(shipped, images, n):
    """model.py builds all views in one compiled gather; each must equal the view as
    written out in numpy (flip, quarter turn, reflected shift, contrast, brightness)."""
    module = load_shipped(shipped)
    plan = module.tta_plan(10)
    x = images[:n].astype(np.float32)
    stacked = module._views_function(plan, 96)(tf.constant(x)).numpy().reshape(len(plan), n, 96, 96, 3)
    for got, view in zip(stacked, plan):
        np.testing.assert_allclose(got, _view_numpy(x.astype(np.float64), view, module.MAX_SHIFT), atol=1e-3)


def test_compiled_views_change_no_label_on_real_images(shipped, pbc_path):
    """The compiled gather against the views applied op by op (`_apply_view`, the definition),
    both through the same network: the same labels on a fixed set of real PBC images."""
    module = load_shipped(shipped)
    with np.load(pbc_path) as f:
        x = tf.constant(f["val_images"][:64].astype(np.float32))
    plan = module.tta_plan(10)
    net = module.Model().members[0]["network"]
    one_by_one = tf.concat([module._apply_view(x, view) for view in plan], axis=0)
    compiled = module._views_function(plan, 96)(x)
    logits = [np.asarray(net(v, training=False)).reshape(len(plan), 64, -1).mean(axis=0) for v in (one_by_one, compiled)]
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-4)
    assert (logits[1].argmax(axis=1) == logits[0].argmax(axis=1)).all()


def test_view_plan_is_fixed_label_preserving_and_a_prefix(shipped):
    module = load_shipped(shipped)
    plan = module.tta_plan(10)
    assert plan == module.tta_plan(10) and plan[:4] == module.tta_plan(4)
    assert plan[0] == dict(flip=False, rot=0, dx=0, dy=0, contrast=1.0, brightness=0.0)
    assert {(v["flip"], v["rot"]) for v in plan[:8]} == {(f, r) for f in (False, True) for r in range(4)}
    assert all(abs(v["dx"]) <= module.MAX_SHIFT and abs(v["dy"]) <= module.MAX_SHIFT for v in plan)
    assert all(0.9 <= v["contrast"] <= 1.1 and abs(v["brightness"]) <= 12 for v in plan)
    dihedral = module.tta_plan(8, "dihedral")
    assert len({(v["flip"], v["rot"]) for v in dihedral}) == 8 and all(v["dx"] == v["dy"] == 0 for v in dihedral)
    for bad in [dict(views=0), dict(views=9, mode="dihedral"), dict(views=4, mode="spin")]:
        with pytest.raises(ValueError):
            module.tta_plan(**bad)


def test_tta_comes_from_the_json_only(exports, tmp_path, monkeypatch):
    stage([exports[0]], tmp_path, tta=3, tta_mode="random", tta_merge="mean_probs")
    module = load_shipped(tmp_path)
    assert module.Model().members[0]["tta"] == {"views": 3, "mode": "random", "merge": "mean_probs"}
    # the former overrides (environment variables, class attributes, set_tta) are gone
    monkeypatch.setenv("BLOODCELLS_TTA_VIEWS", "1")
    monkeypatch.setenv("BLOODCELLS_TTA_MERGE", "softmax_mean_logits")
    monkeypatch.setattr(module.Model, "views", 5, raising=False)
    m = module.Model()
    assert m.members[0]["tta"] == {"views": 3, "mode": "random", "merge": "mean_probs"}
    assert not hasattr(m, "set_tta")
    spec_file = tmp_path / "a.json"
    spec = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps(dict(spec, tta=dict(spec["tta"], merge="vote"))))
    with pytest.raises(ValueError, match="a.json: TTA merge"):
        module.Model()


def test_ensemble_averages_the_members_probabilities(exports, tmp_path, images):
    singles = []
    for i, export in enumerate(exports):
        stage([export], tmp_path / f"single{i}", tta=2)
        singles.append(load_shipped(tmp_path / f"single{i}").Model().predict_proba(images))
    assert np.abs(singles[0] - singles[1]).max() > 1e-3  # really two different models
    stage(exports, tmp_path / "both", tta=2)
    both = load_shipped(tmp_path / "both").Model()
    assert [m["name"] for m in both.members] == ["a", "b"]
    np.testing.assert_allclose(both.predict_proba(images), (singles[0] + singles[1]) / 2, atol=1e-5)


def test_float16_weights_load_as_float32(exports, shipped, tmp_path, images):
    stage([exports[0]], tmp_path, half=True)
    with h5py.File(tmp_path / "a.weights.h5") as f:
        dtypes = set()
        f.visititems(lambda name, item: dtypes.add(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {np.dtype(np.float16)}
    half = load_shipped(tmp_path).Model()
    assert {v.dtype for v in half.members[0]["network"].weights} == {"float32"}
    full = load_shipped(shipped).Model()
    np.testing.assert_allclose(half.predict_proba(images), full.predict_proba(images), atol=1e-3)
    with pytest.raises(AssertionError):  # and the weights really are rounded
        np.testing.assert_array_equal(half.predict_proba(images), full.predict_proba(images))


def test_write_half_weights_keeps_every_array(exports, tmp_path):
    src = exports[0] / "model.weights.h5"
    write_half_weights(src, tmp_path / "half.weights.h5")
    with h5py.File(src) as a, h5py.File(tmp_path / "half.weights.h5") as b:
        names = []
        a.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        assert names
        for name in names:
            np.testing.assert_allclose(b[name][()].astype(np.float32), a[name][()], rtol=1e-3, atol=1e-4)


def test_a_member_that_cannot_be_read_is_an_error_not_a_smaller_ensemble(exports, tmp_path):
    stage(exports, tmp_path / "both", tta=1)
    assert len(load_shipped(tmp_path / "both").Model().members) == 2
    for name, damage, message in [
            ("truncated", lambda p: p.write_text(p.read_text()[:40]), r"b.json next to model.py: not valid JSON"),
            ("no_format", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "format": "x"})),
             r"b.json next to model.py: format 'x'; expected 'bloodcells-model/2'")]:
        folder = tmp_path / name
        stage(exports, folder, tta=1)
        damage(folder / "b.json")
        with pytest.raises(ValueError, match=message):
            load_shipped(folder).Model()


def test_the_manifest_decides_the_members(exports, tmp_path):
    folder = tmp_path / "both"
    stage(exports, folder, tta=1)
    (folder / "b.json").unlink()
    (folder / "b.weights.h5").unlink()
    with pytest.raises(ValueError, match=r"manifest.json next to model.py: members \['a', 'b'\]; found \['a'\] \(missing b\)"):
        load_shipped(folder).Model()
    (folder / "manifest.json").unlink()  # a hand-made folder without a manifest: whatever members are there
    assert [m["name"] for m in load_shipped(folder).Model().members] == ["a"]


# -- EfficientNet-Lite in model.py (its ImageNet weights: tests/test_lite_weights.py) --------

@pytest.mark.parametrize("backbone, blocks, head_in", [("efficientnet_lite0", 16, 320),
                                                       ("efficientnet_lite1", 21, 320),
                                                       ("efficientnet_lite2", 21, 352)])
def test_lite_architectures_match_their_checkpoints_layout(backbone, blocks, head_in):
    # blocks and head widths as in the registry's checkpoints (their _blocks.N and _conv_head)
    net = network.shipped_model_module().efficientnet_lite(backbone, (96, 96, 3))
    assert sum(layer.name.endswith("_dwconv") for layer in net.layers) == blocks
    assert net.get_layer("top_conv").kernel.shape == (1, 1, head_in, 1280)
    assert not any("se_" in layer.name for layer in net.layers)
