"""Tiles for parity, calibration and accuracy: read from a data set (raw DN / dB), or a seeded random batch.

Every export checks itself on real tiles when a data set is given (cloudy and clear ranges show overflow that random
tensors hide). Tiles come back raw and normalised, so both the plain and the preprocessing-baked ONNX can be fed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esccs.errors import DataError, DatasetNotFoundError


@dataclass
class Tiles:
    """A batch of tiles.

    Attributes:
        raw: ``{"optical": (N, C_o, H, W) DN, "sar": (N, 2, H, W) dB}`` float32, as read.
        normalized: the same after the checkpoint's normalisation (equal to ``raw`` when it has none).
        labels: int64 ``(N,)`` class indices in the model's class order, ``-1`` where unknown.
        source: where they came from (``"<folder> (part target, split test)"`` or ``"random (seed 0)"``).
        ids: sample ids (empty for random tiles).
    """

    raw: dict[str, np.ndarray]
    normalized: dict[str, np.ndarray]
    labels: np.ndarray
    source: str
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int, start: int = 0) -> Tiles:
        """The tiles ``start .. start + n`` (wrapping around, so any ``n`` works on a small set)."""
        idx = (np.arange(n) + start) % len(self)
        return Tiles({k: v[idx] for k, v in self.raw.items()}, {k: v[idx] for k, v in self.normalized.items()},
                     self.labels[idx], self.source, [self.ids[i] for i in idx] if self.ids else [])

    def feeds(self, preprocessed: bool) -> dict[str, np.ndarray]:
        """ONNX feeds: raw tiles for a graph with baked preprocessing, normalised ones otherwise."""
        return self.raw if preprocessed else self.normalized


def normalize(cfg, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Apply ``cfg.normalization`` (``{"optical": ..., "sar": ...}`` Normalizer dicts) to raw inputs."""
    from esccs.data.transforms import Normalizer

    norm = cfg.normalization or {}
    return {k: (Normalizer.from_dict(norm[k])(v) if k in norm else v.astype(np.float32)) for k, v in raw.items()}


def open_tiles(data: str | os.PathLike, cfg):
    """Open the target part (or the plain data set) at ``data`` with the model's optical bands.

    Raises:
        DataError: the folder does not exist or holds no usable tile (one line naming it).
    """
    from esccs.data.dataset import open_dataset, parts_of

    root = Path(data)
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    try:
        part = "target" if "target" in parts_of(root) else None
        ds = open_dataset(root, part, bands=cfg.optical_bands)
    except DatasetNotFoundError as err:
        raise DataError(root, f"no usable tiles for calibration/parity ({err.reason})") from None
    return ds


def _pick(ds, n: int, split: str | None) -> list[int]:
    idx = ds.indices(split) if split and ds.indices(split) else ds.indices()
    if len(idx) <= n:
        return idx
    return [idx[int(i)] for i in np.linspace(0, len(idx) - 1, n)]  # spread over ids: clear and cloudy


def read_tiles(ds, cfg, n: int, split: str | None = None) -> Tiles:
    """Read ``n`` tiles spread evenly over the samples of ``split`` (all samples when the split is empty).

    Labels are mapped by class *name* onto the model's classes; unknown names become ``-1``.
    """
    idx = _pick(ds, n, split)
    if not idx:
        raise DataError(ds.root, "no tiles to read")
    class_map = {k: (cfg.classes.index(c) if cfg.classes and c in cfg.classes else -1)
                 for k, c in enumerate(ds.classes)}
    opt, sar, labels, ids = [], [], [], []
    for i in idx:
        s = ds.read(i)
        opt.append(s["optical"])
        sar.append(s["sar"])
        lab = s.get("label")
        labels.append(class_map.get(int(lab), -1) if lab is not None and np.ndim(lab) == 0 else -1)
        ids.append(s["id"])
    if len({a.shape for a in opt}) > 1:
        raise DataError(ds.root, f"tiles differ in size ({sorted({a.shape[1:] for a in opt})}); use one tile size")
    raw = {"optical": np.stack(opt).astype(np.float32), "sar": np.stack(sar).astype(np.float32)}
    used = split if split and ds.indices(split) else "all"
    return Tiles(raw, normalize(cfg, raw), np.asarray(labels, np.int64), f"{ds.root} (split {used})", ids)


def random_tiles(cfg, n: int, size: int | None = None, seed: int = 0) -> Tiles:
    """A seeded random batch in the raw value ranges (DN 0..10000 with some NaN, dB -25..0)."""
    rng = np.random.default_rng(seed)
    size = size or cfg.patch_size
    opt = rng.gamma(2.0, 800.0, (n, cfg.in_chans, size, size)).astype(np.float32)
    if cfg.normalization:  # exercise NaN cleaning (only a model with normalisation cleans NaN)
        opt.flat[rng.integers(0, opt.size, max(1, opt.size // 1000))] = np.nan
    sar = rng.uniform(-25.0, 0.0, (n, cfg.sar_chans, size, size)).astype(np.float32)
    raw = {"optical": opt, "sar": sar}
    return Tiles(raw, normalize(cfg, raw), np.full(n, -1, np.int64), f"random (seed {seed}, stated: no --data)", [])
