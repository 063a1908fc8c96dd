"""Read samples as dicts of numpy arrays (torch-free): the one reader behind training, probes, pictures and the runtime.

``open_dataset(root)`` scans a folder in any supported layout (see :mod:`esccs.io.layouts`), attaches labels,
cloud statistics and scene-grouped splits, and returns a :class:`SceneDataset` whose ``read(i)`` gives::

    {"id": str, "optical": float32 (C, H, W) raw DN, "sar": float32 (2, H, W) dB (NaN cleaned),
     "cloud_mask": uint8 (H, W) (when present), "coverage": float, "label": int (or float32 (K,) multi-label),
     "split": str | None, "crs": CRS, "transform": Affine, "sar_nan": int}

Every file of a sample is checked when read (band count, dtype, one grid for all modalities); a problem raises a
:class:`~esccs.errors.DataError` naming the file. ``check()`` runs those checks on every sample up front and moves
bad samples to ``skipped`` (a batch job goes on and reports them).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from esccs.errors import BandError, CorruptRasterError, DataError, DatasetNotFoundError, DTypeError, LabelError
from esccs.io import labels as lab
from esccs.io.bands import file_band_order
from esccs.io.layouts import Sample, Scan, read_card, scan
from esccs.io.raster import GDAL_ENV, RasterInfo, check_same_grid
from esccs.spec import (
    CLASS_PRESETS,
    IGBP_SIMPLE_CLASSES,
    MASK_THICK,
    MASK_THIN,
    S1_BANDS,
    S1_CLIP_DB,
    S2_BANDS,
    S2_LAND_BANDS,
    cloud_stratum,
)

#: File band order per modality when a file carries no band descriptions.
FILE_BANDS: dict[str, tuple[str, ...]] = {"s2": S2_BANDS, "s2_cloudy": S2_BANDS, "s1": S1_BANDS}


@dataclass
class SceneDataset:
    """Samples of one data set (or one part of a synthetic one), read on demand as dicts of numpy arrays.

    Attributes:
        root: the folder scanned.
        samples: the usable samples, sorted by id.
        classes: class names; labels are indices into it.
        optical: which optical modality ``read`` returns (``s2`` clear or ``s2_cloudy``).
        bands: optical band names returned, in order.
        labels: id -> class index (or multi-label vector); empty when the data set has no labels.
        coverage: id -> cloud fraction from ``clouds.csv`` (the mask is the truth when read).
        skipped: (path, reason) of every file or sample left out.
        band_map: the optical file's band names, when it is not a 13-band SEN12MS L1C stack.
    """

    root: Path
    samples: list[Sample]
    classes: tuple[str, ...]
    optical: str = "s2"
    bands: tuple[str, ...] = S2_LAND_BANDS
    labels: dict[str, object] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = ""
    card: dict = field(default_factory=dict)
    band_map: tuple[str, ...] | None = None
    sar_nan_cleaned: int = 0

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> dict:
        """Read sample ``i`` (see the module docstring for the keys)."""
        s = self.samples[i]
        opt_path = s.paths.get(self.optical)
        if opt_path is None:
            raise DataError(next(iter(s.paths.values())), f"sample {s.id} has no {self.optical} file")
        optical, info_o = read_bands(opt_path, self.optical, self.bands, self.band_map)
        out: dict = {"id": s.id, "optical": optical, "split": s.split, "crs": info_o.crs,
                     "transform": info_o.transform}
        infos = [info_o]
        if "s1" in s.paths:
            sar, info_s = read_bands(s.paths["s1"], "s1", S1_BANDS)
            out["sar"], out["sar_nan"] = clean_sar(sar)
            self.sar_nan_cleaned += out["sar_nan"]
            infos.append(info_s)
        if "cloud_mask" in s.paths:
            mask, info_m = _read_plain(s.paths["cloud_mask"], "cloud_mask")
            out["cloud_mask"] = mask[0].astype(np.uint8)
            out["coverage"] = float(np.isin(out["cloud_mask"], (MASK_THICK, MASK_THIN)).mean())
            infos.append(info_m)
        elif s.id in self.coverage:
            out["coverage"] = self.coverage[s.id]
        check_same_grid(infos)
        if s.id in self.labels:
            out["label"] = self.labels[s.id]
        return out

    def check(self) -> list[tuple[str, str]]:
        """Read every sample once; move those that fail to ``skipped``; return the newly skipped ones."""
        good, bad = [], []
        for i, s in enumerate(self.samples):
            try:
                self.read(i)
                good.append(s)
            except DataError as e:
                bad.append((e.path, e.reason))
        self.samples, self.skipped = good, self.skipped + bad
        return bad

    def indices(self, split: str | None = None) -> list[int]:
        """Indices of the samples in ``split`` (all when ``None``)."""
        return [i for i, s in enumerate(self.samples) if split is None or s.split == split]

    def label_array(self) -> np.ndarray:
        """Single labels of all samples as int64 ``(N,)`` (-1 where unlabelled)."""
        return np.array([int(self.labels[s.id]) if s.id in self.labels and np.ndim(self.labels[s.id]) == 0 else -1
                         for s in self.samples], np.int64)

    def summary(self) -> dict:
        """Counts per split, class and cloud stratum, plus the skipped files and why."""
        y = self.label_array()
        strata = Counter(cloud_stratum(self.coverage[s.id]) for s in self.samples if s.id in self.coverage)
        return {
            "root": str(self.root), "layout": self.layout, "samples": len(self), "optical": self.optical,
            "bands": list(self.bands), "splits": dict(Counter(s.split or "-" for s in self.samples)),
            "classes": {c: int((y == k).sum()) for k, c in enumerate(self.classes)} if (y >= 0).any() else {},
            "cloud_strata": dict(strata), "skipped": len(self.skipped),
            "skipped_files": [f"{p}: {r}" for p, r in self.skipped[:20]],
        }


def open_dataset(root: str | os.PathLike, part: str | None = None, *, optical: str | None = None,
                 bands: Sequence[str] = S2_LAND_BANDS, classes: str | Sequence[str] | None = None,
                 labels: str | os.PathLike | None = None, multi_label: bool = False, band_map=None,
                 require_sar: bool = True, check: bool = False) -> SceneDataset:
    """Open a data set folder in any supported layout.

    Args:
        root: the data-set folder (or the index folder of a synthetic data set, with ``part``).
        part: ``source`` / ``target`` of a synthetic data set (sub-folders named in its index card).
        optical: ``s2`` (clear) or ``s2_cloudy``; default: the card's choice, else ``s2``.
        bands: optical band names to return, in order.
        classes: a preset name or a class list; default: the card's, else ``igbp_simple`` for SEN12MS.
        labels: a label file (pkl / json / csv); default: the card's, else ``IGBP_probability_labels.pkl``.
        multi_label: SEN12MS IGBP fractions -> multi-hot vectors (fraction >= 0.1) instead of the argmax.
        band_map: band names of the optical files in file order, for stacks that are not 13-band L1C.
        require_sar: skip samples without an S1 partner (reported in ``skipped``).
        check: read every sample now and skip the bad ones (reported in ``skipped``).
    """
    root = Path(root)
    if part is not None:
        root = _part_root(root, part)
    card = read_card(root)
    found: Scan = scan(root, card, require=("s1",) if require_sar else ())
    optical = optical or card.get("optical") or ("s2_cloudy" if found.layout == "sen12ms-cr" else "s2")
    if optical not in ("s2", "s2_cloudy"):
        raise DataError(root, f"optical must be 's2' or 's2_cloudy', not {optical!r}")
    class_list = _classes(classes, card)
    ds = SceneDataset(root, [s for s in found.samples if optical in s.paths], class_list, optical, tuple(bands),
                      skipped=list(found.skipped), layout=found.layout, card=card,
                      band_map=tuple(band_map) if band_map else None)
    ds.skipped += [(str(next(iter(s.paths.values()))), f"no {optical} file for sample {s.id}")
                   for s in found.samples if optical not in s.paths]
    if not ds.samples:
        raise DatasetNotFoundError(root, f"no sample has a {optical} file")
    ds.labels = _labels(root, card, labels, ds, multi_label)
    ds.coverage = _coverage(root / card["clouds"]) if card.get("clouds") else {}
    if check:
        ds.check()
    return ds


def parts_of(root: str | os.PathLike) -> list[str]:
    """Part names of a synthetic data set's index card (``[]`` for a plain data set)."""
    card = read_card(Path(root))
    return list(card.get("parts", {})) if card.get("kind") == "index" else []


def _part_root(root: Path, part: str) -> Path:
    parts = read_card(root).get("parts", {})
    if part not in parts:
        raise DatasetNotFoundError(root, f"no part {part!r} (parts: {', '.join(parts) or 'none'})")
    return root / parts[part]


def _classes(classes, card: dict) -> tuple[str, ...]:
    if classes is None:
        return tuple(card["classes"]) if card.get("classes") else IGBP_SIMPLE_CLASSES
    if isinstance(classes, str):
        if classes not in CLASS_PRESETS:
            raise DataError(classes, f"unknown class preset; expected one of {', '.join(CLASS_PRESETS)}")
        return CLASS_PRESETS[classes]
    return tuple(classes)


def _labels(root: Path, card: dict, path, ds: SceneDataset, multi_label: bool) -> dict[str, object]:
    """Labels of the data set's samples, from an explicit file, the card's file, or the SEN12MS pkl."""
    if path is None:
        if card.get("labels"):
            path = root / card["labels"]
        else:
            path = next((p / "IGBP_probability_labels.pkl" for p in (root, root.parent)
                         if (p / "IGBP_probability_labels.pkl").exists()), None)
    if path is None:
        return {}
    table = lab.load_label_table(path)
    ids = [s.id for s in ds.samples]
    lab.check_keys(table, ids, path)
    try:
        return lab.resolve_labels(table, ids, ds.classes, multi_label=multi_label, path=path)
    except KeyError as e:  # pragma: no cover - resolve_labels raises LabelError itself
        raise LabelError(path, f"no label for {e}") from None


def _coverage(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["id"]: float(row["coverage"]) for row in csv.DictReader(f)}


# --------------------------------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------------------------------

def read_bands(path: str | os.PathLike, modality: str, bands: Sequence[str],
               band_map: Sequence[str] | None = None) -> tuple[np.ndarray, RasterInfo]:
    """Read named bands of one file as float32 ``(C, H, W)``, checking band count and dtype by modality.

    The file's band order comes from ``band_map``, else from its band descriptions when they are band names, else
    from the SEN12MS order of the modality. A stack that is not what the modality needs (e.g. a 12-band Level-2A
    stack passed as SEN12MS ``s2``) is refused with a message that names the file and suggests ``band_map``.

    Raises:
        CorruptRasterError, BandError, DTypeError: naming the file and the problem.
    """
    path = os.fspath(path)
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(path) as src:
            info = RasterInfo(path, src.count, src.dtypes[0], src.crs, src.transform, src.width, src.height,
                              src.nodata, tuple(src.descriptions))
            order = file_band_order(info, modality, band_map)
            missing = [b for b in bands if b not in order]
            if missing:
                raise BandError(path, f"band {missing[0]} is not in this file (bands: {', '.join(order)})")
            arr = src.read([order.index(b) + 1 for b in bands], out_dtype="float32")
    except RasterioError as e:
        raise CorruptRasterError(path, f"not a readable GeoTIFF ({str(e).splitlines()[0][:120]})") from None
    return arr, info


def _read_plain(path: Path, modality: str) -> tuple[np.ndarray, RasterInfo]:
    """Read all bands of an integer file (cloud mask, lc) with its header."""
    path = os.fspath(path)
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(path) as src:
            info = RasterInfo(path, src.count, src.dtypes[0], src.crs, src.transform, src.width, src.height,
                              src.nodata, tuple(src.descriptions))
            if np.dtype(info.dtype).kind not in "ui":
                raise DTypeError(path, f"{modality} must be an integer raster, found {info.dtype}")
            return src.read(), info
    except RasterioError as e:
        raise CorruptRasterError(path, f"not a readable GeoTIFF ({str(e).splitlines()[0][:120]})") from None


def clean_sar(sar_db: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN / inf in S1 dB by the low clip value (-25 dB, no return); return the array and how many.

    Raises nothing for a few NaN (SEN12MS has such patches); an all-NaN tile is the caller's call
    (:class:`~esccs.errors.BadTileError` in the runtime).
    """
    bad = ~np.isfinite(sar_db)
    n = int(bad.sum())
    if n:
        sar_db = np.where(bad, np.float32(S1_CLIP_DB[0]), sar_db)
    return sar_db, n
