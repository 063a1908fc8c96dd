"""Synthetic land-cover scenes: element maps per class, Sentinel-2 L1C spectra and Sentinel-1 backscatter.

A scene class is composed of land-cover *elements* (water, forest, grass, roofs, roads, ...), each with a 13-band
L1C spectral prototype (DN = reflectance x 10000) and a VV/VH backscatter prior in dB. The compositions are chosen
so that the transfer method matters (see ``docs/data.md``):

- cloud-free optical is the strongest cue;
- SAR alone is weaker but cloud-proof: Herbaceous, Scrub and Road share their backscatter (grass and scrub have
  the same VV/VH prior; roads are thin), so SAR confuses them, while the optics separate them;
- some pairs are separable only by SAR: Industrial and Residential use the same roofs and the same block layout in
  the optics, but industrial metal structures backscatter far more (bright VV and dense double-bounce points);
  Sparsely Built differs from Herbaceous by a few small roofs in the optics but by many bright points in SAR.

Everything is numpy and deterministic for a given ``np.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from esccs.data.noise import fractal_noise, gaussian_blur
from esccs.data.speckle import db_to_linear, linear_to_db, speckle
from esccs.spec import CLASS_PRESETS, IGBP_TO_SIMPLE


@dataclass(frozen=True)
class Element:
    """A land-cover element: L1C spectrum (13 bands, DN), SAR prior (VV, VH dB), bright-point rate, IGBP code."""

    spectrum: tuple[float, ...]
    sar_db: tuple[float, float]
    points: float  # fraction of the element's pixels that are double-bounce bright points in SAR
    igbp: int


#            B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09  B10   B11   B12
ELEMENTS: dict[str, Element] = {
    "water":   Element((1350, 1100, 900, 620, 520, 430, 400, 360, 330, 120, 8, 140, 90), (-20.0, -27.0), 0.0, 17),
    "forest":  Element((1300, 980, 820, 560, 880, 1850, 2250, 2450, 2600, 780, 12, 1450, 700), (-7.5, -13.5), 0.0, 4),
    "grass":   Element((1380, 1080, 980, 820, 1180, 2050, 2450, 2650, 2800, 830, 12, 2150, 1250), (-11.0, -18.0),
                       0.0, 10),
    # Same backscatter as grass on purpose: Herbaceous vs Scrub is an optical-only distinction.
    "scrub":   Element((1420, 1140, 1080, 1080, 1320, 1700, 1900, 2000, 2100, 640, 12, 2550, 1750), (-11.0, -18.0),
                       0.0, 7),
    # Rough bare soil backscatters like low vegetation: Barren vs Herbaceous / Scrub is mostly an optical distinction.
    "bare":    Element((1500, 1320, 1380, 1580, 1780, 1980, 2120, 2220, 2380, 700, 14, 3150, 2450), (-12.0, -19.0),
                       0.0, 16),
    "roof":    Element((1600, 1450, 1450, 1500, 1650, 1800, 1900, 1950, 2050, 600, 13, 2300, 1900), (-8.0, -14.5),
                       0.04, 13),
    # Optically identical to "roof": industrial vs residential is a SAR-only distinction.
    "metal":   Element((1600, 1450, 1450, 1500, 1650, 1800, 1900, 1950, 2050, 600, 13, 2300, 1900), (-3.0, -10.0),
                       0.25, 13),
    "road":    Element((1420, 1180, 1120, 1120, 1180, 1280, 1330, 1380, 1430, 450, 12, 1600, 1400), (-17.0, -25.0),
                       0.0, 13),
    "pier":    Element((1750, 1650, 1700, 1750, 1850, 1950, 2000, 2050, 2100, 640, 14, 2550, 2250), (-4.0, -11.0),
                       0.2, 13),
    "crop":    Element((1350, 1030, 950, 700, 1150, 2300, 2800, 3000, 3150, 900, 12, 2000, 1050), (-10.5, -17.0),
                       0.0, 12),
    "wetland": Element((1330, 1020, 880, 640, 800, 1350, 1550, 1650, 1720, 520, 10, 900, 500), (-9.0, -15.0), 0.0, 11),
    "snow":    Element((5200, 5000, 4900, 4800, 4700, 4600, 4500, 4400, 4300, 1500, 30, 500, 400), (-16.0, -24.0),
                       0.0, 15),
    "savanna": Element((1420, 1120, 1050, 1000, 1250, 1850, 2100, 2250, 2350, 700, 12, 2400, 1600), (-9.5, -16.0),
                       0.0, 9),
}
ELEMENT_NAMES: tuple[str, ...] = tuple(ELEMENTS)
_EL = {name: i for i, name in enumerate(ELEMENT_NAMES)}
_SPECTRA = np.array([e.spectrum for e in ELEMENTS.values()], np.float32)  # (E, 13)
_SAR = np.array([e.sar_db for e in ELEMENTS.values()], np.float32)  # (E, 2)
_POINTS = np.array([e.points for e in ELEMENTS.values()], np.float32)  # (E,)
_IGBP = np.array([e.igbp for e in ELEMENTS.values()], np.uint8)  # (E,)
_VEGETATION = np.array([n in ("forest", "grass", "scrub", "crop", "wetland", "savanna") for n in ELEMENT_NAMES])
_NIR = np.array([False] * 5 + [True] * 4 + [False] * 4)  # B06 B07 B08 B8A respond to vegetation vigour
#: Season effect on vegetation (NIR gain, red gain): winter vegetation is darker in NIR and redder.
SEASON_VEGETATION: dict[str, tuple[float, float]] = {
    "spring": (1.0, 1.0), "summer": (1.06, 0.95), "fall": (0.93, 1.06), "winter": (0.85, 1.12),
}


# --------------------------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------------------------

def _blobs(shape: tuple[int, int], frac: float, rng: np.random.Generator, decay: float = 1.0) -> np.ndarray:
    """Boolean blobs covering ``frac`` of the patch (a thresholded fractal field)."""
    if frac <= 0:
        return np.zeros(shape, bool)
    field = fractal_noise(shape, rng, decay=decay)
    return field >= np.quantile(field, 1.0 - min(frac, 1.0))


def _lines(shape: tuple[int, int], n: int, width: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean straight lines of ``width`` px crossing the patch at random angles."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        theta = rng.uniform(0, np.pi)
        dist = np.abs((xx - cx) * np.sin(theta) - (yy - cy) * np.cos(theta))
        out |= dist <= width / 2
    return out


def _blocks(shape: tuple[int, int], frac: float, size: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Boolean axis-aligned rectangles (buildings) until about ``frac`` of the patch is covered.

    ``size`` is the side range as a fraction of the patch side, so layouts look alike at 64, 128 or 256 px.
    """
    h, w = shape
    out = np.zeros(shape, bool)
    for _ in range(400):
        if out.mean() >= frac:
            break
        bh = max(1, int(rng.uniform(*size) * h))
        bw = max(1, int(rng.uniform(*size) * w))
        y, x = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        out[y:y + bh, x:x + bw] = True
    return out


# --------------------------------------------------------------------------------------------------------------------
# Scene compositions: class name -> element map
# --------------------------------------------------------------------------------------------------------------------

def _fill(shape: tuple[int, int], name: str) -> np.ndarray:
    return np.full(shape, _EL[name], np.uint8)


def _put(emap: np.ndarray, where: np.ndarray, name: str) -> None:
    emap[where] = _EL[name]


def _vegetated(shape: tuple[int, int], main: str, other: str, frac: tuple[float, float], rng) -> np.ndarray:
    """A ``main`` cover with ``other`` patches over ``1 - frac`` of the patch."""
    emap = _fill(shape, main)
    _put(emap, _blobs(shape, 1.0 - rng.uniform(*frac), rng), other)
    return emap


def _built(shape, rng, roof: str, background: str = "grass") -> np.ndarray:
    """Dense blocks of ``roof`` with a road grid on ``background``: one generator for industrial and residential."""
    emap = _vegetated(shape, background, "bare", (0.6, 0.9), rng)
    _put(emap, _lines(shape, int(rng.integers(1, 3)), max(1.5, shape[0] / 48), rng), "road")
    _put(emap, _blocks(shape, rng.uniform(0.35, 0.55), (0.05, 0.14), rng), roof)
    return emap


def _scene_sen12ms_cloud(name: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Element map of one scene class of the ``sen12ms_cloud`` list."""
    if name == "Barren":
        return _vegetated(shape, "bare", "scrub", (0.7, 0.95), rng)
    if name == "Dense Forests":
        return _vegetated(shape, "forest", "grass", (0.75, 0.97), rng)
    if name == "Herbaceous":
        return _vegetated(shape, "grass", "scrub", (0.75, 0.97), rng)
    if name == "Scrub":
        return _vegetated(shape, "scrub", "grass", (0.65, 0.92), rng)
    if name == "Industrial":
        return _built(shape, rng, "metal")
    if name == "Residential":
        return _built(shape, rng, "roof")
    if name == "Road":
        emap = _vegetated(shape, "grass", rng.choice(["forest", "scrub"]), (0.5, 0.9), rng)
        _put(emap, _lines(shape, int(rng.integers(1, 4)), max(2.0, shape[0] / 36), rng), "road")
        return emap
    if name == "Sparsely Built":
        emap = _vegetated(shape, "grass", "scrub", (0.75, 0.97), rng)
        _put(emap, _blocks(shape, rng.uniform(0.02, 0.06), (0.02, 0.05), rng), "metal")
        return emap
    if name == "Water":
        emap = _fill(shape, "water")
        _put(emap, _blobs(shape, rng.uniform(0.0, 0.2), rng, decay=1.5), "grass")
        return emap
    if name == "Harbor":
        emap = _fill(shape, "water")
        shore = _blobs(shape, rng.uniform(0.3, 0.5), rng, decay=2.0)
        _put(emap, shore, "bare")
        _put(emap, shore & _blocks(shape, 0.5, (0.06, 0.15), rng), "roof")
        _put(emap, _lines(shape, int(rng.integers(2, 5)), max(1.5, shape[0] / 64), rng), "pier")
        return emap
    raise ValueError(f"no scene recipe for class {name!r}")


#: Simplified IGBP class -> dominant element and possible companions.
_IGBP_SIMPLE_RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Forest": ("forest", ("grass", "savanna", "water")), "Shrubland": ("scrub", ("grass", "bare")),
    "Savanna": ("savanna", ("grass", "forest")), "Grassland": ("grass", ("scrub", "crop", "forest")),
    "Wetlands": ("wetland", ("water", "grass")), "Croplands": ("crop", ("grass", "bare", "forest")),
    "Urban/Built-up": ("roof", ("road", "grass", "metal")), "Snow/Ice": ("snow", ("bare", "forest")),
    "Barren": ("bare", ("scrub", "snow")), "Water": ("water", ("wetland", "grass", "bare")),
}


def _scene_igbp_simple(name: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Element map with a dominant simplified-IGBP cover (the label is then the argmax of the lc fractions)."""
    main, others = _IGBP_SIMPLE_RECIPES[name]
    emap = _fill(shape, main)
    if main == "crop":  # field parcels
        _put(emap, _blocks(shape, rng.uniform(0.1, 0.3), (0.1, 0.3), rng), str(rng.choice(others)))
    for other in rng.choice(others, size=int(rng.integers(1, 3)), replace=False):
        _put(emap, _blobs(shape, rng.uniform(0.05, 0.25), rng), str(other))
    return emap


def scene_classes(preset: str) -> tuple[str, ...]:
    """The classes the generator can make for a class preset (``sen12ms_cloud`` or ``igbp_simple``)."""
    if preset not in ("sen12ms_cloud", "igbp_simple"):
        raise ValueError(f"the generator makes 'sen12ms_cloud' or 'igbp_simple' classes, not {preset!r}")
    return CLASS_PRESETS[preset]


def element_map(class_name: str, preset: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Compose the ``(H, W)`` uint8 element map of one patch of ``class_name``."""
    make = _scene_sen12ms_cloud if preset == "sen12ms_cloud" else _scene_igbp_simple
    return make(class_name, shape, rng)


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneLook:
    """Per-scene acquisition conditions shared by all patches of one (season, scene)."""

    season: str
    gain: float  # illumination / atmosphere gain
    haze: float  # additive path radiance on the short-wave bands (DN at B01)
    sar_offset: float  # incidence angle / moisture shift of backscatter (dB)

    @classmethod
    def sample(cls, season: str, rng: np.random.Generator) -> SceneLook:
        """Draw the conditions of one scene."""
        return cls(season, float(rng.uniform(0.9, 1.1)), float(rng.uniform(0, 250)), float(rng.uniform(-2.5, 2.5)))


_HAZE_PROFILE = np.array([1.0, 0.8, 0.55, 0.35, 0.25, 0.18, 0.15, 0.12, 0.1, 0.05, 0.0, 0.02, 0.01], np.float32)


def render_s2(emap: np.ndarray, look: SceneLook, rng: np.random.Generator) -> np.ndarray:
    """Render a clear L1C patch ``(13, H, W)`` uint16 DN from an element map ``(H, W)``."""
    jitter = 1.0 + rng.normal(0, 0.04, size=_SPECTRA.shape).astype(np.float32)  # per-patch prototype variation
    spectra = _SPECTRA * jitter
    nir_gain, red_gain = SEASON_VEGETATION[look.season]
    spectra[np.ix_(_VEGETATION, _NIR)] *= nir_gain
    spectra[_VEGETATION, 3] *= red_gain
    img = spectra.T[:, emap]  # (13, H, W)
    texture = 0.88 + 0.24 * fractal_noise(emap.shape, rng, decay=0.8)  # canopy / surface texture, +-12 %
    img *= texture[None]
    img = gaussian_blur(img, 0.6)  # 10-20 m sensor footprint mixes neighbouring elements
    img = img * look.gain + look.haze * _HAZE_PROFILE[:, None, None]
    img *= 1.0 + rng.normal(0, 0.01, size=img.shape).astype(np.float32)  # sensor noise
    return np.clip(img, 1, 10000).astype(np.uint16)


def render_s1(emap: np.ndarray, look: SceneLook, rng: np.random.Generator, looks: float = 4.4) -> np.ndarray:
    """Render a Sentinel-1 patch ``(2, H, W)`` float32 sigma-nought in dB, with Gamma speckle in linear power."""
    # Incidence angle and soil moisture shift backscatter per scene and per patch: SAR is cloud-proof but noisier.
    db = _SAR.T[:, emap] + look.sar_offset + float(rng.normal(0.0, 1.5))  # (2, H, W)
    db += 2.0 * (fractal_noise(emap.shape, rng, decay=1.2)[None] - 0.5)  # slow moisture / roughness texture
    bright = rng.random(emap.shape) < _POINTS[emap]  # double-bounce scatterers (buildings, metal, piers)
    boost = rng.uniform(8.0, 15.0, size=emap.shape).astype(np.float32)
    db += np.stack([boost, boost - 3.0]) * bright[None]
    power = speckle(db_to_linear(db), looks, rng)
    return linear_to_db(power).astype(np.float32)


def igbp_map(emap: np.ndarray) -> np.ndarray:
    """IGBP code (1..17) per pixel of an element map."""
    return _IGBP[emap]


def igbp_fractions(lc: np.ndarray) -> np.ndarray:
    """17-element vector of IGBP class fractions of an IGBP code map, like ``IGBP_probability_labels.pkl``."""
    counts = np.bincount(lc.ravel().astype(np.int64), minlength=18)[1:18]
    return (counts / max(lc.size, 1)).astype(np.float32)


def igbp_simple_label(fractions: np.ndarray) -> int:
    """Single simplified-IGBP label (0..9): argmax of the summed fractions (Schmitt & Wu 2021)."""
    simple = np.zeros(10, np.float64)
    np.add.at(simple, np.array(IGBP_TO_SIMPLE), fractions)
    return int(np.argmax(simple))
