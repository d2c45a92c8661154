"""A second opinion on robustness: a shift profile whose corruptions are albumentations'
code (MIT, pinned in requirements.txt), not ours.

Why: the `server` profile (bloodcells.shift) and the training augmentation were written
side by side from the same families, so a recipe tuned on `server` is judged by a ruler
cut to its own shape. Here every corruption is a transform of a third-party library
(noise, blur, compression, resolution, weather, stain, distortion, dropout, spatter,
lighting); this module only picks which transform, at what strength, with what seed.

Each family has the severities of ours (corruptions.SEVERITIES, 1-5; the strengths are the tables below, chosen by looking at
the preview grid and against a plain CNN's accuracy drop: bench/RESULTS.md). The profile
`second_opinion` gives every image 1-3 families at random severities, as many as `server`
gives, so the two differ in the corruption code only. Image i's result depends only on
(seed, i): the plan comes from corruptions.image_rng (as shift's plans do), and each step
re-seeds the library transform with a seed derived from (seed, i, step) before it runs.

Never used for training or for choosing epochs or configs (bloodcells.train refuses it):
it is an estimate, and only stays one while nothing is fitted to it.

Use it through bloodcells.shift, whose registry holds it as a profile (its plan, its
families, its per-image step): apply_shift(images, "second_opinion", seed), plan(i,
"second_opinion", seed), describe(...), and `python -m bloodcells.shift --profile
second_opinion --sweep-preview grid.png` for the family x severity grid.
"""

from __future__ import annotations

import os

import numpy as np

# SEVERITIES is ours, shared: second_opinion.SEVERITIES is the same tuple.
from .corruptions import SEVERITIES, check_severity, image_rng, random_severity  # noqa: F401

PROFILE = "second_opinion"
OPS_PER_IMAGE = (1, 2, 3)
LIBRARY = "albumentations"

# Family -> group (the report can group families the way the corruption benchmarks do).
FAMILY_GROUPS = {
    "gauss_noise": "noise", "shot_noise": "noise", "iso_noise": "noise", "salt_pepper": "noise",
    "defocus": "blur", "motion_blur": "blur", "glass_blur": "blur", "zoom_blur": "blur",
    "jpeg": "digital", "pixelate": "digital", "downscale": "digital",
    "fog": "weather", "snow": "weather", "rain": "weather", "sun_flare": "weather",
    "spatter_mud": "artifact", "spatter_rain": "artifact", "coarse_dropout": "artifact",
    "he_stain": "colour", "color_jitter": "colour", "planckian_jitter": "colour",
    "brightness_contrast": "intensity", "gamma": "intensity", "illumination": "intensity",
    "elastic": "distortion", "grid_distortion": "distortion", "optical_distortion": "distortion",
}
FAMILIES = tuple(FAMILY_GROUPS)

# Severity tables (index = severity - 1), for 96 px images.
_GAUSS_STD = (0.04, 0.07, 0.10, 0.14, 0.19)        # noise sigma as a fraction of 255
_SHOT_SCALE = (0.02, 0.04, 0.08, 0.14, 0.22)       # reciprocal photon count
_ISO = ((0.02, 0.15), (0.03, 0.30), (0.04, 0.50), (0.06, 0.75), (0.08, 1.00))  # colour shift, intensity
_SALT_PEPPER = (0.005, 0.01, 0.02, 0.04, 0.07)     # fraction of pixels
_DEFOCUS = (1, 2, 3, 4, 5)                         # disc radius, px
_MOTION = (3, 5, 7, 9, 11)                         # kernel size, px
_GLASS = ((0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.8, 2, 2), (1.0, 3, 2))  # sigma, max_delta, iterations
_ZOOM_BLUR = (1.06, 1.11, 1.16, 1.22, 1.28)        # max zoom factor
_JPEG = (30, 20, 14, 10, 7)                        # quality
_PIXELATE = (0.70, 0.55, 0.45, 0.35, 0.25)         # downscale factor, nearest upscale
_DOWNSCALE = (0.60, 0.45, 0.35, 0.28, 0.22)        # downscale factor, linear both ways
_FOG = ((0.2, 0.05), (0.35, 0.07), (0.5, 0.08), (0.65, 0.10), (0.8, 0.12))  # fog coefficient, alpha
_SNOW = ((0.05, 1.5), (0.10, 1.8), (0.15, 2.0), (0.22, 2.3), (0.30, 2.5))   # snow point, brightness
_RAIN = (("drizzle", 6), ("drizzle", 10), ("heavy", 10), ("heavy", 14), ("torrential", 16))  # type, drop length
_FLARE = ((16, 3), (28, 4), (40, 5), (54, 6), (70, 7))    # source radius px, flare circles (physics-based glow)
_SPATTER = (0.15, 0.25, 0.35, 0.45, 0.6)          # intensity (mud and rain)
_DROPOUT = ((1, 0.10), (2, 0.12), (2, 0.18), (3, 0.20), (4, 0.22))  # holes, side as a fraction
_HE_STAIN = ((0.10, 0.03), (0.18, 0.06), (0.26, 0.10), (0.35, 0.14), (0.45, 0.18))  # scale +-, shift +-
_JITTER = ((0.10, 0.03), (0.18, 0.05), (0.26, 0.08), (0.35, 0.11), (0.45, 0.15))  # b/c/s +-, hue +-
_PLANCKIAN = ((5000, 8000), (4500, 10000), (4000, 12000), (3500, 13500), (3000, 15000))  # kelvin
_BRIGHT_CONTRAST = (0.06, 0.11, 0.16, 0.22, 0.28)  # +- brightness and contrast
_GAMMA = (25, 40, 55, 70, 85)                      # gamma 100 +- this (percent)
_ILLUMINATION = (0.06, 0.09, 0.12, 0.16, 0.20)       # intensity of a lighting gradient (library max 0.2)
_ELASTIC = (40, 70, 100, 140, 180)                 # alpha, px (sigma 5)
_GRID = (0.10, 0.18, 0.26, 0.34, 0.42)            # distort limit
_OPTICAL = (0.20, 0.35, 0.50, 0.70, 0.90)         # distort limit


def library_version() -> str:
    """The installed albumentations version (part of the shift cache key)."""
    from importlib import metadata

    try:
        return metadata.version(LIBRARY)
    except metadata.PackageNotFoundError:
        return "absent"


def _library():
    # The library checks PyPI for a newer version on import; offline, and not our business.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations
        import cv2
    except ImportError as exc:
        raise RuntimeError(f"the '{PROFILE}' shift profile needs albumentations (pip install -r "
                           f"requirements.txt): {exc}") from None
    return albumentations, cv2


def _two_sided(A, make, magnitude):
    """One of two transforms, the library drawing which: strength in [0.7, 1] x magnitude,
    downwards or upwards, so a severity is never a near-identity draw."""
    lo, hi = 0.7 * magnitude, magnitude
    return A.OneOf([make((-hi, -lo)), make((lo, hi))], p=1.0)


def _build(family: str, severity: int):
    A, cv2 = _library()
    k = severity - 1
    reflect = cv2.BORDER_REFLECT_101
    if family == "gauss_noise":
        s = _GAUSS_STD[k]
        return A.GaussNoise(std_range=(s, s), per_channel=True, p=1.0)
    if family == "shot_noise":
        s = _SHOT_SCALE[k]
        return A.ShotNoise(scale_range=(s, s), p=1.0)
    if family == "iso_noise":
        c, i = _ISO[k]
        return A.ISONoise(color_shift=(c, c), intensity=(i, i), p=1.0)
    if family == "salt_pepper":
        a = _SALT_PEPPER[k]
        return A.SaltAndPepper(amount=(a, a), p=1.0)
    if family == "defocus":
        r = _DEFOCUS[k]
        return A.Defocus(radius=(r, r), alias_blur=(0.1, 0.3), p=1.0)
    if family == "motion_blur":
        m = _MOTION[k]
        return A.MotionBlur(blur_limit=(m, m), allow_shifted=False, p=1.0)
    if family == "glass_blur":
        sigma, delta, iterations = _GLASS[k]
        return A.GlassBlur(sigma=sigma, max_delta=delta, iterations=iterations, p=1.0)
    if family == "zoom_blur":
        z = _ZOOM_BLUR[k]
        return A.ZoomBlur(max_factor=(z, z), step_factor=(0.01, 0.02), p=1.0)
    if family == "jpeg":
        q = _JPEG[k]
        return A.ImageCompression(compression_type="jpeg", quality_range=(q, q), p=1.0)
    if family == "pixelate":
        s = _PIXELATE[k]
        return A.Downscale(scale_range=(s, s), p=1.0,
                           interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST})
    if family == "downscale":
        s = _DOWNSCALE[k]
        return A.Downscale(scale_range=(s, s), p=1.0,
                           interpolation_pair={"downscale": cv2.INTER_LINEAR, "upscale": cv2.INTER_LINEAR})
    if family == "fog":
        f, alpha = _FOG[k]
        return A.RandomFog(fog_coef_range=(f, f), alpha_coef=alpha, p=1.0)
    if family == "snow":
        s, b = _SNOW[k]
        return A.RandomSnow(snow_point_range=(s, s), brightness_coeff=b, method="texture", p=1.0)
    if family == "rain":
        kind, length = _RAIN[k]
        return A.RandomRain(rain_type=kind, drop_length=length, drop_width=1, blur_value=3,
                            brightness_coefficient=0.85, p=1.0)
    if family == "sun_flare":
        radius, circles = _FLARE[k]
        return A.RandomSunFlare(flare_roi=(0.0, 0.0, 1.0, 1.0), src_radius=radius,
                                num_flare_circles_range=(circles, circles + 2), method="physics_based", p=1.0)
    if family in ("spatter_mud", "spatter_rain"):
        i = _SPATTER[k]
        return A.Spatter(mode=family.split("_")[1], intensity=(i, i), p=1.0)
    if family == "coarse_dropout":
        holes, side = _DROPOUT[k]
        return A.CoarseDropout(num_holes_range=(holes, holes), hole_height_range=(side * 0.8, side),
                               hole_width_range=(side * 0.8, side), fill="random_uniform", p=1.0)
    if family == "he_stain":
        s, b = _HE_STAIN[k]
        return _two_sided(A, lambda r: A.HEStain(method="random_preset", intensity_scale_range=(1 + r[0], 1 + r[1]),
                                                 intensity_shift_range=(-b, b), augment_background=False,
                                                 p=1.0), s)
    if family == "color_jitter":
        s, h = _JITTER[k]
        return _two_sided(A, lambda r: A.ColorJitter(brightness=(1 + r[0], 1 + r[1]), contrast=(1 + r[0], 1 + r[1]),
                                                     saturation=(1 + r[0], 1 + r[1]), hue=(-h, h), p=1.0), s)
    if family == "planckian_jitter":
        lo, hi = _PLANCKIAN[k]
        return A.PlanckianJitter(mode="blackbody", temperature_limit=(lo, hi), p=1.0)
    if family == "brightness_contrast":
        s = _BRIGHT_CONTRAST[k]
        return _two_sided(A, lambda r: A.RandomBrightnessContrast(brightness_limit=r, contrast_limit=r, p=1.0), s)
    if family == "gamma":
        g = _GAMMA[k]
        return _two_sided(A, lambda r: A.RandomGamma(gamma_limit=(100 + r[0], 100 + r[1]), p=1.0), g)
    if family == "illumination":
        s = _ILLUMINATION[k]
        return A.Illumination(mode="linear", intensity_range=(0.8 * s, s), effect_type="both", p=1.0)
    if family == "elastic":
        return A.ElasticTransform(alpha=_ELASTIC[k], sigma=5, border_mode=reflect, p=1.0)
    if family == "grid_distortion":
        d = _GRID[k]
        return A.GridDistortion(num_steps=5, distort_limit=(-d, d), border_mode=reflect, p=1.0)
    if family == "optical_distortion":
        d = _OPTICAL[k]
        return A.OpticalDistortion(distort_limit=(-d, d), border_mode=reflect, p=1.0)
    raise ValueError(f"unknown {PROFILE} family '{family}'; expected one of {FAMILIES}")


_PIPELINES: dict = {}


def _pipeline(family: str, severity: int):
    """The library transform for (family, severity), built once per process."""
    key = (family, int(severity))
    if key not in _PIPELINES:
        A, _ = _library()
        _PIPELINES[key] = A.Compose([_build(family, int(severity))], p=1.0)
    return _PIPELINES[key]


def check_family(family: str, severity: int) -> None:
    if family not in FAMILY_GROUPS:
        raise ValueError(f"unknown {PROFILE} family '{family}'; expected one of {FAMILIES}")
    check_severity(severity)


def _seed(seed: int, i: int, *names) -> int:
    """An int seed for the library from (seed, i, names), via shift's per-image generator."""
    return int(image_rng(seed, i, PROFILE, *names).integers(0, 2**32 - 1))


def run(img: np.ndarray, family: str, severity: int, seed: int) -> np.ndarray:
    """One library corruption on one uint8 HxWx3 image, seeded by an int."""
    check_family(family, severity)
    pipeline = _pipeline(family, severity)
    pipeline.set_random_seed(int(seed))
    out = pipeline(image=np.ascontiguousarray(img))["image"]
    out = np.asarray(out)
    if out.dtype != np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if out.shape != img.shape:
        raise RuntimeError(f"{family}:{severity} changed the image shape {img.shape} -> {out.shape}")
    return out


def plan(i: int, seed: int = 0) -> list[tuple[str, int]]:
    """Image i's corruptions: [(family, severity), ...] in order, 1-3 distinct families."""
    rng = image_rng(seed, i, "plan", PROFILE)
    count = int(rng.choice(OPS_PER_IMAGE))
    chosen = rng.choice(len(FAMILIES), size=count, replace=False)
    return [(FAMILIES[c], random_severity(rng)) for c in chosen]


def step(img: np.ndarray, family: str, severity: int, i: int, seed: int, index: int) -> np.ndarray:
    """Step `index` of image i's plan, the library re-seeded from (seed, i, index)."""
    return run(img, family, severity, _seed(seed, i, "step", index))


def corrupt(images: np.ndarray, family: str, severity: int, seed: int = 0) -> np.ndarray:
    """One family at one severity on every image (image i seeded from (seed, i, family, severity))."""
    check_family(family, severity)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = run(img, family, severity, _seed(seed, i, "corrupt", family, severity))
    return out
