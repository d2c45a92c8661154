"""Our corruption families: what each does to one image at each severity (SEVERITIES, 1-5).

Each family is an operation (uint8 HxWx3, severity, rng) -> uint8 HxWx3 with its own
severity table (1 barely visible, 5 strong but the cell still recognisable). Which
families an image gets, in which order, is the profile's business (bloodcells.shift).
Every random choice comes from a generator seeded by (seed, image index, names), so an
image's result never depends on the batch it is in. Pure numpy/PIL/scipy.
"""

from __future__ import annotations

import io
import zlib

import numpy as np

# The severities of every corruption family, ours and the second opinion's: the one place
# they are written (plans draw from them, tables and grids have a column per severity).
SEVERITIES = (1, 2, 3, 4, 5)

# Family -> group, for readers who want the coarse grouping.
FAMILY_GROUPS = {
    "stain": "colour", "hue_saturation": "colour",
    "brightness": "intensity", "contrast": "intensity", "gamma": "intensity",
    "rotate": "geometry", "flip": "geometry", "translate": "geometry", "zoom": "geometry",
    "occlusion": "occlusion",
    "noise": "noise",
    "blur": "blur",
    "jpeg": "jpeg",
    "grayscale": "channel", "channel_mix": "channel", "posterize": "channel", "solarize": "channel",
}
FAMILIES = tuple(FAMILY_GROUPS)

# Per-family severity tables (index = severity - 1). Calibrated by eye on PBC images
# (see the preview grid) and against a plain CNN's accuracy drop.
_STAIN_SCALE = (0.05, 0.10, 0.16, 0.23, 0.30)      # OD concentration x U(1-s, 1+s), per stain
_STAIN_SHIFT = (0.01, 0.02, 0.04, 0.06, 0.08)      # OD concentration + U(-b, b), per stain
_HUE_SHIFT = (0.02, 0.04, 0.07, 0.10, 0.14)        # fraction of the hue circle
_SATURATION = (0.10, 0.20, 0.35, 0.50, 0.70)       # saturation x (1 +- s)
_BRIGHTNESS = (0.10, 0.18, 0.27, 0.36, 0.45)       # brightness x (1 +- s)
_CONTRAST = (0.15, 0.27, 0.40, 0.52, 0.65)         # contrast x (1 +- s)
_GAMMA = (0.15, 0.27, 0.40, 0.55, 0.70)            # gamma = exp(+- s)
_ROTATE = ((5, 15), (15, 30), (30, 60), (60, 120), (120, 180))  # degrees, random sign
_TRANSLATE = (0.04, 0.08, 0.12, 0.16, 0.20)        # shift as a fraction of the side
_ZOOM = (0.08, 0.15, 0.22, 0.30, 0.40)             # scale 1+z (in) or 1/(1+z) (out)
_OCCLUSION = ((1, 12), (1, 20), (2, 20), (2, 26), (3, 28))  # (patches, side px)
_NOISE = (5.0, 9.0, 14.0, 21.0, 30.0)             # Gaussian sigma, in 0-255 units
_BLUR = (0.5, 0.8, 1.1, 1.5, 2.0)                    # Gaussian sigma, px
_JPEG = (60, 40, 25, 15, 8)                        # JPEG quality
_GRAYSCALE = (0.2, 0.4, 0.6, 0.8, 1.0)             # blend towards luminance
_CHANNEL_MIX = (0.2, 0.4, 0.6, 0.8, 1.0)           # blend towards a channel permutation
_POSTERIZE = (6, 5, 4, 3, 2)                       # bits kept
_SOLARIZE = (240, 224, 200, 176, 144)              # invert pixels above this

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, residual) in optical
# density. Giemsa/May-Gruenwald (PBC) stains are also a blue-purple + pink pair, so the
# same two-stain model perturbs them plausibly.
_RGB_FROM_STAIN = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_STAIN = _RGB_FROM_STAIN / np.linalg.norm(_RGB_FROM_STAIN, axis=1, keepdims=True)
_STAIN_FROM_RGB = np.linalg.inv(_RGB_FROM_STAIN)


# -- public API ------------------------------------------------------------------------------

def corrupt(images, family: str, severity: int, seed: int = 0) -> np.ndarray:
    """One corruption family at one severity on every image (per-image randomness:
    direction of a shift, patch places... from (seed, i, family, severity))."""
    images = check_images(images)
    _check_family(family, severity)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        rng = image_rng(seed, i, "corrupt", family, severity)
        out[i] = OPERATIONS[family](img, severity, rng)
    return out


# -- randomness ----------------------------------------------------------------------------

def image_rng(seed: int, i: int, *names) -> np.random.Generator:
    """A generator seeded by (seed, i, names): stable across runs and platforms."""
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(i)]
    words += [zlib.crc32(str(name).encode()) for name in names]
    return np.random.default_rng(words)


def random_severity(rng: np.random.Generator) -> int:
    """A severity drawn uniformly from SEVERITIES (one integer draw from rng)."""
    return int(rng.integers(SEVERITIES[0], SEVERITIES[-1] + 1))


def check_severity(severity) -> None:
    if int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be {SEVERITIES[0]}-{SEVERITIES[-1]}, got {severity}")


def check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def _check_family(family: str, severity: int) -> None:
    if family not in OPERATIONS:
        raise ValueError(f"unknown corruption family '{family}'; expected one of {FAMILIES}")
    check_severity(severity)


# -- the families' operations: (uint8 HxWx3, severity, rng) -> uint8 HxWx3 ----------------------------------

def _to_uint8(x) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _sign(rng) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _combine_channels(x, weights):
    """x[..., :3] @ weights, as elementwise products and sums: a BLAS matmul's rounding
    depends on the CPU and thread count, which made the shifted set differ between
    processes; this is the same in every process."""
    weights = np.asarray(weights, dtype=x.dtype)
    return x[..., 0, None] * weights[0] + x[..., 1, None] * weights[1] + x[..., 2, None] * weights[2]


_LUMA = (0.299, 0.587, 0.114)


def _stain(img, severity, rng):
    """Stain jitter in optical-density space (Tellez et al. 2018 HED augmentation):
    deconvolve into stain concentrations, scale and shift each, recompose."""
    s, b = _STAIN_SCALE[severity - 1], _STAIN_SHIFT[severity - 1]
    od = -np.log((img.astype(np.float64) + 1.0) / 256.0)
    conc = _combine_channels(od.reshape(-1, 3), _STAIN_FROM_RGB)
    alpha = rng.uniform(1 - s, 1 + s, size=3)
    beta = rng.uniform(-b, b, size=3)
    od = _combine_channels(conc * alpha + beta, _RGB_FROM_STAIN)
    return _to_uint8(256.0 * np.exp(-od.reshape(img.shape)) - 1.0)


def _hue_saturation(img, severity, rng):
    from PIL import Image

    hsv = np.asarray(Image.fromarray(img).convert("HSV")).astype(np.float64)
    hsv[..., 0] = (hsv[..., 0] + _sign(rng) * rng.uniform(0.5, 1.0) * _HUE_SHIFT[severity - 1] * 256) % 256
    hsv[..., 1] *= 1 + _sign(rng) * rng.uniform(0.5, 1.0) * _SATURATION[severity - 1]
    out = Image.fromarray(_to_uint8(hsv), mode="HSV").convert("RGB")
    return np.asarray(out)


def _brightness(img, severity, rng):
    factor = 1 + _sign(rng) * rng.uniform(0.7, 1.0) * _BRIGHTNESS[severity - 1]
    return _to_uint8(img.astype(np.float32) * factor)


def _contrast(img, severity, rng):
    factor = 1 + _sign(rng) * rng.uniform(0.7, 1.0) * _CONTRAST[severity - 1]
    x = img.astype(np.float32)
    gray_mean = float(_combine_channels(x, _LUMA).mean())
    return _to_uint8(gray_mean + (x - gray_mean) * factor)


def _gamma(img, severity, rng):
    gamma = np.exp(_sign(rng) * rng.uniform(0.7, 1.0) * _GAMMA[severity - 1])
    return _to_uint8(255.0 * (img.astype(np.float32) / 255.0) ** gamma)


def _affine(img, angle_deg=0.0, scale=1.0, shift=(0.0, 0.0)):
    """Rotate by angle, scale about the centre, then translate (pixels); reflect at edges."""
    from scipy import ndimage

    h, w = img.shape[:2]
    theta = np.deg2rad(angle_deg)
    # Output pixel -> input pixel: inverse of (scale * rotation), about the centre.
    inv = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]]) / scale
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    moved = centre + np.asarray(shift, dtype=np.float64)
    offset = centre - (inv[:, 0] * moved[0] + inv[:, 1] * moved[1])
    matrix = np.eye(3)
    matrix[:2, :2] = inv
    out = ndimage.affine_transform(img.astype(np.float32), matrix, offset=np.append(offset, 0.0),
                                   order=1, mode="reflect")
    return _to_uint8(out)


def _rotate(img, severity, rng):
    lo, hi = _ROTATE[severity - 1]
    return _affine(img, angle_deg=_sign(rng) * rng.uniform(lo, hi))


def _flip(img, severity, rng):
    # Severity picks the dihedral transform (a flip is a flip: there is no "stronger").
    ops = (lambda x: x[:, ::-1], lambda x: x[::-1], lambda x: x[::-1, ::-1],
           lambda x: x.transpose(1, 0, 2), lambda x: x[::-1, ::-1].transpose(1, 0, 2))
    return np.ascontiguousarray(ops[severity - 1](img))


def _translate(img, severity, rng):
    distance = _TRANSLATE[severity - 1] * img.shape[0] * rng.uniform(0.75, 1.0)
    direction = rng.uniform(0, 2 * np.pi)
    return _affine(img, shift=(distance * np.sin(direction), distance * np.cos(direction)))


def _zoom(img, severity, rng):
    z = 1 + _ZOOM[severity - 1] * rng.uniform(0.75, 1.0)
    return _affine(img, scale=z if rng.random() < 0.5 else 1 / z)


def _occlusion(img, severity, rng):
    count, side = _OCCLUSION[severity - 1]
    out = img.copy()
    h, w = img.shape[:2]
    for _ in range(count):
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        kind = rng.integers(3)
        if kind == 0:  # black, as Cutout / RandomErasing with value 0
            fill = 0
        elif kind == 1:  # a flat random grey
            fill = int(rng.integers(64, 224))
        else:  # noise
            fill = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        out[y:y + side, x:x + side] = fill
    return out


def _noise(img, severity, rng):
    noise = rng.normal(0.0, _NOISE[severity - 1], size=img.shape)
    return _to_uint8(img.astype(np.float32) + noise)


def _blur(img, severity, rng):
    from scipy import ndimage

    sigma = _BLUR[severity - 1] * rng.uniform(0.85, 1.0)
    return _to_uint8(ndimage.gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0)))


def _jpeg(img, severity, rng):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", quality=_JPEG[severity - 1])
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _grayscale(img, severity, rng):
    x = img.astype(np.float32)
    gray = _combine_channels(x, _LUMA)
    a = _GRAYSCALE[severity - 1]
    return _to_uint8((1 - a) * x + a * gray)


_PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _channel_mix(img, severity, rng):
    perm = _PERMUTATIONS[int(rng.integers(len(_PERMUTATIONS)))]
    a = _CHANNEL_MIX[severity - 1]
    x = img.astype(np.float32)
    return _to_uint8((1 - a) * x + a * x[..., perm])


def _posterize(img, severity, rng):
    bits = _POSTERIZE[severity - 1]
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return img & mask


def _solarize(img, severity, rng):
    threshold = _SOLARIZE[severity - 1]
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


OPERATIONS = {
    "stain": _stain, "hue_saturation": _hue_saturation,
    "brightness": _brightness, "contrast": _contrast, "gamma": _gamma,
    "rotate": _rotate, "flip": _flip, "translate": _translate, "zoom": _zoom,
    "occlusion": _occlusion, "noise": _noise, "blur": _blur, "jpeg": _jpeg,
    "grayscale": _grayscale, "channel_mix": _channel_mix, "posterize": _posterize,
    "solarize": _solarize,
}
assert tuple(OPERATIONS) == FAMILIES
