"""bloodcells.figures: every figure is a non-empty PNG written atomically (an interrupted
write keeps the old file and leaves no temporary), the tile grid's layout, the HTML
report's escaping and tables, and the cell formats the report and the leaderboard share."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bloodcells import figures

PNG = b"\x89PNG\r\n\x1a\n"


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def test_every_figure_is_a_png_that_opens(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.arange(16) % 8
    predictions = np.where(np.arange(16) < 5, (labels + 1) % 8, labels)
    confidence = rng.uniform(0.3, 1.0, 16)
    matrix = rng.integers(0, 20, (8, 8))
    drawn = {
        "grid": lambda p: figures.save_image_grid(p, images(12), titles=[str(k) for k in range(12)], title="grid"),
        "empty_grid": lambda p: figures.save_image_grid(p, images(0)),
        "bars": lambda p: figures.save_class_bars(p, {"before": np.arange(8), "after": np.arange(8) // 2}),
        "confusion": lambda p: figures.save_confusion_matrix(p, matrix),
        "curves": lambda p: figures.save_curves(p, {"loss": {"train": [1.0, 0.5], "val": [1.1, 0.7]}}),
        "group": lambda p: figures.save_group_spread(p, images(1)[0], np.arange(8), "a group"),
        "confidence": lambda p: figures.save_confidence_plot(p, confidence, predictions == labels),
        "families": lambda p: figures.save_family_accuracy(p, {"blur": {1: (0.9, 40), "all": (0.8, 200)},
                                                               "jpeg": {5: (0.5, 40)}}, reference=0.95),
    }
    for name, draw in drawn.items():
        draw(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG, name
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert min(picture.size) > 50, name
    assert figures.save_wrong_guesses(tmp_path / "wrong.png", images(16), labels, predictions, confidence) == 5
    assert (tmp_path / "wrong.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{n}.png" for n in drawn] + ["wrong.png"])


def test_an_interrupted_figure_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import matplotlib.figure

    path = tmp_path / "confusion.png"
    figures.save_confusion_matrix(path, np.eye(8, dtype=int))
    before = path.read_bytes()

    def killed(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"half a png")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        figures.save_confusion_matrix(path, np.ones((8, 8), dtype=int))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["confusion.png"]


def test_the_tile_grid_places_tiles_in_rows_under_their_captions(tmp_path):
    tiles = images(12)
    figures.save_tile_grid(tmp_path / "tiles.png", tiles, captions=[f"#{k}" for k in range(12)], ncols=10)
    with Image.open(tmp_path / "tiles.png") as picture:
        # 4 px margins, tiles of 96 + 4 px across; 6 px top, rows of 14 (caption) + 96 + 4 px
        assert picture.size == (4 + 10 * 100, 6 + 2 * 114 + 4)
        canvas = np.asarray(picture.convert("RGB"))
    assert np.array_equal(canvas[6 + 14:6 + 14 + 96, 4:100], tiles[0])
    assert np.array_equal(canvas[6 + 114 + 14:6 + 114 + 14 + 96, 104:200], tiles[11])  # second row, second column


def test_the_html_report_escapes_text_and_joins_the_tables_columns(tmp_path):
    path = tmp_path / "report.html"
    figures.write_html_report(path, "Evaluation of <b>a.zip</b>", [{"profile": "none", "accuracy": 0.87654321},
                                                                   {"profile": "server", "n": 24}],
                              [{"heading": "Profile: none", "text": "5 < 6 & so on", "class": "failed",
                                "figures": [("none/confusion.png", "Confusion matrix")], "pre": "Traceback <here>"}],
                              notes=["a note"])
    page = path.read_text()
    assert "<title>Evaluation of &lt;b&gt;a.zip&lt;/b&gt;</title>" in page and "<b>a.zip</b>" not in page
    assert "<tr><th>profile</th><th>accuracy</th><th>n</th></tr>" in page
    assert "<tr><td>none</td><td>0.8765</td><td></td></tr><tr><td>server</td><td></td><td>24</td></tr>" in page
    assert "<p class='failed'>5 &lt; 6 &amp; so on</p>" in page and "<pre>Traceback &lt;here&gt;</pre>" in page
    assert "<img src='none/confusion.png' alt='Confusion matrix'>" in page and "<p>a note</p>" in page


def test_cells_and_percentages():
    assert figures.cell_text(None, 4) == "" and figures.cell_text(0.123456, 3) == "0.123"
    assert figures.cell_text(np.float32(2.5), 4) == "2.5" and figures.cell_text(7, 2) == "7"
    assert figures.percent(0.87654) == 87.65 and figures.percent("0.5", 1) == 50.0
    assert figures.percent("") is None and figures.percent(None) is None
    assert figures.class_caption(3) == "ig" and figures.class_caption(9) == "?"
