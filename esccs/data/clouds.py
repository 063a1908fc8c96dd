"""Synthetic clouds and cloud shadows on Sentinel-2 DN stacks (numpy re-implementation of SatelliteCloudGenerator).

Follows the algorithm of Czerkawski et al. 2023 (Remote Sensing 15(17):4138, ``strath-ai/SatelliteCloudGenerator``):
a fractal alpha matte, per-band cloud brightness, per-band alpha jitter and misregistration, multiplicative shadows,
and ``out = clear * (1 - alpha) + alpha * cloud``. Differences: the matte is thresholded at a quantile so that the
realised cloud cover equals the requested one, per-band values are looked up by band *name* (L1C DN priors), and
shadows are the cloud matte displaced along a random sun direction, darkening NIR / SWIR most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from esccs.data.noise import fractal_noise, shift
from esccs.spec import MASK_CLEAR, MASK_SHADOW, MASK_THICK, MASK_THIN, S2_BANDS

#: Base-alpha level from which a cloudy pixel is labelled thick (below it: thin).
THICK_ALPHA = 0.7
#: Shadow alpha above which a clear pixel is labelled shadow (SatelliteCloudGenerator's ``shadow_threshold``).
SHADOW_ALPHA = 0.1

#: Per band: (cloud brightness low, high in L1C DN, shadow darkening weight in [0, 1], centre wavelength in nm).
#: Brightness and darkening are engineering priors (docs: data-sources.md 2.4); unknown bands use ``_GENERIC``.
BAND_TABLE: dict[str, tuple[float, float, float, float]] = {
    "B01": (4000, 8000, 0.25, 443), "B02": (4000, 8000, 0.30, 490), "B03": (4000, 8000, 0.45, 560),
    "B04": (4000, 8000, 0.50, 665), "B05": (4000, 8000, 0.60, 705), "B06": (4000, 8000, 0.70, 740),
    "B07": (4000, 8000, 0.75, 783), "B08": (4000, 8000, 0.80, 842), "B8A": (4000, 8000, 0.80, 865),
    "B09": (1500, 4000, 0.80, 945), "B10": (500, 4000, 0.50, 1375), "B11": (2500, 5000, 0.90, 1610),
    "B12": (1500, 3500, 0.95, 2190),
}
_GENERIC = (5000.0, 5000.0, 0.6, 700.0)


@dataclass(frozen=True)
class CloudPreset:
    """Parameters of one cloud type (ranges are sampled uniformly per call).

    Attributes:
        decay: Range of the fractal-noise decay (larger = smoother, blobbier matte).
        locality: Number of noise fields multiplied together (more = fewer, more compact cells).
        peak: Range of the maximum alpha (cloud opacity at the cloud cores).
        edge: Alpha at the cloud boundary (the threshold contour).
        sharpness: Range of the ``tanh`` saturation of alpha from edge to peak (larger = flatter, more uniform).
        offset: Largest per-band misregistration in px (the spread between the first and last band).
        tilt: Spectral tilt of alpha (haze scatters more at short wavelengths; 0 = spectrally flat).
        shadow: Range of the shadow strength (0 disables shadows).
    """

    decay: tuple[float, float]
    locality: int
    peak: tuple[float, float]
    edge: float
    sharpness: tuple[float, float]
    offset: tuple[int, int]
    tilt: float
    shadow: tuple[float, float]


CLOUD_PRESETS: dict[str, CloudPreset] = {
    "thick": CloudPreset(decay=(1.7, 2.1), locality=1, peak=(0.95, 1.0), edge=0.05, sharpness=(4.0, 6.0),
                         offset=(2, 3), tilt=0.0, shadow=(0.5, 0.8)),
    "thin": CloudPreset(decay=(1.4, 1.8), locality=1, peak=(0.4, 0.65), edge=0.03, sharpness=(1.5, 2.5),
                        offset=(3, 4), tilt=0.15, shadow=(0.1, 0.25)),
    "local": CloudPreset(decay=(1.8, 2.2), locality=3, peak=(0.9, 1.0), edge=0.05, sharpness=(3.0, 5.0),
                         offset=(2, 3), tilt=0.0, shadow=(0.5, 0.8)),
    "fog": CloudPreset(decay=(2.6, 3.0), locality=1, peak=(0.35, 0.6), edge=0.02, sharpness=(1.5, 2.5),
                       offset=(2, 3), tilt=0.2, shadow=(0.0, 0.0)),
}


@dataclass
class CloudResult:
    """A cloudy image and its labels.

    Attributes:
        image: ``(C, H, W)`` cloudy image, same dtype as the input.
        mask: ``(H, W)`` uint8 codes: 0 clear, 1 thick, 2 thin, 3 shadow (``esccs.spec.MASK_*``).
        coverage: Fraction of pixels with mask 1 or 2.
        preset: Cloud preset name (``'mask'`` for :func:`apply_cloud_mask`).
        alpha: ``(H, W)`` float32 base alpha matte in ``[0, 1]`` (before per-band jitter and misregistration).
    """

    image: np.ndarray
    mask: np.ndarray
    coverage: float
    preset: str
    alpha: np.ndarray


def _band_info(band_names: Sequence[str], n_bands: int) -> np.ndarray:
    """``(C, 4)`` float32 table rows (brightness low/high, shadow weight, wavelength) for the bands of a stack."""
    if len(band_names) != n_bands:
        raise ValueError(f"{len(band_names)} band names for an image with {n_bands} bands")
    return np.array([BAND_TABLE.get(str(b).upper(), _GENERIC) for b in band_names], np.float32)


def _brightness(info: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(C,)`` cloud brightness: one shared whiteness level, plus a little per-band variation."""
    level = rng.uniform(0.0, 1.0)
    mix = np.clip(0.75 * level + 0.25 * rng.uniform(0.0, 1.0, size=len(info)), 0.0, 1.0)
    return (info[:, 0] + (info[:, 1] - info[:, 0]) * mix).astype(np.float32)


def _band_alpha(alpha: np.ndarray, band_names: Sequence[str], info: np.ndarray, preset: CloudPreset,
                rng: np.random.Generator) -> np.ndarray:
    """``(C, H, W)`` per-band alpha: the matte misregistered along a random direction, jittered by ~5 %, tilted."""
    c = len(info)
    order = np.array([S2_BANDS.index(b) if b in S2_BANDS else 6 for b in map(str, band_names)], np.float32)
    position = order / (len(S2_BANDS) - 1) - 0.5  # -0.5 (B01) ... +0.5 (B12): along-track band order
    spread = rng.uniform(preset.offset[0], preset.offset[1])
    theta = rng.uniform(0.0, 2.0 * np.pi)
    dys = np.rint(position * spread * np.sin(theta)).astype(int)
    dxs = np.rint(position * spread * np.cos(theta)).astype(int)
    out = np.stack([shift(alpha, dy, dx) for dy, dx in zip(dys, dxs)])
    gain = 1.0 + rng.uniform(-0.05, 0.05, size=c)
    gain *= 1.0 + preset.tilt * np.log(700.0 / info[:, 3])
    out *= gain.astype(np.float32)[:, None, None]
    return np.clip(out, 0.0, 1.0, out=out)


def _matte(shape: tuple[int, int], coverage: float, preset: CloudPreset,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Base alpha ``(H, W)`` float32 and cloudy mask ``(H, W)`` bool covering ``round(coverage * H * W)`` pixels."""
    decay = rng.uniform(*preset.decay)
    field = fractal_noise(shape, rng, decay=decay)
    for _ in range(preset.locality - 1):
        field *= fractal_noise(shape, rng, decay=decay)
    n = field.size
    k = int(round(coverage * n))
    flat = field.ravel()
    thr = np.partition(flat, n - k)[n - k]
    cloudy = field >= thr
    top = float(flat.max())
    u = (field - thr) * np.float32(1.0 / max(top - float(thr), 1e-12))
    sharp = rng.uniform(*preset.sharpness)
    peak = rng.uniform(*preset.peak)
    ramp = np.tanh(np.float32(sharp) * np.clip(u, 0.0, 1.0)) * np.float32(1.0 / np.tanh(sharp))
    alpha = np.float32(preset.edge) + np.float32(peak - preset.edge) * ramp
    alpha[~cloudy] = 0.0
    return np.clip(alpha, 0.0, 1.0).astype(np.float32, copy=False), cloudy


def _displace(field: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift ``(H, W)`` by ``(dy, dx)`` px with zero fill (a shadow does not smear along the border)."""
    h, w = field.shape
    out = np.zeros_like(field)
    if abs(dy) < h and abs(dx) < w:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            field[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _finish(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Round and clip a float32 rendering to the input dtype's range."""
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        np.rint(out, out=out)
        np.clip(out, info.min, info.max, out=out)
    return out.astype(image.dtype, copy=False)


def _labels(alpha: np.ndarray, cloudy: np.ndarray, shadow: np.ndarray | None, band_alpha: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 mask codes from the base alpha, the cloudy pixels and the shadow alpha.

    A shadow pixel must be free of cloud in every band (misregistered cloud edges are not labelled shadow).
    """
    mask = np.full(alpha.shape, MASK_CLEAR, np.uint8)
    if shadow is not None:
        mask[(shadow > SHADOW_ALPHA) & ~cloudy & (band_alpha.max(axis=0) < 0.02)] = MASK_SHADOW
    mask[cloudy] = MASK_THIN
    mask[cloudy & (alpha >= THICK_ALPHA)] = MASK_THICK
    return mask


def simulate_clouds(image: np.ndarray, coverage: float, rng: np.random.Generator, preset: str = "thick",
                    band_names: Sequence[str] = S2_BANDS) -> CloudResult:
    """Render synthetic clouds and shadows over a clear Sentinel-2 stack.

    Args:
        image: ``(C, H, W)`` clear image in L1C DN (reflectance x 10000; uint16 or float).
        coverage: Requested cloud cover in ``[0, 1]``; the realised fraction of mask 1/2 pixels is
            ``round(coverage * H * W) / (H * W)`` (up to ties of the matte).
        rng: Random generator (the result is a deterministic function of its state).
        preset: One of :data:`CLOUD_PRESETS` (``thick``, ``thin``, ``local``, ``fog``).
        band_names: Names of the ``C`` bands (any subset or order; unknown names get generic values).

    Returns:
        :class:`CloudResult` with the cloudy image (same dtype), mask, coverage, preset and base alpha.
    """
    if preset not in CLOUD_PRESETS:
        raise ValueError(f"unknown cloud preset {preset!r}; choose one of {sorted(CLOUD_PRESETS)}")
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"cloud coverage must be in [0, 1], got {coverage!r}")
    if image.ndim != 3:
        raise ValueError(f"simulate_clouds needs a (C, H, W) image, got shape {image.shape}")
    cfg = CLOUD_PRESETS[preset]
    info = _band_info(band_names, image.shape[0])
    shape = image.shape[1:]
    if int(round(coverage * shape[0] * shape[1])) == 0:
        zeros = np.zeros(shape, np.float32)
        return CloudResult(image.copy(), np.zeros(shape, np.uint8), 0.0, preset, zeros)
    alpha, cloudy = _matte(shape, coverage, cfg, rng)
    band_alpha = _band_alpha(alpha, band_names, info, cfg, rng)
    bright = _brightness(info, rng)
    out = image.astype(np.float32)
    shadow = None
    if cfg.shadow[1] > 0:
        strength = rng.uniform(*cfg.shadow)
        dist = rng.uniform(0.05, 0.15) * max(shape)
        theta = rng.uniform(0.0, 2.0 * np.pi)
        shadow = _displace(alpha, int(round(dist * np.sin(theta))), int(round(dist * np.cos(theta))))
        shadow *= np.float32(strength)
        out *= 1.0 - info[:, 2, None, None] * shadow[None]
    out -= band_alpha * (out - bright[:, None, None])  # clear * (1 - a) + a * cloud
    mask = _labels(alpha, cloudy, shadow, band_alpha)
    cover = float(np.count_nonzero(cloudy)) / cloudy.size
    return CloudResult(_finish(image, out), mask, cover, preset, alpha)


def apply_cloud_mask(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                     band_names: Sequence[str] = S2_BANDS) -> CloudResult:
    """Render clouds where a real cloud mask says (codes 0 clear, 1 thick, 2 thin, 3 shadow; binary = thick).

    Inside thick pixels alpha is a smooth field in ``[0.9, 1]``, inside thin pixels in ``[0.3, 0.6]``; shadow
    pixels are darkened (NIR / SWIR most). Alpha is jittered by ~5 % per band but not misregistered, so the
    clouds stay exactly on the mask.

    Args:
        image: ``(C, H, W)`` clear image in L1C DN.
        mask: ``(H, W)`` integer or bool mask with values in ``{0, 1, 2, 3}``.
        rng: Random generator.
        band_names: Names of the ``C`` bands.

    Returns:
        :class:`CloudResult` with preset ``'mask'`` and the input mask (as uint8).
    """
    mask = np.asarray(mask)
    if image.ndim != 3 or mask.shape != image.shape[1:]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape} (expected (C, H, W) and (H, W))")
    mask = mask.astype(np.uint8)
    if mask.size and int(mask.max()) > MASK_SHADOW:
        raise ValueError(f"cloud mask codes must be 0..3, got a maximum of {int(mask.max())}")
    info = _band_info(band_names, image.shape[0])
    field = fractal_noise(mask.shape, rng, decay=2.0)
    thick, thin, shade = mask == MASK_THICK, mask == MASK_THIN, mask == MASK_SHADOW
    alpha = np.where(thick, 0.9 + 0.1 * field, np.where(thin, 0.3 + 0.3 * field, 0.0)).astype(np.float32)
    gain = (1.0 + rng.uniform(-0.05, 0.05, size=len(info))).astype(np.float32)
    band_alpha = np.clip(alpha[None] * gain[:, None, None], 0.0, 1.0)
    out = image.astype(np.float32)
    shadow = np.where(shade, rng.uniform(0.4, 0.7) * (0.8 + 0.2 * field), 0.0).astype(np.float32)
    out *= 1.0 - info[:, 2, None, None] * shadow[None]
    out -= band_alpha * (out - _brightness(info, rng)[:, None, None])
    cover = float(np.count_nonzero(thick | thin)) / max(mask.size, 1)
    return CloudResult(_finish(image, out), mask, cover, "mask", alpha)
