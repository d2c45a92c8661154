"""What the cleaning compares images by (bloodcells.cleaning): unit-norm embeddings for
near-duplicates, and the few features the outlier forest sees.

  * `descriptor_embeddings`: a fixed descriptor needing no weights, a blurred colour
    image sampled on a 16x16 grid centred on the stained cell, so that a copy shifted
    by a pixel or two, or with mild noise, lands above the near-duplicate threshold
    while distinct cells stay below (bench/RESULTS.md, "Cleaning"). Images with two
    similar stain blobs (mostly platelets) are its blind spot: the centre may land on
    the other blob;
  * `gap_embedder` / `network_embeddings`: a network's pooled features instead;
  * `stain_blobs` and `outlier_features`: stain blob statistics (multi-cell images have
    two or more) and the outlier forest's inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import IMAGE_SIZE, NUM_CLASSES
from .cli import Progress, UserError

def descriptor_embeddings(images: np.ndarray, progress: Progress | None = None,
                          batch: int = 1024, blobs: np.ndarray | None = None,
                          index: np.ndarray | None = None) -> np.ndarray:
    """Fixed descriptor, (N, 768) float32, unit norm, no weights needed.

    Half resolution, Gaussian blur (1.5 px at 48x48), then 16x16 colour samples 4 px apart
    (full resolution) around the stained cell's centre. The centre is found by a few
    mean-shift steps on the purple stain (blue minus green above the image's 75th
    percentile), so it moves with the content: a copy shifted by 1-2 px samples the same
    points. Samples are centred on their mean before normalising; without that every
    pair of smears is near 1.0. When `blobs` (N, 3) is given it is filled with
    `stain_blobs` from the same half-resolution pass. `index` picks rows of `images`
    batch by batch (no copy of the whole selection)."""
    n = len(images) if index is None else len(index)
    out = np.empty((n, 16 * 16 * 3), dtype=np.float32)
    for start in range(0, n, batch):
        rows = slice(start, start + batch) if index is None else index[start:start + batch]
        out[start:start + batch] = _descriptor_batch(
            images[rows], blobs=None if blobs is None else blobs[start:start + batch])
        if progress:
            progress.update(min(batch, n - start))
    return out


def _half_blurred(images: np.ndarray, sigma: float = 1.5):
    """Half resolution (2x2 means, summed in uint16: much faster than a float mean over
    two axes), Gaussian-blurred; and the stain map (blue minus green) with its floor,
    the image's 75th percentile. Shared by the descriptor and the blob statistics."""
    from scipy import ndimage

    n = len(images)
    total = images[:, 0::2, 0::2].astype(np.uint16)
    total += images[:, 1::2, 0::2]
    total += images[:, 0::2, 1::2]
    total += images[:, 1::2, 1::2]
    x = ndimage.gaussian_filter(total.astype(np.float32) * 0.25, (0, sigma, sigma, 0))
    stain = x[..., 2] - x[..., 1]
    flat = stain.reshape(n, -1)
    k = int(0.75 * flat.shape[1])
    floor = np.partition(flat, k, axis=1)[:, k]
    return x, stain, floor


def _descriptor_batch(images: np.ndarray, grid: int = 16, step: float = 2.0, sigma: float = 1.5,
                      window: float = 8.0, iterations: int = 10, blobs=None) -> np.ndarray:
    n = len(images)
    side = IMAGE_SIZE // 2
    x, stain, floor = _half_blurred(images, sigma)
    if blobs is not None:
        blobs[:] = _blob_stats(stain, floor)
    weight = np.maximum(stain - floor[:, None, None], 0.0) ** 2
    ramp = np.arange(side, dtype=np.float32)
    # Weighted centroids from the row and column marginals of weight x window; the window
    # is separable (gy outer gx), so it never has to be formed.
    rows_w, cols_w = weight.sum(axis=2), weight.sum(axis=1)
    cy = np.full(n, (side - 1) / 2, np.float32)
    cx = cy.copy()
    for it in range(iterations + 1):
        if it:  # Gaussian window around the current centre (mean-shift step)
            gy = np.exp(-(ramp - cy[:, None]) ** 2 / (2 * window ** 2)).astype(np.float32)
            gx = np.exp(-(ramp - cx[:, None]) ** 2 / (2 * window ** 2)).astype(np.float32)
            rows_w = gy * np.matmul(weight, gx[:, :, None])[:, :, 0]
            cols_w = gx * np.matmul(gy[:, None, :], weight)[:, 0, :]
        total = rows_w.sum(axis=1)
        ok = total > 1e-6
        safe = np.maximum(total, 1e-12)
        cy = np.where(ok, rows_w @ ramp / safe, cy).astype(np.float32)
        cx = np.where(ok, cols_w @ ramp / safe, cx).astype(np.float32)
    offsets = (np.arange(grid, dtype=np.float32) - (grid - 1) / 2) * step
    py = np.clip(cy[:, None] + offsets, 0, side - 1)
    px = np.clip(cx[:, None] + offsets, 0, side - 1)
    y0 = np.minimum(np.floor(py).astype(np.int64), side - 2)
    x0 = np.minimum(np.floor(px).astype(np.int64), side - 2)
    fy = (py - y0)[:, :, None, None]
    fx = (px - x0)[:, None, :, None]
    rows = np.arange(n)[:, None, None]

    def at(yi, xi):
        return x[rows, yi[:, :, None], xi[:, None, :]]

    v = (at(y0, x0) * (1 - fy) * (1 - fx) + at(y0, x0 + 1) * (1 - fy) * fx
         + at(y0 + 1, x0) * fy * (1 - fx) + at(y0 + 1, x0 + 1) * fy * fx)
    v = v.reshape(n, -1)
    v -= v.mean(axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-8
    return v.astype(np.float32)


def gap_embedder(source: str, backbone_weights: str | None = "imagenet"):
    """A Keras model mapping 0-255 images to the network's GAP features.

    `source` is an exported model folder (contract 1: model.json + weights) or a backbone
    name from model.BACKBONES (ImageNet weights via keras.applications; `backbone_weights`
    may be None to build it untrained, e.g. in tests)."""
    import keras

    from . import network

    model_py = network.shipped_model_module()
    if Path(source).is_dir():
        net, _ = network.load_exported(source)
    else:
        name = source.lower()
        if name not in model_py.BACKBONES or model_py.BACKBONES[name][0] is None:
            choices = sorted(k for k, v in model_py.BACKBONES.items() if v[0])
            raise UserError(f"--embedding: '{source}' is neither a folder nor a pretrained backbone; "
                            f"expected 'descriptor', an exported model folder, or one of {', '.join(choices)}")
        spec = {"backbone": name, "input_size": IMAGE_SIZE, "num_classes": NUM_CLASSES}
        try:
            net = network.build(spec, weights=backbone_weights)
        except UserError:
            raise
        except Exception as exc:  # no network: the weight download fails
            raise UserError(f"--embedding: {source}: could not load {backbone_weights} weights "
                            f"({' '.join(str(exc).split())[:160]}); expected them in the Keras cache "
                            f"(~/.keras/models) or network access") from None
    return keras.Model(net.input, net.get_layer("gap").output)


def network_embeddings(images: np.ndarray, embedder, progress: Progress | None = None,
                       batch: int = 64) -> np.ndarray:
    """GAP features, centred on their mean over the set and L2-normalised: ReLU features are
    all positive, so without centring every pair is close to 1."""
    feats = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].astype(np.float32)
        feats.append(np.asarray(embedder(chunk, training=False), dtype=np.float32))
        if progress:
            progress.update(len(chunk))
    feats = np.concatenate(feats).reshape(len(images), -1)
    feats -= feats.mean(axis=0, keepdims=True)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-8
    return feats




def outlier_features(embeddings: np.ndarray, images: np.ndarray, components: int = 4,
                     seed: int = 0, blobs: np.ndarray | None = None,
                     index: np.ndarray | None = None) -> np.ndarray:
    """What the IsolationForest sees, each column z-scored: the embeddings' first principal
    components, the mean colour (the descriptor is centred, so colour lives here) and stain
    blob statistics (number of large stain blobs, area of the second largest, total stain
    area): multi-cell images, the reference's typical outlier, have two or more blobs.
    Few columns on purpose: the forest splits on a random column, and 32 noisy principal
    components drown the informative ones (measured on the synthetic multi-cell outliers)."""
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    k = max(1, min(components, embeddings.shape[1], len(embeddings) - 1))
    with threadpool_limits(1):  # a small SVD: extra BLAS threads only fight on a shared CPU
        pcs = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit_transform(embeddings)
    index = np.arange(len(images)) if index is None else index  # rows of `images` to use
    colour = np.empty((len(index), 3), dtype=np.float32)
    for start in range(0, len(index), 1024):
        chunk = images[index[start:start + 1024]]
        for c in range(3):  # one contiguous channel at a time: much faster than a strided reduction
            channel = np.ascontiguousarray(chunk[..., c]).reshape(len(chunk), -1)
            colour[start:start + len(chunk), c] = channel.mean(axis=1, dtype=np.float32)
    if blobs is None:
        blobs = np.concatenate([stain_blobs(images[index[i:i + 1024]]) for i in range(0, len(index), 1024)])
    feats = np.concatenate([pcs.astype(np.float32), colour, blobs], axis=1)
    return (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-6)


def stain_blobs(images: np.ndarray, relative: float = 0.5, min_area: int = 15) -> np.ndarray:
    """(N, 3): count of stain blobs of at least `min_area` half-resolution pixels, area of
    the second largest, total area. A blob is a connected region where the stain (blue
    minus green) exceeds the image's 75th percentile by `relative` of its range."""
    _, stain, floor = _half_blurred(images)
    return _blob_stats(stain, floor, relative, min_area)


def _blob_stats(stain, floor, relative: float = 0.5, min_area: int = 15) -> np.ndarray:
    from scipy import ndimage

    n, side = len(stain), stain.shape[1]
    stain = stain.reshape(n, -1)
    top = stain.max(axis=1)
    mask = (stain > (floor + relative * (top - floor))[:, None]).reshape(n, side, side)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # never connect across images
    lab, count = ndimage.label(mask, structure=structure)
    flat = lab.ravel()
    pixels = np.flatnonzero(flat)
    area = np.bincount(flat, minlength=count + 1)
    owner = np.zeros(count + 1, np.int64)
    owner[flat[pixels]] = pixels // (side * side)
    big = np.flatnonzero(area >= min_area)
    big = big[big > 0]
    out = np.zeros((n, 3), np.float32)
    out[:, 0] = np.bincount(owner[big], minlength=n)
    out[:, 2] = mask.reshape(n, -1).sum(axis=1)
    # second largest big blob per image: sort by (image, area) and take the one before the last
    order = np.lexsort((area[big], owner[big]))
    imgs, areas = owner[big][order], area[big][order]
    ends = np.flatnonzero(np.r_[imgs[1:] != imgs[:-1], True])  # each image's largest blob
    prev = ends - 1
    has_second = (prev >= 0) & (imgs[np.maximum(prev, 0)] == imgs[ends])
    out[imgs[ends][has_second], 1] = areas[prev[has_second]]
    return out
