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
    fig.suptitle(title, fontsize=10, y=1.04)  # above the panel titles, not on them
    _save(fig, path)


def class_caption(label: int) -> str:
    return SHORT_NAMES[int(label)] if 0 <= int(label) < NUM_CLASSES else "?"


__all__ = ["CLASS_NAMES", "SHORT_NAMES", "save_image_grid", "save_class_bars",
           "save_confusion_matrix", "save_curves", "class_caption"]


# -- clean ---------------------------------------------------------------------------------
# Grids with hundreds of captioned tiles (fabricated groups, near-duplicate pairs, outliers):
# drawn with PIL directly: one matplotlib axes per tile is far slower for hundreds of tiles.

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


# -- evaluation ---------------------------------------------------------------------------
# Figures and the HTML page of local_eval.py.

def save_wrong_guesses(path, images, labels, predictions, confidence=None, max_images: int = 60,
                       title: str = "Wrong guesses (t: true, p: predicted)") -> int:
    """Grid of misclassified images captioned with true and predicted class (and the
    model's confidence when known), most confident mistakes first. Returns the count."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    wrong = np.flatnonzero(labels != predictions)
    if confidence is not None:
        wrong = wrong[np.argsort(-np.asarray(confidence)[wrong], kind="stable")]
    shown = wrong[:max_images]
    titles = [f"t {class_caption(labels[i])} p {class_caption(predictions[i])}"
              + (f" {confidence[i]:.2f}" if confidence is not None else "") for i in shown]
    save_image_grid(path, np.asarray(images)[shown], titles=titles, ncols=10,
                    title=f"{title}: {len(wrong)} of {len(labels)}"
                          + (f", {len(shown)} shown" if len(shown) < len(wrong) else ""),
                    title_colors=["crimson"] * len(shown), max_images=max_images)
    return len(wrong)


def save_confidence_plot(path, confidence, correct, title: str = "Predictions sorted by confidence") -> None:
    """Left: every prediction's confidence, sorted, misclassified marked in red (a rug
    of ticks at the bottom), with the accuracy of the k most confident.
    Right: accuracy per confidence bin against the diagonal (calibration)."""
    plt = _pyplot()
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(-confidence, kind="stable")
    rank = np.arange(len(order))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100, gridspec_kw={"width_ratios": [2, 1]})
    ax.plot(rank, confidence[order], color="steelblue", lw=1.5, label="confidence")
    cumulative = np.cumsum(correct[order]) / (rank + 1)
    ax.plot(rank, cumulative, color="seagreen", lw=1, label="accuracy of the k most confident")
    bad = ~correct[order]
    # A rug of red ticks at the bottom: where the mistakes fall in the confidence order.
    ax.vlines(rank[bad], 0, 0.06, color="crimson", lw=0.6, label=f"misclassified ({int(bad.sum())})")
    ax.set_xlabel("predictions, most confident first")
    ax.set_ylabel("max probability / accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    edges = np.linspace(0, 1, 11)
    bins = np.clip(np.digitize(confidence, edges) - 1, 0, 9)
    counts = np.bincount(bins, minlength=10)
    hits = np.bincount(bins, weights=correct.astype(float), minlength=10)
    centres = (edges[:-1] + edges[1:]) / 2
    has = counts > 0
    ax2.bar(centres[has], hits[has] / counts[has], width=0.09, color="steelblue", alpha=0.8)
    for c, n, h in zip(centres[has], counts[has], hits[has]):
        ax2.text(c, h / n + 0.02, str(int(n)), ha="center", fontsize=6)
    ax2.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1.1)
    ax2.set_xlabel("confidence bin (count above bar)")
    ax2.set_ylabel("accuracy")
    fig.suptitle(title, fontsize=10, y=1.04)  # above the panel titles, not on them
    _save(fig, path)


def save_family_accuracy(path, table: dict, title: str = "Accuracy per corruption family and severity",
                         reference: float | None = None) -> None:
    """Heatmap, rows: families, columns: severities 1-5 and 'all'. `table` maps
    family -> {severity (1-5) or 'all': (accuracy, n images)}; missing cells are blank.
    `reference` (e.g. clean accuracy) is drawn in the title for comparison."""
    plt = _pyplot()
    families = list(table)
    columns = [1, 2, 3, 4, 5, "all"]
    values = np.full((len(families), len(columns)), np.nan)
    for r, family in enumerate(families):
        for c, column in enumerate(columns):
            if column in table[family]:
                values[r, c] = table[family][column][0]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(families) + 1.4), dpi=100)
    ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for r, family in enumerate(families):
        for c, column in enumerate(columns):
            if column in table[family]:
                acc, n = table[family][column]
                ax.text(c, r, f"{100 * acc:.0f}" + (f" ({n})" if n < 100 else ""),
                        ha="center", va="center", fontsize=6.5)
    ax.set_xticks(range(len(columns)), [f"sev {c}" if c != "all" else "all" for c in columns])
    ax.set_yticks(range(len(families)), families, fontsize=7)
    ax.set_title(title + (f"\n(clean accuracy {100 * reference:.1f} %; cells: accuracy %, (n) if < 100)"
                          if reference is not None else "\n(cells: accuracy %, (n) if < 100)"), fontsize=9)
    _save(fig, path)


def write_html_report(path, title: str, summary: list[dict], sections: list[dict], notes=()) -> None:
    """One self-explaining page: a summary table (list of {column: value}), then per
    section a heading, figures [(file relative to the page, caption)], optional
    tables ({'caption', 'rows': [dict]}) and preformatted text (e.g. a failure log)."""
    import html

    from .files import write_text_atomic

    def table_html(rows, caption=""):
        if not rows:
            return ""
        columns = list(dict.fromkeys(k for row in rows for k in row))
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell_text(row.get(c), 4))}</td>" for c in columns)
                       + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        return f"<table>{cap}<tr>{head}</tr>{body}</table>"

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}caption{text-align:left;font-weight:bold}"
             "img{max-width:100%;border:1px solid #eee;margin:4px 0}figure{margin:1em 0}"
             "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"
             ".failed{color:#b00}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append(table_html(summary, "Summary"))
    for section in sections:
        parts.append(f"<h2>{html.escape(section['heading'])}</h2>")
        if section.get("text"):
            parts.append(f"<p class='{section.get('class', '')}'>{html.escape(section['text'])}</p>")
        for table in section.get("tables", []):
            parts.append(table_html(table["rows"], table.get("caption", "")))
        for file, caption in section.get("figures", []):
            parts.append(f"<figure><img src='{html.escape(str(file))}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        if section.get("pre"):
            parts.append(f"<pre>{html.escape(section['pre'])}</pre>")
    parts.append("</body></html>\n")
    write_text_atomic(path, "\n".join(parts))


def cell_text(value, digits: int) -> str:
    """A table cell as text: '' for None, a float to `digits` significant digits, anything
    else as str (the HTML report and the leaderboard CSV)."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


def percent(value, decimals: int = 2):
    """A fraction as a percentage rounded to `decimals`, None when there is no value or
    it is not a number (e.g. an empty CSV cell)."""
    try:
        return round(100 * float(value), decimals)
    except (TypeError, ValueError):
        return None


__all__ += ["save_wrong_guesses", "save_confidence_plot", "save_family_accuracy", "write_html_report",
            "cell_text", "percent"]
