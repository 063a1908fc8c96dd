"""Normalisation by band *name* (never by index) and statistics from data; numpy only.

S2 is normalised on raw DN and S1 on dB clipped to [-25, 0], as in the official SEN12MS classification code. The
statistics travel with every model and export as a ``{band: [mean, std]}`` mapping, so channel order is explicit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from esccs.errors import BandError
from esccs.spec import BAND_STATS, S1_BANDS, S1_CLIP_DB, S2_CLIP_DN


@dataclass(frozen=True)
class Normalizer:
    """Per-band ``(x - mean) / std`` after clipping, for a named band order.

    Attributes:
        bands: band names in channel order.
        mean, std: float32 ``(C,)`` statistics in that order.
        clip: value range applied before normalising (S2 DN or S1 dB).
    """

    bands: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    clip: tuple[float, float]

    @classmethod
    def for_bands(cls, bands: Sequence[str], stats: dict[str, Sequence[float]] | None = None) -> Normalizer:
        """Build from band names and a ``{band: (mean, std)}`` table (default: the official SEN12MS statistics).

        Raises:
            BandError: a band has no statistics (B01, B09, B10 have no official ones: use :func:`compute_stats`).
        """
        table = {**BAND_STATS, **(stats or {})}
        missing = [b for b in bands if b not in table]
        if missing:
            raise BandError("normalisation", f"no statistics for band {missing[0]}; compute them with "
                                             "esccs.data.transforms.compute_stats or pass stats={band: (mean, std)}")
        sar = all(b in S1_BANDS for b in bands)
        return cls(tuple(bands), np.array([table[b][0] for b in bands], np.float32),
                   np.array([table[b][1] for b in bands], np.float32), S1_CLIP_DB if sar else S2_CLIP_DN)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``(C, H, W)`` or ``(B, C, H, W)`` float32 (NaN -> low clip value first)."""
        shape = (-1, 1, 1)
        x = np.nan_to_num(x, nan=self.clip[0], posinf=self.clip[1], neginf=self.clip[0])
        return ((np.clip(x, *self.clip) - self.mean.reshape(shape)) / self.std.reshape(shape)).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON form: ``{"bands": [...], "stats": {band: [mean, std]}, "clip": [lo, hi]}``."""
        return {"bands": list(self.bands), "clip": list(self.clip),
                "stats": {b: [float(m), float(s)] for b, m, s in zip(self.bands, self.mean, self.std)}}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        bands = tuple(d["bands"])
        return cls(bands, np.array([d["stats"][b][0] for b in bands], np.float32),
                   np.array([d["stats"][b][1] for b in bands], np.float32), tuple(d["clip"]))


def compute_stats(ds, key: str = "optical", max_samples: int = 500, seed: int = 0) -> dict[str, list[float]]:
    """Per-band mean and std of ``key`` over up to ``max_samples`` samples of a dataset, by band name."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[:max_samples]
    bands = ds.bands if key == "optical" else S1_BANDS
    clip = S2_CLIP_DN if key == "optical" else S1_CLIP_DB
    acc = np.zeros((2, len(bands)), np.float64)
    n = 0
    for i in idx:
        x = np.clip(ds.read(int(i))[key].astype(np.float64), *clip).reshape(len(bands), -1)
        acc += np.stack([x.sum(1), (x ** 2).sum(1)])
        n += x.shape[1]
    mean = acc[0] / n
    std = np.sqrt(np.maximum(acc[1] / n - mean ** 2, 1e-12))
    return {b: [float(m), float(s)] for b, m, s in zip(bands, mean, std)}
