"""Results that survive a crash: an append-only done-manifest, and final files written through temp files + rename.

Every processed tile (classified or failed) is one JSON line in ``<base>.manifest.jsonl``, appended and flushed per
batch (a killed process loses nothing it flushed; an fsync at most once a second guards against a host crash).
``--resume`` reads it back (a torn last line from a kill -9 is cut off), skips the ids already there, and the final
files are always rendered from the whole manifest, so each tile has exactly one row however often the run was
interrupted. Final files (CSV, GeoJSON in EPSG:4326, Parquet when pyarrow is installed, the scene
class and confidence GeoTIFFs, the errors CSV and the summary JSON) are each written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from esccs.errors import ConfigError, DependencyMissingError
from esccs.io.atomic import atomic_path, write_json

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


def iter_manifest(path: Path, chunk: int = 4096) -> Iterator[list[dict]]:
    """The manifest's rows, one per id (the last one recorded), in chunks; memory is O(ids), not O(rows).

    Two passes over the file: the first finds the line that holds each id's last record, the second parses and
    yields those lines ``chunk`` at a time.
    """
    if not Path(path).exists():
        return
    last: dict[str, int] = {}
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            last[json.loads(line)["id"]] = i
    keep = set(last.values())
    del last
    batch: list[dict] = []
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i in keep:
                batch.append(json.loads(line))
                if len(batch) == chunk:
                    yield batch
                    batch = []
    if batch:
        yield batch


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


class _CsvTable:
    def __init__(self, f) -> None:
        self.w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        self.w.writeheader()

    def add(self, rows: list[dict]) -> None:
        self.w.writerows(flat_row(r) for r in rows)

    def close(self) -> None:
        pass


class _GeoJsonTable:
    """An RFC 7946 FeatureCollection, streamed: footprints in EPSG:4326 (lon, lat), one feature per tile."""

    def __init__(self, f) -> None:
        self.f, self.first = f, True
        f.write('{"type": "FeatureCollection", "features": [\n')

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            props = {k: v for k, v in flat_row(r).items() if k not in ("footprint_wgs84", "top3")}
            props["top3"] = [{"class": n, "probability": round(p, 6)} for n, p in r["top3"]]
            geom = {"type": "Polygon", "coordinates": [r["footprint_wgs84"]]} if r.get("footprint_wgs84") else None
            feat = {"type": "Feature", "id": r["id"], "geometry": geom, "properties": props}
            self.f.write(("" if self.first else ",\n") + json.dumps(feat))
            self.first = False

    def close(self) -> None:
        self.f.write("\n]}\n")


class _ParquetTable:
    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.pq, self.path, self.writer = pa, pq, path, None

    def add(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = self.pa.Table.from_pylist([flat_row(r) for r in rows])
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> None:
        if self.writer is None:  # no classified tile: an empty table with the columns
            self.pq.write_table(self.pa.table({c: self.pa.array([], self.pa.string()) for c in COLUMNS}), self.path)
        else:
            self.writer.close()


def finalize(manifest: Path, outputs: list[Path], errors: Path, grid: dict | None = None) -> dict[str, Any]:
    """Render the tables and the errors CSV from the manifest, streaming (memory flat in the number of tiles).

    Every file is written to a temporary name and renamed only when all of them are complete.

    Returns:
        ``{"classified", "failed", "reasons" (kind -> count), "failed_tiles" (first 50), "written",
        "cells" ((class, confidence) coarse grids in scene mode, else None)}``.
    """
    out: dict[str, Any] = {"classified": 0, "failed": 0, "reasons": defaultdict(int), "failed_tiles": []}
    cells = None
    if grid is not None:
        cells = (np.full((grid["rows"], grid["cols"]), 255, np.uint8),
                 np.full((grid["rows"], grid["cols"]), np.nan, np.float32))
    with contextlib.ExitStack() as stack:
        tables = []
        for p in outputs:
            fmt = output_format(p)
            tmp = stack.enter_context(atomic_path(p))
            if fmt == "parquet":
                tables.append(_ParquetTable(tmp))
            else:
                f = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
                tables.append(_CsvTable(f) if fmt == "csv" else _GeoJsonTable(f))
        ef = stack.enter_context(open(stack.enter_context(atomic_path(errors)), "w", newline="", encoding="utf-8"))
        ew = csv.writer(ef, lineterminator="\n")
        ew.writerow(["id", "path", "reason"])
        for rows in iter_manifest(manifest):
            ok = [r for r in rows if r["status"] == "ok"]
            for r in rows:
                if r["status"] != "ok":
                    ew.writerow([r["id"], r["path"], r["reason"]])
                    out["reasons"][KINDS.get(r.get("kind", ""), r.get("kind") or "other")] += 1
                    if len(out["failed_tiles"]) < 50:
                        out["failed_tiles"].append(f"{r['path']}: {r['reason']}")
            out["failed"] += len(rows) - len(ok)
            out["classified"] += len(ok)
            add_footprints(ok)
            for t in tables:
                t.add(ok)
            if cells is not None:
                for r in ok:
                    i, j = r["cell"]
                    cells[0][i, j], cells[1][i, j] = r["class_index"], r["confidence"]
        for t in tables:
            t.close()
    out["reasons"], out["written"], out["cells"] = dict(out["reasons"]), list(outputs), cells
    return out


#: summary wording of each kind of tile failure
KINDS = {"CorruptRasterError": "unreadable, truncated or not a GeoTIFF", "BandError": "wrong bands",
         "DTypeError": "wrong data type", "GridMismatchError": "optical and SAR not on one grid",
         "BadTileError": "unusable tile (all-NaN SAR, all-nodata optical, too small)",
         "MissingPartnerError": "missing SAR partner", "DataError": "bad input"}


# ---------------------------------------------------------------------------------------------------- scene rasters
def nearest_window(size: int, starts: list[int], patch: int) -> np.ndarray:
    """For every pixel along one axis, the index of the window whose centre is nearest (ties to the lower one)."""
    centres = np.asarray(starts, np.float64) + patch / 2.0
    mids = (centres[1:] + centres[:-1]) / 2.0
    return np.searchsorted(mids, np.arange(size) + 0.5, side="left").astype(np.int64)


def write_scene_maps(base: Path, grid: dict, cells: tuple[np.ndarray, np.ndarray], classes: tuple[str, ...],
                     strip: int = 512) -> tuple[Path, Path]:
    """Class map (uint8, colour table, nodata 255) and confidence (float32, nodata NaN) on the scene's own grid.

    Each pixel takes the result of the window whose centre is nearest, so with stride = patch every window paints
    its own footprint. Same CRS, transform and size as the input; written in strips (memory stays flat).
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.windows import Window

    cls, conf = cells  # (rows, cols) window grid: class (255 = none) and confidence (NaN = none)
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
