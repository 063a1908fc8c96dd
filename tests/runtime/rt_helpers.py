"""Helpers of the runtime tests: tiny GeoTIFF writers, plain rasterio readers, CSV/JSON readers (no fixtures)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from esccs.spec import S1_BANDS, S2_BANDS

PATCH = 16
#: a UTM zone 33N grid with 10 m pixels (SEN12MS-like)
CRS = "EPSG:32633"
ORIGIN = (500000.0, 4500000.0)


def read_job(job, info) -> tuple[np.ndarray, np.ndarray]:
    """Raw optical DN ``(C_o, P, P)`` and SAR dB ``(C_s, P, P)`` of a job, read with rasterio alone (not the runtime
    reader): bands picked by name from the SEN12MS file order, the job's window (or the whole tile)."""
    window = rasterio.windows.Window(*job.window) if job.window else None
    out = []
    for path, order, names in ((job.optical, S2_BANDS, info.optical_bands), (job.sar, S1_BANDS, info.sar_bands)):
        with rasterio.open(path) as src:
            assert src.count == len(order)
            out.append(src.read([order.index(b) + 1 for b in names], window=window).astype(np.float32))
    return out[0], out[1]


def read_jobs(jobs, info) -> tuple[np.ndarray, np.ndarray]:
    pairs = [read_job(j, info) for j in jobs]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_tif(path: Path, arr: np.ndarray, crs: str | None = CRS, transform=None, nodata=None,
              descriptions=None, block: int | None = None) -> Path:
    """Write ``arr`` ``(C, H, W)`` as a GeoTIFF (tiled with ``block`` px blocks when given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "count": arr.shape[0], "height": arr.shape[1], "width": arr.shape[2],
               "dtype": arr.dtype.name, "crs": crs, "transform": transform or from_origin(*ORIGIN, 10.0, 10.0)}
    if nodata is not None:
        profile["nodata"] = nodata
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                dst.set_band_description(i, d)
    return path


def optical_dn(rng: np.random.Generator, h: int = PATCH, w: int = PATCH) -> np.ndarray:
    """13-band uint16 L1C-like DN in SEN12MS band order."""
    return rng.integers(300, 4000, (len(S2_BANDS), h, w)).astype(np.uint16)


def sar_db(rng: np.random.Generator, h: int = PATCH, w: int = PATCH) -> np.ndarray:
    """2-band float32 backscatter in dB (VV, VH)."""
    return np.stack([rng.normal(-11, 3, (h, w)), rng.normal(-18, 3, (h, w))]).astype(np.float32)
