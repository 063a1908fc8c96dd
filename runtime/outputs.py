"""Results that survive a crash: an append-only done-manifest, and final files written through temp files + rename.

Every processed tile (classified or failed) is one JSON line in ``<base>.manifest.jsonl``, appended and flushed per
batch (a killed process loses nothing it flushed; an fsync at most once a second guards against a host crash).
``--resume`` reads it back (a torn last line from a kill -9 is cut off), skips the ids already there, and the final
files are always rendered from the whole manifest, so each tile has exactly one row however often the run was
interrupted. Final files (CSV, GeoJSON in EPSG:4326, Parquet when pyarrow is installed, the scene
class and confidence GeoTIFFs, the errors CSV and the summary JSON) are each written to a temporary name and renamed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from esccs.errors import ConfigError, DependencyMissingError
from esccs.io.atomic import atomic_path, write_json, write_text

FORMATS = {".csv": "csv", ".geojson": "geojson", ".json": "geojson", ".parquet": "parquet"}
#: CSV / Parquet columns, in order
COLUMNS = ("id", "class_index", "class_name", "confidence", "top3", "w_optical", "w_sar", "cloud_coverage",
           "coverage_source", "optical", "sar", "cloud_mask", "window", "cropped", "crs", "minx", "miny", "maxx",
           "maxy", "footprint_wgs84")
#: class-map colours (RGBA) by class index; 255 = nodata (transparent)
PALETTE = [(31, 119, 180), (44, 160, 44), (188, 189, 34), (127, 127, 127), (214, 39, 40), (255, 127, 14),
           (140, 86, 75), (227, 119, 194), (23, 190, 207), (148, 103, 189), (174, 199, 232), (152, 223, 138),
           (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141)]


def output_format(path: Path) -> str:
    """``csv``, ``geojson`` or ``parquet`` from the suffix.

    Raises:
        ConfigError: unknown suffix; DependencyMissingError: Parquet without pyarrow.
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{path}: unknown output type {path.suffix!r}; use .csv, .geojson or .parquet")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DependencyMissingError("pyarrow", "parquet", f"{path.name} (Parquet output)") from None
    return fmt


class Manifest:
    """The done-manifest of one run: one JSON line per processed job (``status`` ``ok`` or ``error``)."""

    #: seconds between fsyncs: every batch is flushed (a killed process loses nothing), fsync guards a host crash
    FSYNC_EVERY_S = 1.0

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = None
        self._synced = 0.0

    def load(self) -> list[dict]:
        """Rows recorded so far; a torn last line (kill -9 mid-write) is cut off the file."""
        if not self.path.exists():
            return []
        rows, good = [], 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break
                good += len(line)
        if good != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return rows

    def append(self, rows: list[dict]) -> None:
        """Append rows; flushed before returning (survives kill -9), fsync-ed at most every second and on close."""
        if not rows:
            return
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open across batches
        self._f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
        self._f.flush()
        now = time.monotonic()
        if now - self._synced >= self.FSYNC_EVERY_S:
            os.fsync(self._f.fileno())
            self._synced = now

    def close(self) -> None:
        """Close the file."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


def unique_rows(rows: list[dict]) -> list[dict]:
    """One row per id (the last one recorded), in first-seen order."""
    last: dict[str, dict] = {}
    for r in rows:
        last[r["id"]] = r
    return list(last.values())


def add_footprints(rows: list[dict]) -> None:
    """Set ``footprint_wgs84`` (a closed lon/lat ring) on every row, one reprojection call per CRS."""
    from rasterio.warp import transform

    by_crs: dict[str | None, list[dict]] = defaultdict(list)
    for r in rows:
        by_crs[r.get("crs")].append(r)
    for crs, group in by_crs.items():
        if crs is None:
            for r in group:
                r["footprint_wgs84"] = None
            continue
        xs, ys = [], []
        for r in group:
            x0, y0, x1, y1 = r["bounds"]
            xs += [x0, x1, x1, x0, x0]
            ys += [y0, y0, y1, y1, y0]
        lon, lat = transform(crs, "EPSG:4326", xs, ys)
        for k, r in enumerate(group):
            r["footprint_wgs84"] = [[round(lon[5 * k + i], 7), round(lat[5 * k + i], 7)] for i in range(5)]


def flat_row(r: dict) -> dict[str, Any]:
    """A classified row as flat columns (CSV / Parquet)."""
    x0, y0, x1, y1 = r["bounds"]
    top3 = "|".join(f"{name}:{p:.4f}" for name, p in r["top3"])
    ring = r.get("footprint_wgs84")
    wkt = ("POLYGON((" + ", ".join(f"{x} {y}" for x, y in ring) + "))") if ring else ""
    return {"id": r["id"], "class_index": r["class_index"], "class_name": r["class_name"],
            "confidence": round(r["confidence"], 6), "top3": top3, "w_optical": round(r["w_optical"], 6),
            "w_sar": round(r["w_sar"], 6), "cloud_coverage": r["coverage"], "coverage_source": r["coverage_source"],
            "optical": r["optical"], "sar": r["sar"], "cloud_mask": r["cloud_mask"] or "",
            "window": " ".join(str(v) for v in r["window"]), "cropped": bool(r.get("cropped")),
            "crs": r["crs"] or "", "minx": x0, "miny": y0, "maxx": x1, "maxy": y1, "footprint_wgs84": wkt}


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Atomically write the classified rows as CSV."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(flat_row(r))
    return write_text(path, buf.getvalue())


def write_geojson(path: Path, rows: list[dict]) -> Path:
    """Atomically write an RFC 7946 FeatureCollection: footprints in EPSG:4326 (lon, lat), one feature per tile."""
    feats = []
    for r in rows:
        props = {k: v for k, v in flat_row(r).items() if k not in ("footprint_wgs84", "top3")}
        props["top3"] = [{"class": n, "probability": round(p, 6)} for n, p in r["top3"]]
        geom = {"type": "Polygon", "coordinates": [r["footprint_wgs84"]]} if r.get("footprint_wgs84") else None
        feats.append({"type": "Feature", "id": r["id"], "geometry": geom, "properties": props})
    return write_text(path, json.dumps({"type": "FeatureCollection", "features": feats}) + "\n")


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """Atomically write the classified rows as Parquet (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [flat_row(r) for r in rows]
    table = pa.table({c: [f[c] for f in flat] for c in COLUMNS}) if flat else pa.table({c: [] for c in COLUMNS})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_errors(path: Path, rows: list[dict]) -> Path:
    """Atomically write ``id,path,reason`` of every failed tile."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "reason"])
    for r in rows:
        w.writerow([r["id"], r["path"], r["reason"]])
    return write_text(path, buf.getvalue())


WRITERS = {"csv": write_csv, "geojson": write_geojson, "parquet": write_parquet}


def write_tables(paths: list[Path], ok: list[dict]) -> list[Path]:
    """Write every requested table (footprints are computed once)."""
    add_footprints(ok)
    return [WRITERS[output_format(p)](p, ok) for p in paths]


# ---------------------------------------------------------------------------------------------------- scene rasters
def nearest_window(size: int, starts: list[int], patch: int) -> np.ndarray:
    """For every pixel along one axis, the index of the window whose centre is nearest (ties to the lower one)."""
    centres = np.asarray(starts, np.float64) + patch / 2.0
    mids = (centres[1:] + centres[:-1]) / 2.0
    return np.searchsorted(mids, np.arange(size) + 0.5, side="left").astype(np.int64)


def write_scene_maps(base: Path, grid: dict, ok: list[dict], classes: tuple[str, ...],
                     strip: int = 512) -> tuple[Path, Path]:
    """Class map (uint8, colour table, nodata 255) and confidence (float32, nodata NaN) on the scene's own grid.

    Each pixel takes the result of the window whose centre is nearest, so with stride = patch every window paints
    its own footprint. Same CRS, transform and size as the input; written in strips (memory stays flat).
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.windows import Window

    cls = np.full((grid["rows"], grid["cols"]), 255, np.uint8)
    conf = np.full((grid["rows"], grid["cols"]), np.nan, np.float32)
    for r in ok:
        i, j = r["cell"]
        cls[i, j], conf[i, j] = r["class_index"], r["confidence"]
    ri = nearest_window(grid["height"], grid["row_starts"], grid["patch"])
    ci = nearest_window(grid["width"], grid["col_starts"], grid["patch"])
    profile = {"driver": "GTiff", "width": grid["width"], "height": grid["height"], "count": 1,
               "crs": CRS.from_wkt(grid["crs"]) if grid["crs"] else None, "transform": Affine(*grid["transform"]),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    paths = (base.with_name(base.name + ".class.tif"), base.with_name(base.name + ".confidence.tif"))
    for path, coarse, dtype, nodata in ((paths[0], cls, "uint8", 255), (paths[1], conf, "float32", float("nan"))):
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", dtype=dtype, nodata=nodata, **profile) as dst:
            for y0 in range(0, grid["height"], strip):
                y1 = min(grid["height"], y0 + strip)
                dst.write(coarse[ri[y0:y1]][:, ci], 1, window=Window(0, y0, grid["width"], y1 - y0))
            if dtype == "uint8":
                dst.write_colormap(1, {k: (*PALETTE[k % len(PALETTE)], 255) for k in range(len(classes))}
                                   | {255: (0, 0, 0, 0)})
                dst.set_band_description(1, "class")
                dst.update_tags(classes=json.dumps(list(classes)), nodata_meaning="not classified")
            else:
                dst.set_band_description(1, "confidence")
    return paths


def write_summary(path: Path, summary: dict) -> Path:
    """Atomically write the run summary JSON."""
    return write_json(path, summary)
