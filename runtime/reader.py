"""Read one job straight into a row of a preallocated batch buffer, checking everything a bad tile can get wrong.

Reads run in a thread pool: GDAL releases the GIL while decoding, and every thread keeps its own dataset handles
(GDAL datasets are not thread-safe; a scene's files stay open per thread, tile files are opened once each). The GDAL
environment is set once per process in :func:`configure_gdal` (as torchgeo does), not per read.

Every failure is a :class:`~esccs.errors.DataError` whose message names the file and the problem in one line; the
pipeline records it and goes on.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from esccs.errors import BadTileError, CorruptRasterError, DataError, DTypeError, MissingPartnerError
from esccs.io.bands import file_band_order
from esccs.io.raster import RasterInfo, check_same_grid
from esccs.runtime.sources import Job
from esccs.spec import MASK_THICK, MASK_THIN

#: GDAL settings for many files read once each (torchgeo sets the same before its CLI runs)
GDAL_DEFAULTS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_CACHEMAX": "256", "GDAL_NUM_THREADS": "1",
                 "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff"}
#: cloud estimate without a mask: mean of B02, B03, B04 above this L1C DN, and not snow (NDSI with B11 < 0.4)
CLOUD_VISIBLE_DN = 2000.0
CLOUD_BANDS = ("B02", "B03", "B04")
#: the one optical dtype the models are trained on: SEN12MS / SEN12MS-CR S2 L1C DN (any other is refused, not cast)
OPTICAL_DTYPE = "uint16"


def configure_gdal() -> dict[str, str]:
    """Set the GDAL defaults in the process environment once (user settings win); return what is in force."""
    for key, value in GDAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in GDAL_DEFAULTS}


@dataclass(frozen=True)
class Bands:
    """What the model takes: optical and SAR band names in channel order, and the patch size."""

    optical: tuple[str, ...]
    sar: tuple[str, ...]
    patch: int


def _info(path: str, src) -> RasterInfo:
    return RasterInfo(path, src.count, src.dtypes[0], src.crs, src.transform, src.width, src.height, src.nodata,
                      tuple(src.descriptions))


class TileReader:
    """Thread-safe reader of :class:`Job` s into ``(C, P, P)`` float32 rows; one instance per run.

    Args:
        bands: the model's bands and patch size.
        keep_open: keep dataset handles open per thread (scene mode: the same files for every window).
        checked_grid: the files' grids were checked once up front (scene mode), skip the per-job check.
    """

    def __init__(self, bands: Bands, keep_open: bool = False, checked_grid: bool = False) -> None:
        self.bands, self.keep_open, self.checked_grid = bands, keep_open, checked_grid
        self._local = threading.local()
        self._lock = threading.Lock()
        self._kept: list = []  # every handle kept open, for close()

    # ---------------------------------------------------------------------------------------------- dataset handles
    def _open(self, path: str):
        cache = getattr(self._local, "handles", None)
        if cache is None:
            cache = self._local.handles = {}
        src = cache.get(path) if self.keep_open else None
        if src is None:
            if not os.path.isfile(path):  # GDAL would call a directory "not a supported format"
                if os.path.isdir(path):
                    raise CorruptRasterError(path, "a directory, not a GeoTIFF file")
                raise MissingPartnerError(path, "no such file")
            try:
                src = rasterio.open(path)
            except RasterioError as e:
                raise CorruptRasterError(path, f"not a readable GeoTIFF ({_first(e)})") from None
            if self.keep_open:
                cache[path] = src
                with self._lock:
                    self._kept.append(src)
        return src

    def _close(self, src) -> None:
        if not self.keep_open:
            src.close()

    def close(self) -> None:
        """Close every handle kept open (after the reader threads are done)."""
        with self._lock:
            for src in self._kept:
                src.close()
            self._kept = []

    # -------------------------------------------------------------------------------------------------------- read
    def read(self, job: Job, optical_out: np.ndarray, sar_out: np.ndarray) -> dict:
        """Read ``job`` into ``optical_out`` ``(C_o, P, P)`` and ``sar_out`` ``(C_s, P, P)`` (raw DN and dB).

        Returns:
            ``{"id", "optical", "sar", "cloud_mask", "window", "crs", "bounds", "coverage", "coverage_source",
            "sar_nan", "cropped"}``.

        Raises:
            DataError: a one-line reason naming the file (missing SAR partner, unreadable, wrong bands or dtype,
                grids that differ, tile smaller than the model input, all-NaN SAR, all-nodata optical).
        """
        if job.sar is None:
            raise DataError(job.optical, f"no SAR partner for sample {job.id} (skipped: the model needs both)")
        srcs = []
        try:
            o = self._open(job.optical)
            srcs.append(o)
            s = self._open(job.sar)
            srcs.append(s)
            infos = [_info(job.optical, o), _info(job.sar, s)]
            m = None
            if job.mask:
                m = self._open(job.mask)
                srcs.append(m)
                infos.append(_info(job.mask, m))
            if not self.checked_grid:
                check_same_grid(infos)
            window, cropped = self._window(job, infos[0])
            self._read_bands(o, infos[0], "s2", self.bands.optical, window, optical_out)
            self._read_bands(s, infos[1], "s1", self.bands.sar, window, sar_out)
            meta = self._validate(job, o, optical_out, sar_out)
            coverage, source = self._coverage(m, infos[-1] if m else None, window, optical_out)
        except RasterioError as e:
            raise CorruptRasterError(srcs[-1].name if srcs else job.optical, f"truncated or unreadable "
                                                                             f"({_first(e)})") from None
        finally:
            for src in srcs:
                self._close(src)
        w = infos[0].transform
        return {"id": job.id, "optical": job.optical, "sar": job.sar, "cloud_mask": job.mask,
                "window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
                "cell": list(job.cell) if job.cell else None,
                "crs": infos[0].crs.to_string() if infos[0].crs else None,
                "bounds": [float(v) for v in window_bounds(window, w)], "coverage": coverage,
                "coverage_source": source, "cropped": cropped, **meta}

    def _window(self, job: Job, info: RasterInfo) -> tuple[Window, bool]:
        p = self.bands.patch
        if job.window is not None:
            return Window(*job.window), False
        if info.width < p or info.height < p:
            raise BadTileError(info.path, f"tile {info.width}x{info.height} is smaller than the model input {p}x{p}")
        if (info.width, info.height) == (p, p):
            return Window(0, 0, p, p), False
        return Window((info.width - p) // 2, (info.height - p) // 2, p, p), True  # centre crop, reported

    def _read_bands(self, src, info: RasterInfo, modality: str, names: tuple[str, ...], window: Window,
                    out: np.ndarray) -> None:
        if modality == "s2" and info.dtype != OPTICAL_DTYPE:  # a uint8 / int16 / float export is not L1C DN
            raise DTypeError(info.path, f"optical must be {OPTICAL_DTYPE} L1C DN (reflectance x 10000, as SEN12MS S2), "
                                        f"found {info.dtype}: a rescaled export would be misclassified")
        order = file_band_order(info, modality)
        missing = [b for b in names if b not in order]
        if missing:
            raise DataError(info.path, f"band {missing[0]} is not in this file (bands: {', '.join(order)})")
        if modality == "s1" and np.dtype(info.dtype).kind != "f":
            raise DTypeError(info.path, f"s1 must be float32 dB, found {info.dtype}")
        try:
            src.read([order.index(b) + 1 for b in names], window=window, out=out)
        except RasterioError as e:  # name this file, not whichever was opened last
            raise CorruptRasterError(info.path, f"truncated or unreadable ({_first(e)})") from None

    def _validate(self, job: Job, o, optical: np.ndarray, sar: np.ndarray) -> dict:
        nan = ~np.isfinite(sar)
        n_nan = int(nan.sum())
        if n_nan == sar.size:
            raise BadTileError(job.sar, "SAR is all NaN (no backscatter in this tile)")
        nodata = o.nodata if o.nodata is not None else 0
        if np.all(optical == nodata) or not np.isfinite(optical).any():
            raise BadTileError(job.optical, f"optical is all nodata ({nodata:g})")
        return {"sar_nan": n_nan}

    def _coverage(self, m, info: RasterInfo | None, window: Window, optical: np.ndarray) -> tuple[float | None, str]:
        if m is not None:
            if np.dtype(info.dtype).kind not in "ui":
                raise DTypeError(info.path, f"cloud mask must be an integer raster, found {info.dtype}")
            try:
                mask = m.read(1, window=window)
            except RasterioError as e:
                raise CorruptRasterError(info.path, f"truncated or unreadable ({_first(e)})") from None
            return float(np.isin(mask, (MASK_THICK, MASK_THIN)).mean()), "mask"
        return estimate_coverage(optical, self.bands.optical), "estimated" if _can_estimate(self.bands.optical) \
            else "none"


def _can_estimate(bands: tuple[str, ...]) -> bool:
    return all(b in bands for b in CLOUD_BANDS)


def estimate_coverage(optical: np.ndarray, bands: tuple[str, ...]) -> float | None:
    """Cloud fraction of a raw L1C tile without a mask, from a simple spectral rule.

    Cloud = bright in the visible (mean of B02, B03, B04 above :data:`CLOUD_VISIBLE_DN`) and not snow (NDSI from
    B03 and B11 below 0.4, when B11 is there). SEN12MS-CR's rule set uses the same cues; on our synthetic data
    this agrees with the true mask on 94 % of pixels. ``None`` when the model's bands lack B02-B04.
    """
    if not _can_estimate(bands):
        return None
    vis = np.mean([optical[bands.index(b)] for b in CLOUD_BANDS], axis=0)
    cloud = vis > CLOUD_VISIBLE_DN
    if "B11" in bands:
        g, swir = optical[bands.index("B03")], optical[bands.index("B11")]
        cloud &= (g - swir) / np.maximum(g + swir, 1.0) < 0.4
    return float(cloud.mean())


def _first(err: BaseException) -> str:
    """First line of a GDAL error; rasterio's "See previous exception" points at the chained, useful one."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    inner = err.__cause__ or err.__context__
    if "previous exception" in msg and inner is not None:
        return _first(inner)
    return msg[:160]


