"""bloodcells.shipped, the shipped contract stated once: the repository's model.py loaded by
its path (never another model.py that happens to be importable), and the probe images
every check predicts."""

from __future__ import annotations

import sys

import numpy as np

from bloodcells import shipped


def test_model_py_is_loaded_by_its_path_once(tmp_path, monkeypatch):
    (tmp_path / "model.py").write_text("IMPOSTOR = True\n")  # another model.py first on sys.path
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "_bloodcells_shipped_model", raising=False)
    module = shipped.shipped_model_module()
    assert module.__file__ == str(shipped.MODEL_PY) and shipped.MODEL_PY == shipped.REPO_ROOT / "model.py"
    assert not hasattr(module, "IMPOSTOR") and hasattr(module, "Model") and hasattr(module, "build_network")
    assert shipped.shipped_model_module() is module  # loaded once, then the same module


def test_probe_images_are_deterministic_cell_like_and_a_prefix_of_more():
    images = shipped.probe_images()
    assert images.shape == (shipped.PROBE_IMAGES, 96, 96, 3) and images.dtype == np.uint8
    assert np.array_equal(shipped.probe_images(), images)
    assert np.array_equal(shipped.probe_images(8), images[:8])
    assert not np.array_equal(shipped.probe_images(8, seed=1), images[:8])
    # a dark blob on a light background: the middle is darker than the border
    middle = images[:, 30:66, 30:66].mean(axis=(1, 2, 3))
    border = np.concatenate([images[:, :8], images[:, -8:]], axis=1).mean(axis=(1, 2, 3))
    assert (middle < border).all() and len({img.tobytes() for img in images}) == len(images)
