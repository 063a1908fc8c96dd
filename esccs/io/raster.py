"""GeoTIFF reading and writing with rasterio, with the checks every reader needs.

Every failure becomes an :mod:`esccs.errors` error whose message names the file and the problem in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.transform import Affine

from esccs.errors import BandError, CorruptRasterError, DTypeError, GridMismatchError
from esccs.io.atomic import atomic_path
from esccs.io.tiff_profiles import TIFF_PROFILES
from esccs.spec import RASTER_SPECS

#: GDAL settings for many small files read once: no directory listing on open, bounded block cache.
GDAL_ENV: dict[str, str | int] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_CACHEMAX": 256}


@dataclass(frozen=True)
class RasterInfo:
    """The header of a raster: enough to validate it without reading pixels."""

    path: str
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    nodata: float | None
    descriptions: tuple[str | None, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(bands, height, width)``."""
        return (self.count, self.height, self.width)


def inspect(path: str | os.PathLike) -> RasterInfo:
    """Read a raster's header.

    Raises:
        CorruptRasterError: the file is missing, not a raster, or unreadable.
    """
    path = os.fspath(path)
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(path) as src:
            return RasterInfo(path, src.count, src.dtypes[0], src.crs, src.transform, src.width, src.height,
                              src.nodata, tuple(src.descriptions))
    except RasterioIOError as e:
        raise CorruptRasterError(path, _short(e, "not a readable GeoTIFF")) from None
    except RasterioError as e:  # pragma: no cover - other GDAL failures
        raise CorruptRasterError(path, _short(e, "unreadable raster")) from None


def check_modality(info: RasterInfo, modality: str) -> None:
    """Check band count and dtype of a SEN12MS-family file of one modality (``s2``, ``s1``, ``lc``, ...).

    Raises:
        BandError: wrong number of bands.
        DTypeError: wrong data type (S2 is integer DN, S1 is float dB).
    """
    spec = RASTER_SPECS[modality]
    want = len(spec.bands)
    if spec.min_bands is not None:
        if info.count < spec.min_bands:
            raise BandError(info.path, f"{modality} needs at least {spec.min_bands} band(s), found {info.count}")
    elif info.count != want:
        raise BandError(info.path, f"{modality} needs {want} bands ({', '.join(spec.bands)}), found {info.count}")
    kind = np.dtype(info.dtype).kind
    if kind not in spec.dtype_kinds:
        kinds = {"u": "unsigned integer", "i": "integer", "f": "float"}
        allowed = " or ".join(kinds[k] for k in spec.dtype_kinds)
        raise DTypeError(info.path, f"{modality} must be {allowed}, found {info.dtype}")


def check_same_grid(infos: Sequence[RasterInfo]) -> None:
    """Check that rasters share one grid: CRS, transform (to 1e-6 of a pixel) and size.

    Raises:
        GridMismatchError: naming the first file that differs from the first one and how.
    """
    ref = infos[0]
    for other in infos[1:]:
        what = None
        same_crs = ref.crs is other.crs or (ref.crs is not None and other.crs is not None and ref.crs == other.crs)
        if not same_crs:
            what = f"CRS {other.crs} differs from {ref.crs} of {Path(ref.path).name}"
        elif (ref.width, ref.height) != (other.width, other.height):
            what = f"size {other.width}x{other.height} differs from {ref.width}x{ref.height} of {Path(ref.path).name}"
        elif ref.transform != other.transform and not ref.transform.almost_equals(
                other.transform, precision=1e-6 * max(abs(ref.transform.a), 1e-12)):
            what = f"transform differs from that of {Path(ref.path).name}"
        if what:
            raise GridMismatchError(other.path, what)


def read(path: str | os.PathLike, indexes: Sequence[int] | None = None, dtype: str | None = None,
         out: np.ndarray | None = None) -> np.ndarray:
    """Read bands (1-based ``indexes``, default all) as a ``(C, H, W)`` array, optionally into ``out``.

    Raises:
        CorruptRasterError: unreadable or truncated file.
        BandError: an index is outside the file's bands.
    """
    path = os.fspath(path)
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(path) as src:
            idx = list(indexes) if indexes is not None else list(range(1, src.count + 1))
            bad = [i for i in idx if not 1 <= i <= src.count]
            if bad:
                raise BandError(path, f"band index {bad[0]} is outside 1..{src.count}")
            if out is not None:
                return src.read(idx, out=out)
            arr = src.read(idx)
            return arr.astype(dtype, copy=False) if dtype else arr
    except RasterioError as e:
        raise CorruptRasterError(path, _short(e, "truncated or unreadable raster")) from None


def write(path: str | os.PathLike, array: np.ndarray, crs: CRS | str | int, transform: Affine, *,
          band_names: Sequence[str] | None = None, nodata: float | None = None, compress: str | None = None,
          colormap: dict[int, tuple[int, int, int, int]] | None = None, tags: dict[str, str] | None = None,
          profile: str | dict[str, object] | None = None) -> Path:
    """Write a ``(C, H, W)`` (or ``(H, W)``) array as a GeoTIFF, atomically (temp file + rename).

    Args:
        path: target file; parent folders are created.
        array: pixel values; the file takes its dtype.
        crs: a rasterio CRS, an EPSG code or a CRS string.
        transform: the affine pixel -> CRS transform.
        band_names: written as band descriptions.
        nodata: nodata value, if any.
        compress: GDAL compression (``deflate``, ``lzw``) in 256 px tiles; none by default (like SEN12MS).
        colormap: a colour table for band 1 (uint8 class maps).
        tags: dataset-level metadata tags.
        profile: a :data:`TIFF_PROFILES` name or GDAL creation options (``{"driver": "COG", ...}`` for a COG);
            default ``sen12ms`` (GDAL's default layout).
    """
    arr = array[None] if array.ndim == 2 else array
    if isinstance(crs, int):
        crs = CRS.from_epsg(crs)
    options = dict(TIFF_PROFILES[profile] if isinstance(profile, str) else (profile or {}))
    if compress:
        options.update(compress=compress, tiled=True)
    driver = options.pop("driver", "GTiff")
    if options.get("tiled"):
        block = 256 if min(arr.shape[1:]) >= 256 else 16 * -(-max(arr.shape[1:]) // 16)
        options.setdefault("blockxsize", block)
        options.setdefault("blockysize", block)
    meta = {"driver": "GTiff", "width": arr.shape[2], "height": arr.shape[1], "count": arr.shape[0],
            "dtype": arr.dtype.name, "crs": crs, "transform": transform, "nodata": nodata}
    with atomic_path(path) as tmp, rasterio.Env(**GDAL_ENV):
        plain = tmp if driver == "GTiff" else Path(f"{tmp}.plain.tif")
        try:
            with rasterio.open(plain, "w", **meta, **(options if driver == "GTiff" else {})) as dst:
                dst.write(arr)
                for i, name in enumerate(band_names or (), start=1):
                    dst.set_band_description(i, name)
                if colormap:
                    dst.write_colormap(1, colormap)
                if tags:
                    dst.update_tags(**tags)
            if driver != "GTiff":  # COG and other copy-only drivers: write plainly, then translate
                rasterio.shutil.copy(plain, tmp, driver=driver, **options)
        finally:
            if plain != tmp:
                Path(plain).unlink(missing_ok=True)
    return Path(path)


def _short(err: Exception, fallback: str) -> str:
    """First line of a GDAL message without the path (the error already names it)."""
    msg = str(err).splitlines()[0].strip() if str(err) else ""
    return f"{fallback} ({msg})" if msg else fallback
