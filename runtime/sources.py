"""What ``esccs infer SRC`` runs over: the tiles of a data-set folder, or the windows of one large scene pair.

- **Tiles**: a SEN12MS / SEN12MS-CR folder, a paired-folder layout (``optical/``, ``sar/``, optional
  ``cloud_mask/``), or the index folder of ``esccs data synth`` (its ``target`` part). One :class:`Job` per sample,
  classified from the layout's observation (the cloudy ``s2_cloudy`` in a SEN12MS-CR folder or a card saying
  ``optical: s2_cloudy``, else ``s2``); a missing or unreadable observation fails that tile (never a swap to the clear
  S2). A sample without its SAR partner is *skipped and reported* (not run optical-only: the dual model has no
  optical-only head, and a silent fallback would hide missing data); the skip lands in the summary and the errors
  file like any bad tile.
- **Scene**: an optical GeoTIFF plus a SAR GeoTIFF on the same grid, cut into ``patch`` x ``patch`` windows every
  ``stride`` pixels. The window grid starts at pixel (0, 0), so with the default stride = patch and a block size that
  is a multiple of it (or divides it) every window reads whole blocks only; the last row and column of windows are
  shifted inward so every window is full (their cells still cover the scene's edge).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from esccs.errors import DataError, DatasetNotFoundError, GridMismatchError
from esccs.io.layouts import PAIRED_FOLDERS, read_card, scan
from esccs.io.names import LAYOUTS, try_parse_name
from esccs.io.raster import check_same_grid, inspect


@dataclass(frozen=True)
class Job:
    """One unit of inference: a tile (whole files) or a scene window.

    Attributes:
        id: unique id (the sample id, or ``r<row>_c<col>`` of the window grid).
        optical, sar, mask: files (``sar``/``mask`` may be ``None``: a missing SAR partner is reported as bad).
        window: ``(col_off, row_off, width, height)`` in the files' pixels, or ``None`` = the whole tile.
        cell: ``(row, col)`` in the scene's window grid (scene mode only).
    """

    id: str
    optical: str
    sar: str | None
    mask: str | None = None
    window: tuple[int, int, int, int] | None = None
    cell: tuple[int, int] | None = None


@dataclass
class Source:
    """The jobs of one ``esccs infer`` run and what the scan already had to skip.

    Attributes:
        kind: ``tiles`` or ``scene``.
        root: the folder or the optical scene file.
        jobs: in reading order.
        skipped: ``(path, reason)`` of files the scan could not pair (reported as failed tiles).
        layout: data-set layout name, or ``scene``.
        grid: scene mode: ``{"rows", "cols", "stride", "patch", "width", "height", "crs", "transform", ...}``.
    """

    kind: str
    root: Path
    jobs: list[Job]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = ""
    grid: dict = field(default_factory=dict)


def open_tiles(root: str | os.PathLike, part: str | None = None) -> Source:
    """Jobs for every sample of a data-set folder (see the module docstring).

    Raises:
        DatasetNotFoundError: the folder is missing, empty, or holds no known layout (one line).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(root, "no such folder")
    card = read_card(root)
    if card.get("kind") == "index":  # esccs data synth: source/ and target/ parts
        parts = card.get("parts", {})
        part = part or ("target" if "target" in parts else next(iter(parts), None))
        if part not in parts:
            raise DatasetNotFoundError(root, f"no part {part!r} (parts: {', '.join(parts) or 'none'})")
        root, card = root / parts[part], read_card(root / parts[part])
    found = scan(root, card, require=())
    observed = observed_optical(found.layout, card)
    jobs, skipped = [], list(found.skipped)
    for s in found.samples:
        optical = s.paths.get(observed) or _expected_path(s, observed, found.layout, root)
        if optical is None:
            skipped.append((str(next(iter(s.paths.values()))), f"no optical file for sample {s.id}"))
            continue
        sar = s.paths.get("s1")
        jobs.append(Job(s.id, str(optical), str(sar) if sar else None,
                        str(s.paths["cloud_mask"]) if "cloud_mask" in s.paths else None))
    return Source("tiles", root, jobs, skipped, found.layout)


def observed_optical(layout: str, card: dict) -> str:
    """The optical modality a layout's samples are classified from (never another image in its place).

    The card's ``optical``, else ``s2_cloudy`` in a SEN12MS-CR folder and ``s2`` otherwise.
    """
    return card.get("optical") or ("s2_cloudy" if layout == "sen12ms-cr" else "s2")


def _expected_path(sample, modality: str, layout: str, root: Path) -> Path | None:
    """Where ``modality`` of ``sample`` should be (the scan found no regular file there), or ``None`` if unknown.

    The job then points at that path and the reader fails the tile naming it (missing, or a directory), so a
    missing observation is that tile's error, never a silent swap to the clear S2.
    """
    if layout in LAYOUTS:
        name = try_parse_name(Path(sample.id))
        return name.with_sensor(modality).path(root, layout) if name else None
    folder = next((f for f, k in {**PAIRED_FOLDERS, "optical": modality}.items() if k == modality), None)
    if folder is None or not sample.paths:
        return None
    return next(iter(sample.paths.values())).parent.parent / folder / f"{sample.id}.tif"


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride`` from 0, the last one shifted inward to end at ``size``."""
    if size < patch:
        return []
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def open_scene(optical: str | os.PathLike, sar: str | os.PathLike, patch: int, stride: int | None = None,
               mask: str | os.PathLike | None = None) -> Source:
    """Windows over a large optical + SAR scene pair (same CRS, transform and size).

    Raises:
        CorruptRasterError: a file is not a readable GeoTIFF.
        GridMismatchError: the files are not on one grid.
        DataError: the scene is smaller than one window, or the stride is not positive.
    """
    stride = stride or patch
    if stride < 1:
        raise DataError(optical, f"stride must be >= 1, got {stride}")
    infos = [inspect(optical), inspect(sar)] + ([inspect(mask)] if mask else [])
    try:
        check_same_grid(infos)
    except GridMismatchError as err:
        raise GridMismatchError(err.path, f"{err.reason} (warp the SAR onto the optical grid first, e.g. "
                                          "gdalwarp -tr/-te from the optical file)") from None
    o = infos[0]
    if o.width < patch or o.height < patch:
        raise DataError(optical, f"scene {o.width}x{o.height} is smaller than the model input {patch}x{patch}")
    rows, cols = window_starts(o.height, patch, stride), window_starts(o.width, patch, stride)
    jobs = [Job(f"r{i:05d}_c{j:05d}", str(optical), str(sar), str(mask) if mask else None, (x, y, patch, patch),
                (i, j)) for i, y in enumerate(rows) for j, x in enumerate(cols)]
    block = _block_shape(optical)
    grid = {"rows": len(rows), "cols": len(cols), "stride": stride, "patch": patch, "width": o.width,
            "height": o.height, "crs": o.crs.to_wkt() if o.crs else None, "transform": list(o.transform)[:6],
            "row_starts": rows, "col_starts": cols, "block": block,
            "block_aligned": bool(block and all(stride % b == 0 or b % stride == 0 for b in block))}
    return Source("scene", Path(optical), jobs, [], "scene", grid)


def _block_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    import rasterio

    with rasterio.open(path) as src:
        return tuple(src.block_shapes[0]) if src.block_shapes else None
