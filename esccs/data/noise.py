"""Torch-free noise fields and small image filters for the synthetic generator (numpy only).

``fractal_noise`` makes Perlin-like fractal fields by spectral synthesis (white noise shaped by a ``1 / f^decay``
amplitude spectrum), used for textures, element layouts and cloud alpha mattes. ``gaussian_blur`` and ``shift`` are
the small separable filters the renderers need (sensor footprint, per-band misregistration).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def _radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """Radial spatial frequency (cycles per pixel) of an ``rfft2`` grid, floored at the lowest non-zero frequency.

    Args:
        shape: ``(H, W)`` of the real field.

    Returns:
        ``(H, W // 2 + 1)`` float32 frequency magnitudes (read-only, cached per shape).
    """
    h, w = shape
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    freq = np.sqrt(fy * fy + fx * fx)
    freq = np.maximum(freq, 1.0 / max(h, w))
    freq.setflags(write=False)
    return freq


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, decay: float = 1.0) -> np.ndarray:
    """Fractal (Perlin-like) noise by spectral synthesis, rescaled to ``[0, 1]``.

    White Gaussian noise is filtered in the Fourier domain by an amplitude spectrum ``1 / f^decay`` (the mean is
    removed), then min-max rescaled. ``decay = 0`` is white noise; larger values give smoother, blobbier fields
    (about 1 is a rough texture, 2 a cloud-like field, 3 a very smooth veil).

    Args:
        shape: ``(H, W)`` of the field.
        rng: Random generator (the field is a deterministic function of its state).
        decay: Spectral decay exponent of the amplitude spectrum (>= 0).

    Returns:
        ``(H, W)`` float32 field with minimum 0 and maximum 1 (all zeros for a constant field, e.g. 1 x 1).
    """
    shape = (int(shape[0]), int(shape[1]))
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = np.fft.rfft2(white)
    spec *= _radial_frequency(shape) ** np.float32(-decay)
    spec[0, 0] = 0.0
    field = np.fft.irfft2(spec, s=shape).astype(np.float32, copy=False)
    lo, hi = field.min(), field.max()
    if hi - lo <= 0:
        return np.zeros(shape, np.float32)
    field -= lo
    field *= np.float32(1.0 / (hi - lo))
    return field


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian kernel of radius ``ceil(3 sigma)`` (float64, odd length)."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _convolve_axis(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Convolve ``img`` along ``axis`` with a symmetric 1-D kernel, reflect padding, same shape."""
    radius = len(kernel) // 2
    pad = [(0, 0)] * img.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(img, pad, mode="reflect")
    n = img.shape[axis]
    out = np.zeros_like(img)
    index = [slice(None)] * img.ndim
    for i, wgt in enumerate(kernel):
        index[axis] = slice(i, i + n)
        out += img.dtype.type(wgt) * padded[tuple(index)]
    return out


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, with reflect padding.

    Args:
        img: ``(H, W)`` or ``(C, H, W)`` array (float; integers are blurred in float32 and rounded back).
        sigma: Standard deviation in pixels; ``<= 0`` returns ``img`` unchanged.

    Returns:
        Blurred array of the same shape and dtype as ``img``.
    """
    if sigma <= 0:
        return img
    if img.ndim < 2:
        raise ValueError(f"gaussian_blur needs an (H, W) or (C, H, W) array, got shape {img.shape}")
    work = img if np.issubdtype(img.dtype, np.floating) else img.astype(np.float32)
    kernel = _gaussian_kernel(float(sigma))
    out = _convolve_axis(_convolve_axis(work, kernel, img.ndim - 2), kernel, img.ndim - 1)
    if out.dtype != img.dtype:
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(img.dtype)
    return out


def shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Integer shift over the last two axes with edge replication.

    ``out[..., y, x] = img[..., clip(y - dy), clip(x - dx)]``: positive ``dy`` / ``dx`` move content down / right.

    Args:
        img: ``(..., H, W)`` array.
        dy: Rows to shift by.
        dx: Columns to shift by.

    Returns:
        Shifted array of the same shape and dtype (a copy).
    """
    h, w = img.shape[-2:]
    rows = np.clip(np.arange(h) - int(dy), 0, h - 1)
    cols = np.clip(np.arange(w) - int(dx), 0, w - 1)
    return img[..., rows[:, None], cols[None, :]]
