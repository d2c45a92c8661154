"""Figures a person would rather look at than read: image grids, class bars,
confusion matrices, training curves. Every PNG is written atomically."""

from __future__ import annotations

import math

import numpy as np

from . import CLASS_NAMES, NUM_CLASSES
from .files import atomic_path

SHORT_NAMES = ("bas", "eos", "ery", "ig", "lym", "mon", "neu", "plt")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)


def save_image_grid(path, images, titles=None, title: str | None = None, ncols: int = 10,
                    title_colors=None, max_images: int = 100, cell_inches: float = 1.1) -> None:
    """A grid of uint8 images (N, H, W, 3) with optional per-image captions."""
    plt = _pyplot()
    images = np.asarray(images)[:max_images]
    n = len(images)
    ncols = max(1, min(ncols, n or 1))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_inches, nrows * cell_inches + 0.4),
                             dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles is not None:
                color = title_colors[i] if title_colors is not None else "black"
                ax.set_title(str(titles[i]), fontsize=6, color=color, pad=2)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "(none)", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def save_class_bars(path, counts: dict, title: str = "Images per class") -> None:
    """Grouped bars: {series name: per-class counts}, e.g. before/after cleaning."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    width = 0.8 / max(len(counts), 1)
    x = np.arange(NUM_CLASSES)
    for k, (name, values) in enumerate(counts.items()):
        values = np.asarray(values)
        bars = ax.bar(x + (k - (len(counts) - 1) / 2) * width, values, width, label=f"{name} ({values.sum()})")
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x, SHORT_NAMES)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def save_confusion_matrix(path, matrix, title: str = "Confusion matrix", normalize: bool = True) -> None:
    """Rows: true class, columns: predicted. Cells show counts; colour shows row share."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6, 5.2), dpi=100)
    ax.imshow(share if normalize else matrix, cmap="Blues", vmin=0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(NUM_CLASSES), SHORT_NAMES)
    ax.set_yticks(range(NUM_CLASSES), [f"{s} ({int(r)})" for s, r in zip(SHORT_NAMES, rows[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)


def save_curves(path, series: dict, xlabel: str = "epoch", title: str = "Training curves") -> None:
    """One panel per group: {panel title: {line label: values}}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.2), dpi=100, squeeze=False)
    for ax, (panel, lines) in zip(axes[0], series.items()):
        for label, values in lines.items():
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=label)
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def class_caption(label: int) -> str:
    return SHORT_NAMES[int(label)] if 0 <= int(label) < NUM_CLASSES else "?"


__all__ = ["CLASS_NAMES", "SHORT_NAMES", "save_image_grid", "save_class_bars",
           "save_confusion_matrix", "save_curves", "class_caption"]


# -- clean ---------------------------------------------------------------------------------
# Grids with hundreds of captioned tiles (fabricated groups, near-duplicate pairs, outliers):
# drawn with PIL directly, ~50x faster than one matplotlib axes per tile.

def save_tile_grid(path, images, captions=None, title: str | None = None, ncols: int = 10,
                   colors=None, max_images: int = 200, caption_height: int = 14) -> None:
    """uint8 tiles (N, H, W, 3) in rows of `ncols`, each with a one-line caption above it
    (colour per tile, e.g. "green"/"red"), under an optional title (may hold newlines)."""
    from PIL import Image, ImageDraw, ImageFont

    images = np.asarray(images)[:max_images]
    n = len(images)
    h, w = (images.shape[1], images.shape[2]) if n else (96, 96)
    ncols = max(1, min(ncols, n or 1))
    nrows = max(1, math.ceil(n / ncols))
    try:
        font = ImageFont.load_default(size=10)
        title_font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        font = title_font = ImageFont.load_default()
    title_lines = title.splitlines() if title else []
    top = 6 + 17 * len(title_lines)
    pad = 4
    cell_w, cell_h = w + pad, h + caption_height + pad
    title_width = max((title_font.getlength(line) for line in title_lines), default=0)
    width = max(pad + ncols * cell_w, int(title_width) + 2 * pad)
    canvas = Image.new("RGB", (width, top + nrows * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((pad, 3 + 17 * k), line, fill="black", font=title_font)
    for i in range(n):
        r, c = divmod(i, ncols)
        x0, y0 = pad + c * cell_w, top + r * cell_h
        canvas.paste(Image.fromarray(np.ascontiguousarray(images[i])), (x0, y0 + caption_height))
        if captions is not None:
            colour = colors[i] if colors is not None else "black"
            draw.text((x0, y0 + 1), str(captions[i])[:22], fill=colour, font=font)
    if n == 0:
        draw.text((pad, top + 4), "(none)", fill="black", font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def save_group_spread(path, image, counts, title: str) -> None:
    """One picture of an identical-image group beside the spread of its labels over the
    classes: a fabricated group carries every label, a real duplicate one."""
    plt = _pyplot()
    counts = np.asarray(counts)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3), dpi=100, gridspec_kw={"width_ratios": [1, 1.8]})
    left.imshow(image)
    left.axis("off")
    bars = right.bar(np.arange(NUM_CLASSES), counts, color="tab:red")
    right.bar_label(bars, fontsize=7)
    right.set_xticks(np.arange(NUM_CLASSES), SHORT_NAMES)
    right.set_ylabel("copies")
    right.set_title(f"labels of the {int(counts.sum())} copies", fontsize=9)
    fig.suptitle(title, fontsize=10, y=1.04)
    _save(fig, path)


__all__ += ["save_tile_grid", "save_group_spread"]
