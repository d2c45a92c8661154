"""Drawing synthetic smears (bloodcells.synth builds the data set from them).

Each clean image is a 96x96 smear: pale background, pale red-cell discs with lighter
centres, and one central white cell whose morphology follows its class (platelets: no
white cell, small purple fragments instead). Colours come from a stain model
(Beer-Lambert: pixel = light * exp(-sum of stain densities)), so overlaps darken the way
they do under a microscope, and a stain jitter changes every colour of an image at once.
Size, shape, colour, stain, position and rotation are random, and some class pairs
overlap on purpose (lymphocyte/erythroblast, eosinophil/neutrophil, monocyte/immature
granulocyte), so the task is learnable but not trivial. Also drawn here: multi-cell
outliers and the two fabricated "meme" pictures the cleaning stage must find.

Every function draws from the `rng` it is given, in a fixed order: the same generator
state gives the same bytes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from . import IMAGE_SIZE, NUM_CLASSES

S = IMAGE_SIZE
(BASOPHIL, EOSINOPHIL, ERYTHROBLAST, IMMATURE_GRANULOCYTE,
 LYMPHOCYTE, MONOCYTE, NEUTROPHIL, PLATELET) = range(NUM_CLASSES)

# Optical density per unit of stain, for R, G, B (pixel = light * exp(-density * vector)).
LIGHT = np.array([243.0, 226.0, 207.0]) / 255.0  # the pale peach background
STAINS = {
    "rbc": np.array([0.17, 0.33, 0.22]),  # eosin-pink red cells
    "nucleus": np.array([0.95, 1.40, 0.42]),  # hematoxylin purple
    "cyto_blue": np.array([0.40, 0.30, 0.04]),  # basophilic (blue) cytoplasm
    "cyto_pale": np.array([0.10, 0.16, 0.05]),  # neutral lilac cytoplasm
    "eos_granule": np.array([0.12, 0.75, 0.72]),  # orange-red granules
    "baso_granule": np.array([1.30, 1.85, 0.85]),  # purple-black granules
    "fine_granule": np.array([0.18, 0.32, 0.12]),  # faint lilac granules
    "platelet": np.array([0.75, 1.05, 0.35]),
}

_YY, _XX = np.mgrid[0:S, 0:S].astype(np.float32)


# -- drawing primitives -----------------------------------------------------------------

def _blob(cx, cy, rx, ry, angle=0.0, edge=1.0, wobble=0.0, rng=None, harmonics=4):
    """A soft-edged ellipse, with a wavy outline when `wobble` > 0, on its bounding box.
    Returns (region slices, mask in 0..1, normalised radius) or None when off-image."""
    reach = max(rx, ry) * (1.0 + 2.5 * wobble) + edge + 1.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, S)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, S)
    if y0 >= y1 or x0 >= x1:
        return None
    dy, dx = _YY[y0:y1, x0:x1] - cy, _XX[y0:y1, x0:x1] - cx
    c, s = math.cos(angle), math.sin(angle)
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    rho = np.sqrt(u * u + v * v)
    if wobble > 0:
        theta = np.arctan2(v, u)
        k = np.arange(2, 2 + harmonics)
        amps = rng.normal(0.0, wobble, harmonics) / np.sqrt(k - 1)
        phases = rng.uniform(0, 2 * np.pi, harmonics)
        outline = 1.0 + sum(a * np.cos(kk * theta + p) for a, kk, p in zip(amps, k, phases))
        rho = rho / np.maximum(outline, 0.5)
    mask = np.clip((1.0 - rho) * math.sqrt(rx * ry) / edge + 0.5, 0.0, 1.0)
    return (slice(y0, y1), slice(x0, x1)), mask, rho


def _union(target, blob):
    if blob is not None:
        region, mask, _ = blob
        np.maximum(target[region], mask, out=target[region])


def _noise(rng, sigma, shape=(S, S)):
    """Smooth random field with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-6)


def _granules(rng, fraction, size):
    """Dots: a sparse random point field blurred to granules, peak value about 1."""
    points = (rng.random((S, S)) < fraction).astype(np.float32)
    field = ndimage.gaussian_filter(points, size, mode="constant")
    return field * (2 * np.pi * size * size)


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _polar(cx, cy, radius, angle):
    return cx + radius * math.cos(angle), cy + radius * math.sin(angle)


# -- the smear ----------------------------------------------------------------------------

def _stain(rng):
    """One slide's staining and illumination: every colour of the image moves together."""
    strength = math.exp(rng.normal(0.0, 0.12))
    stains = {name: (vec * np.exp(rng.normal(0.0, 0.08, 3)) * strength).astype(np.float32)
              for name, vec in STAINS.items()}
    light = np.clip(LIGHT * np.exp(rng.normal(0.0, 0.02, 3)), 0.0, 1.0).astype(np.float32)
    return stains, light


def _red_cells(rng, density_map, avoid=()):
    """Pale discs with a lighter centre, scattered with some overlap."""
    count = int(rng.integers(9, 24))
    size = rng.uniform(8.5, 11.0)
    placed = []
    for _ in range(count * 6):
        if len(placed) >= count:
            break
        r = size * rng.uniform(0.88, 1.12)
        cx, cy = rng.uniform(-6, S + 6, 2)
        if any(math.hypot(cx - px, cy - py) < 0.75 * (r + pr) for px, py, pr in placed):
            continue
        if any(math.hypot(cx - ax, cy - ay) < ar for ax, ay, ar in avoid):
            continue
        placed.append((cx, cy, r))
        blob = _blob(cx, cy, r, r * rng.uniform(0.88, 1.0), rng.uniform(0, np.pi), edge=1.2)
        if blob is None:
            continue
        region, mask, rho = blob
        pallor = rng.uniform(0.4, 0.7)  # how pale the centre is
        rim = rho - 0.8
        profile = (1.0 - pallor) + pallor * _smoothstep(rho, 0.1, 0.75) + 0.25 * np.exp(-rim * rim * 60.0)
        density_map[region] += mask * profile * rng.uniform(0.8, 1.15)


def _platelet(rng, cx, cy, scale=1.0):
    """A small granular purple fragment with a faint halo: (density map, halo map)."""
    core = np.zeros((S, S), np.float32)
    r = rng.uniform(2.8, 4.8) * scale
    _union(core, _blob(cx, cy, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), edge=0.9,
                       wobble=0.12, rng=rng))
    halo = np.zeros((S, S), np.float32)
    _union(halo, _blob(cx, cy, r * 1.6, r * 1.5, rng.uniform(0, np.pi), edge=1.5))
    return core, halo


def _nucleus_shape(label, rng, cx, cy, R):
    """The nucleus mask of a white cell of class `label` with radius R, centred near (cx, cy)."""
    nucleus = np.zeros((S, S), np.float32)
    turn = rng.uniform(0, 2 * np.pi)
    if label == NEUTROPHIL:  # 3-5 lobes strung along a curved band, thin strands between
        lobes = int(rng.integers(3, 6))
        arc_r = R * rng.uniform(0.38, 0.5)
        span = rng.uniform(3.4, 4.8) if lobes > 3 else rng.uniform(2.6, 4.0)
        lobe_r = R * rng.uniform(0.19, 0.25)
        angles = turn + np.linspace(-span / 2, span / 2, lobes) + rng.normal(0, 0.12, lobes)
        for a in angles:
            x, y = _polar(cx, cy, arc_r * rng.uniform(0.85, 1.15), a)
            _union(nucleus, _blob(x, y, lobe_r * rng.uniform(0.85, 1.2), lobe_r * rng.uniform(0.75, 1.0),
                                  a + rng.normal(0, 0.3), edge=1.0, wobble=0.06, rng=rng))
        for a in np.linspace(angles[0], angles[-1], 4 * lobes):
            x, y = _polar(cx, cy, arc_r, a)
            _union(nucleus, _blob(x, y, lobe_r * 0.38, lobe_r * 0.38, edge=0.8))
    elif label == EOSINOPHIL:  # usually two lobes ("spectacles"), sometimes three
        lobes = 2 if rng.random() < 0.8 else 3
        arc_r = R * rng.uniform(0.32, 0.44)
        lobe_r = R * rng.uniform(0.25, 0.31)
        span = rng.uniform(2.2, 3.1) if lobes == 2 else rng.uniform(3.0, 3.8)
        angles = turn + np.linspace(-span / 2, span / 2, lobes)
        for a in angles:
            x, y = _polar(cx, cy, arc_r, a)
            _union(nucleus, _blob(x, y, lobe_r * rng.uniform(0.9, 1.15), lobe_r * rng.uniform(0.75, 0.95),
                                  a + rng.normal(0, 0.3), edge=1.0, wobble=0.05, rng=rng))
        for a in np.linspace(angles[0], angles[-1], 6):
            x, y = _polar(cx, cy, arc_r, a)
            _union(nucleus, _blob(x, y, lobe_r * 0.35, lobe_r * 0.35, edge=0.8))
    elif label == BASOPHIL:  # irregular, lobed, mostly hidden under granules
        for _ in range(int(rng.integers(2, 4))):
            x, y = _polar(cx, cy, R * rng.uniform(0.1, 0.3), rng.uniform(0, 2 * np.pi))
            _union(nucleus, _blob(x, y, R * rng.uniform(0.35, 0.5), R * rng.uniform(0.3, 0.45),
                                  rng.uniform(0, np.pi), edge=1.0, wobble=0.08, rng=rng))
    elif label == ERYTHROBLAST:  # very round, compact, centred
        r = R * rng.uniform(0.58, 0.75)
        x, y = _polar(cx, cy, R * rng.uniform(0.0, 0.15), turn)
        _union(nucleus, _blob(x, y, r, r * rng.uniform(0.92, 1.0), turn, edge=0.8, wobble=0.015,
                              rng=rng, harmonics=2))
    elif label == LYMPHOCYTE:  # round to slightly oval, nearly fills the cell, often eccentric
        r = R * rng.uniform(0.72, 0.88)
        x, y = _polar(cx, cy, R * rng.uniform(0.05, 0.22), turn)
        _union(nucleus, _blob(x, y, r, r * rng.uniform(0.85, 0.98), turn, edge=1.0, wobble=0.04, rng=rng))
    elif label == MONOCYTE:  # large, kidney-shaped or folded
        rx, ry = R * rng.uniform(0.5, 0.64), R * rng.uniform(0.36, 0.48)
        x, y = _polar(cx, cy, R * rng.uniform(0.05, 0.2), turn)
        body = _blob(x, y, rx, ry, turn, edge=1.2, wobble=0.07, rng=rng)
        _union(nucleus, body)
        if rng.random() < 0.7:  # a notch in one long side: the kidney
            nx, ny = _polar(x, y, ry * rng.uniform(0.9, 1.25), turn + np.pi / 2)
            notch = np.zeros((S, S), np.float32)
            nr = ry * rng.uniform(0.6, 0.9)
            _union(notch, _blob(nx, ny, nr * 1.3, nr, turn, edge=1.5))
            nucleus *= 1.0 - notch
        else:  # folded: a second overlapping lobe at an angle
            fx, fy = _polar(x, y, rx * 0.55, turn + rng.uniform(0.8, 1.6))
            _union(nucleus, _blob(fx, fy, rx * 0.65, ry * 0.8, turn + 1.2, edge=1.2, wobble=0.06, rng=rng))
    elif label == IMMATURE_GRANULOCYTE:  # large oval, sometimes slightly indented
        rx, ry = R * rng.uniform(0.52, 0.68), R * rng.uniform(0.44, 0.58)
        x, y = _polar(cx, cy, R * rng.uniform(0.05, 0.22), turn)
        _union(nucleus, _blob(x, y, rx, ry, turn, edge=1.0, wobble=0.05, rng=rng))
        if rng.random() < 0.35:
            nx, ny = _polar(x, y, ry * rng.uniform(1.05, 1.35), turn + np.pi / 2)
            notch = np.zeros((S, S), np.float32)
            _union(notch, _blob(nx, ny, ry * 0.7, ry * 0.5, turn, edge=1.5))
            nucleus *= 1.0 - notch
    return nucleus


# Per class: cell radius range, nucleus density range, chromatin texture (sigma, amplitude),
# cytoplasm (stain name, density range), granules (stain, fraction of pixels, size, density range,
# whether they also cover the nucleus).
CELL_TRAITS = {
    NEUTROPHIL: dict(radius=(15.5, 20.0), nuc=(0.85, 1.15), chromatin=(1.2, 0.18),
                     cyto=("cyto_pale", (0.7, 1.3)), granules=("fine_granule", 0.10, 0.55, (0.2, 0.8), False)),
    EOSINOPHIL: dict(radius=(15.5, 20.0), nuc=(0.85, 1.15), chromatin=(1.2, 0.18),
                     cyto=("cyto_pale", (0.6, 1.0)), granules=("eos_granule", 0.22, 0.7, (0.35, 1.0), False)),
    BASOPHIL: dict(radius=(12.5, 16.5), nuc=(0.9, 1.2), chromatin=(1.5, 0.2),
                   cyto=("cyto_pale", (0.8, 1.4)), granules=("baso_granule", 0.16, 0.85, (0.5, 0.95), True)),
    ERYTHROBLAST: dict(radius=(9.0, 13.0), nuc=(1.25, 1.6), chromatin=(0.8, 0.07),
                       cyto=("cyto_blue", (0.5, 1.2)), granules=None),
    LYMPHOCYTE: dict(radius=(10.5, 14.5), nuc=(1.0, 1.35), chromatin=(1.6, 0.22),
                     cyto=("cyto_blue", (0.8, 1.5)), granules=None),
    MONOCYTE: dict(radius=(18.5, 24.0), nuc=(0.7, 0.95), chromatin=(1.0, 0.2),
                   cyto=("cyto_blue", (0.55, 0.95)), granules=("fine_granule", 0.04, 0.5, (0.1, 0.4), False)),
    IMMATURE_GRANULOCYTE: dict(radius=(16.5, 22.0), nuc=(0.8, 1.1), chromatin=(1.3, 0.2),
                               cyto=("cyto_blue", (0.6, 1.1)),
                               granules=("fine_granule", 0.06, 0.6, (0.3, 0.9), False)),
}


def _white_cell(label, rng, stains, cx, cy, scale=1.0):
    """(coverage mask, optical density (S, S, 3)) of one white cell; it lies on top of red cells."""
    traits = CELL_TRAITS[label]
    R = rng.uniform(*traits["radius"]) * scale
    cell = np.zeros((S, S), np.float32)
    _union(cell, _blob(cx, cy, R, R * rng.uniform(0.88, 1.0), rng.uniform(0, np.pi), edge=1.2,
                       wobble=0.05 if label != MONOCYTE else 0.09, rng=rng))
    nucleus = _nucleus_shape(label, rng, cx, cy, R) * cell

    cyto_name, cyto_range = traits["cyto"]
    cyto_vec = stains[cyto_name]
    if label == ERYTHROBLAST:  # polychromatic: blue mixed with some pink
        mix = rng.uniform(0.2, 0.6)
        cyto_vec = (1 - mix) * stains["cyto_blue"] + mix * stains["rbc"] * 1.4
    if label == MONOCYTE:  # grey-blue
        cyto_vec = 0.7 * stains["cyto_blue"] + 0.3 * np.full(3, stains["cyto_blue"].mean())
    cyto = cell * rng.uniform(*cyto_range) * (1.0 + 0.12 * _noise(rng, 2.0))
    if label == MONOCYTE and rng.random() < 0.6:  # a few vacuoles
        vac = np.zeros((S, S), np.float32)
        for _ in range(int(rng.integers(2, 7))):
            x, y = _polar(cx, cy, R * rng.uniform(0.3, 0.85), rng.uniform(0, 2 * np.pi))
            vr = rng.uniform(1.0, 2.2)
            _union(vac, _blob(x, y, vr, vr, edge=0.7))
        cyto *= 1.0 - 0.8 * vac

    sigma, amplitude = traits["chromatin"]
    chromatin = 1.0 + amplitude * _noise(rng, sigma)
    nuc_density = nucleus * rng.uniform(*traits["nuc"]) * chromatin
    od = (cyto * (1.0 - nucleus))[..., None] * cyto_vec + nuc_density[..., None] * stains["nucleus"]

    if traits["granules"] is not None:
        name, fraction, size, dens, over_nucleus = traits["granules"]
        grains = _granules(rng, fraction * rng.uniform(0.7, 1.3), size) * rng.uniform(*dens)
        grains *= cell if over_nucleus else cell * (1.0 - nucleus)
        vec = stains[name]
        if label == EOSINOPHIL:  # granule colour drifts between orange-red and pink
            vec = vec * np.array([1.0, 1.0, rng.uniform(0.75, 1.15)])
        od += grains[..., None] * vec
    return cell, od


def _smear(rng, cells, stray_platelets=True):
    """Render one image: `cells` is a list of (label, cx, cy, scale)."""
    stains, light = _stain(rng)
    rbc = np.zeros((S, S), np.float32)
    avoid = [(cx, cy, 4.0) for _, cx, cy, _ in cells]  # keep the cell's centre mostly clear
    _red_cells(rng, rbc, avoid)
    od = rbc[..., None] * stains["rbc"]

    fragments = []
    for label, cx, cy, scale in cells:
        if label == PLATELET:  # one to three fragments near the centre
            n = int(rng.choice([1, 1, 1, 2, 2, 3]))
            for k in range(n):
                if k == 0:
                    fragments.append((cx, cy, scale * rng.uniform(0.9, 1.25)))
                else:
                    fragments.append((*_polar(cx, cy, rng.uniform(6, 14), rng.uniform(0, 2 * np.pi)),
                                      scale * rng.uniform(0.7, 1.0)))
    if stray_platelets and rng.random() < 0.3:  # stray platelets away from the centre, any class
        for _ in range(int(rng.integers(1, 3))):
            x, y = _polar(S / 2, S / 2, rng.uniform(32, 44), rng.uniform(0, 2 * np.pi))
            fragments.append((x, y, rng.uniform(0.6, 0.9)))
    for x, y, scale in fragments:
        core, halo = _platelet(rng, x, y, scale)
        grains = 1.0 + 0.35 * _noise(rng, 0.7)
        od = od * (1.0 - 0.5 * halo[..., None]) + (core * grains * rng.uniform(0.75, 1.1))[..., None] * stains["platelet"]

    for label, cx, cy, scale in cells:
        if label == PLATELET:
            continue
        cover, cell_od = _white_cell(label, rng, stains, cx, cy, scale)
        od = od * (1.0 - cover[..., None]) + cell_od

    img = light * np.exp(-od)
    img = ndimage.gaussian_filter(img, (rng.uniform(0.35, 0.9),) * 2 + (0,))  # focus
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * np.float32(rng.uniform(0.85, 1.2))  # saturation
    img *= (rng.uniform(0.9, 1.06) * np.exp(rng.normal(0.0, 0.015, 3)) * 255.0).astype(np.float32)  # brightness, tint
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.5, 2.5))  # sensor noise
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    img = np.rot90(img, int(rng.integers(4)))
    return np.ascontiguousarray(img[:, ::-1] if rng.random() < 0.5 else img)


def render_cell(label: int, rng) -> np.ndarray:
    """One clean smear whose central cell is of class `label`: uint8 (96, 96, 3)."""
    cx, cy = S / 2 + np.clip(rng.normal(0.0, 3.0, 2), -7, 7)
    return _smear(rng, [(int(label), cx, cy, 1.0)])


def render_cells(labels, rng) -> np.ndarray:
    """Clean smears, one per label: uint8 (N, 96, 96, 3), drawn in order from `rng`."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    out = np.empty((len(labels), S, S, 3), np.uint8)
    for i, label in enumerate(labels):
        out[i] = render_cell(label, rng)
    return out


def render_outlier(labels, rng) -> np.ndarray:
    """A smear with 2-3 white cells of the given classes side by side (a multi-cell outlier)."""
    n = len(labels)
    turn = rng.uniform(0, 2 * np.pi)
    spread = 21.0 if n == 2 else 25.0
    cells = []
    for k, label in enumerate(labels):
        x, y = _polar(S / 2, S / 2, spread * rng.uniform(0.9, 1.05), turn + 2 * np.pi * k / n)
        cells.append((int(label), x, y, rng.uniform(0.68, 0.8) if n == 3 else rng.uniform(0.78, 0.9)))
    return _smear(rng, cells, stray_platelets=False)


# -- fabricated pictures ----------------------------------------------------------------------

def _paint(img, mask, colour):
    """Paint `colour` (0-255 RGB) over float image `img` through a 0..1 mask."""
    img += mask[..., None] * (np.asarray(colour, np.float32) / 255.0 - img)


def _shape(blob_args, **kw):
    mask = np.zeros((S, S), np.float32)
    _union(mask, _blob(*blob_args, **kw))
    return mask


def _rect(x0, y0, x1, y1):
    mask = np.zeros((S, S), np.float32)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1.0
    return mask


def _text_bars(img, rng, y, height, colour, outline):
    """A line of "words": bars of random length, like a meme caption."""
    x = int(rng.integers(6, 14))
    while x < S - 12:
        width = int(rng.integers(8, 20))
        x1 = min(x + width, S - 5)
        _paint(img, _rect(x - 1, y - 1, x1 + 1, y + height + 1), outline)
        _paint(img, _rect(x, y, x1, y + height), colour)
        x = x1 + int(rng.integers(4, 7))


def _meme_a(rng):
    """A cartoon face on a flat colour with caption bars above and below."""
    img = np.empty((S, S, 3), np.float32)
    img[:] = np.array([96, 166, 226], np.float32) / 255.0
    _paint(img, _shape((48, 52, 27, 27), edge=1.0), (30, 30, 30))
    _paint(img, _shape((48, 52, 25, 25), edge=1.0), (250, 214, 60))
    for ex in (38, 58):
        _paint(img, _shape((ex, 44, 4.5, 6), edge=0.8), (255, 255, 255))
        _paint(img, _shape((ex + 1, 45, 2.2, 3), edge=0.8), (20, 20, 20))
    smile = _shape((48, 58, 14, 9), edge=1.0) * (1 - _shape((48, 55, 14, 8), edge=1.0))
    _paint(img, smile, (120, 30, 30))
    _text_bars(img, rng, 5, 7, (255, 255, 255), (0, 0, 0))
    _text_bars(img, rng, 84, 7, (255, 255, 255), (0, 0, 0))
    return img


def _meme_b(rng):
    """A green ogre-ish head with ears on diagonal stripes, one caption bar."""
    img = np.empty((S, S, 3), np.float32)
    stripes = ((_XX + _YY) // 12 % 2).astype(np.float32)
    img[:] = np.array([236, 120, 40], np.float32) / 255.0
    _paint(img, stripes, (120, 50, 140))
    for ex in (20, 76):
        _paint(img, _shape((ex, 36, 8, 5, 0.5 if ex < 48 else -0.5), edge=1.0), (110, 160, 50))
    _paint(img, _shape((48, 46, 26, 30), edge=1.0), (40, 70, 20))
    _paint(img, _shape((48, 46, 24, 28), edge=1.0), (130, 180, 60))
    for ex in (39, 57):
        _paint(img, _shape((ex, 38, 3.5, 3.5), edge=0.8), (250, 250, 240))
        _paint(img, _shape((ex, 38, 1.6, 1.6), edge=0.8), (60, 40, 20))
    _paint(img, _shape((48, 60, 10, 3.5), edge=1.0), (80, 30, 30))
    _text_bars(img, rng, 83, 8, (255, 255, 40), (0, 0, 0))
    return img


def fabricated_picture(which: str, rng) -> np.ndarray:
    """A meme picture ('a' or 'b') with a cell blended in: uint8 (96, 96, 3)."""
    meme = (_meme_a if which == "a" else _meme_b)(rng)
    cell = render_cell(int(rng.integers(NUM_CLASSES - 1)), rng).astype(np.float32) / 255.0
    alpha = 0.45 if which == "a" else 0.55
    return np.clip(np.rint(((1 - alpha) * meme + alpha * cell) * 255.0), 0, 255).astype(np.uint8)
