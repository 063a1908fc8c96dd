"""A fast reader for plain GeoTIFF tiles, checked against rasterio, with rasterio as the fallback.

Why: on SEN12MS-sized tiles GDAL spends its time around the pixels, not on them. Measured on a 2-core machine
(256 px tiles written as SEN12MS ships them: uncompressed, pixel-interleaved, one-row strips), per file:
``rasterio.open`` + CRS + transform about 1.2 ms, ``read()`` of the 13-band S2 about 9 ms (the block cache
copies 256 one-row strips per band), and a Python ``read()`` of the whole file 11 us. ``tifffile`` needs about
0.48 ms per file just to open one, so this module parses the few tags a tile needs itself: one ``read()`` of the
file, a small TIFF/BigTIFF IFD parser, numpy for the layout and the predictors, stdlib codecs.

What it takes (everything else raises :class:`Unsupported`, and the caller reads that file with rasterio):

- classic TIFF and BigTIFF, either byte order; first IFD a full-resolution image (COG overviews are ignored);
- striped or tiled, pixel- or band-interleaved (``PlanarConfiguration`` 1 or 2);
- uncompressed, DEFLATE, LZMA; LZW and ZSTD when ``imagecodecs`` (LZW, ZSTD) or a zstd module is installed;
- predictor none, horizontal (2) and floating point (3);
- 8/16/32/64-bit unsigned, signed and float samples (not float16, complex or packed bits);
- GeoTIFF georeferencing from tie point + pixel scale or a model transformation; GDAL nodata and band
  descriptions.

Self-check: the first file of each *signature* (the layout and georeferencing keys: everything but the tie point
and the pixel offsets, so all tiles of one scene share one) is read with rasterio as well, and the signature is
used only if rasterio agrees on count, dtype, size, transform, nodata, descriptions and every pixel byte. The
CRS, nodata and descriptions of that signature are then rasterio's own objects, reused for every later tile.
A signature rasterio disagrees on goes to rasterio for good (logged once).
"""

from __future__ import annotations

import copy
import logging
import lzma
import math
import os
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine

from esccs.io.raster import RasterInfo

log = logging.getLogger(__name__)

#: files larger than this go to rasterio (a tile is a few MB; whole-file reads are for tiles, not scenes)
MAX_FILE_BYTES = 256 * 2**20
#: sidecars GDAL reads when it may look beside a file (with GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR it never does)
SIDECARS = (".aux.xml", ".tfw", ".tifw", ".wld", ".msk")

# TIFF field types: struct code and size
_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1), 7: ("B", 1),
          8: ("h", 2), 9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8), 13: ("I", 4), 16: ("Q", 8),
          17: ("q", 8), 18: ("Q", 8)}
_NUMERIC = {1: "u1", 3: "u2", 4: "u4", 6: "i1", 7: "u1", 8: "i2", 9: "i4", 11: "f4", 12: "f8", 13: "u4",
            16: "u8", 17: "i8", 18: "u8"}
# tags the parser keeps (everything else is ignored; the ones that change how GDAL reads make it decline)
_WANTED = {254, 256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339,
           33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113}
_SAMPLE_KIND = {1: "u", 2: "i", 3: "f"}
_ARRAYS = {273, 279, 324, 325}  # strip/tile offsets and byte counts: numpy arrays


class Unsupported(Exception):
    """The fast path does not take this file; the message says why (the caller reads it with rasterio)."""


def _zstd_decoder() -> Callable[[bytes], bytes] | None:
    try:  # Python 3.14+
        from compression import zstd  # type: ignore[import-not-found]

        return zstd.decompress
    except ImportError:
        pass
    try:
        import imagecodecs  # type: ignore[import-not-found]

        return imagecodecs.zstd_decode
    except (ImportError, AttributeError):
        pass
    try:
        import zstandard  # type: ignore[import-not-found]

        return zstandard.ZstdDecompressor().decompressobj().decompress
    except ImportError:
        return None


def _lzw_decoder() -> Callable[[bytes], bytes] | None:
    try:
        import imagecodecs  # type: ignore[import-not-found]

        return imagecodecs.lzw_decode
    except (ImportError, AttributeError):
        return None


def _codecs() -> dict[int, Callable[[bytes], bytes] | None]:
    """TIFF compression code -> decoder (``None``: no decode step); codes missing here are not taken."""
    table: dict[int, Callable[[bytes], bytes] | None] = {1: None, 8: zlib.decompress, 32946: zlib.decompress,
                                                         34925: lzma.decompress}
    for code, factory in ((5, _lzw_decoder), (50000, _zstd_decoder)):
        dec = factory()
        if dec is not None:
            table[code] = dec
    return table


CODECS = _codecs()


@dataclass
class Tiff:
    """The first image of one TIFF file, parsed, with the file's bytes (see the module docstring).

    Attributes:
        path: the file.
        data: the whole file.
        dtype: the samples' dtype in file byte order.
        width, height, count: pixels and samples per pixel (bands).
        planar: 1 pixel-interleaved, 2 band-interleaved.
        block: ``(rows, cols)`` of one strip or tile; ``tiled`` tells which.
        offsets, counts: byte offset and size of every strip or tile (per band first when band-interleaved).
        compression, predictor: TIFF codes.
        tiepoint, scale, matrix: GeoTIFF georeferencing tags (``None`` when absent).
        raster_type: GTRasterTypeGeoKey (1 area, 2 point).
        signature: the keys that decide how GDAL reads header and pixels, apart from per-tile values.
        problem: why the block table cannot be read (checked once per layout), or ``None``.
        contiguous: uncompressed strips back to back in file order (the pixels are read in place).
    """

    path: str
    data: bytes
    dtype: np.dtype
    width: int
    height: int
    count: int
    planar: int
    tiled: bool
    block: tuple[int, int]
    offsets: np.ndarray
    counts: np.ndarray
    compression: int
    predictor: int
    tiepoint: tuple[float, ...] | None
    scale: tuple[float, ...] | None
    matrix: tuple[float, ...] | None
    raster_type: int
    signature: tuple
    problem: str | None = None
    contiguous: bool = False

    # ------------------------------------------------------------------------------------------------ header
    def transform(self) -> Affine:
        """The pixel -> CRS transform, as GDAL derives it from the GeoTIFF tags."""
        if self.matrix is not None:
            m = self.matrix
            gt = [m[3], m[0], m[1], m[7], m[4], m[5]]
        elif self.tiepoint is not None and self.scale is not None:
            tp, sc = self.tiepoint, self.scale
            gt = [tp[3] - tp[0] * sc[0], sc[0], 0.0, tp[4] - tp[1] * -sc[1], 0.0, -sc[1]]
        else:
            return Affine.identity()
        if self.raster_type == 2:  # PixelIsPoint: GDAL moves the origin to the pixel corner
            gt[0] -= gt[1] * 0.5 + gt[2] * 0.5
            gt[3] -= gt[4] * 0.5 + gt[5] * 0.5
        return Affine.from_gdal(*gt)

    # ------------------------------------------------------------------------------------------------ pixels
    def read(self, indexes: Sequence[int] | None = None, window: tuple[int, int, int, int] | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """Bands ``indexes`` (1-based, default all) of ``window`` as ``(C, h, w)``, like rasterio's ``read``.

        ``window`` is ``(col_off, row_off, width, height)`` (default: the whole image); the samples are cast into
        ``out`` when given, else returned in their own dtype (native byte order).

        Raises:
            Unsupported: the window is outside the image, or the pixel data are truncated or do not decode.
        """
        idx = list(range(self.count)) if indexes is None else [int(i) - 1 for i in indexes]
        if any(not 0 <= i < self.count for i in idx):
            raise Unsupported(f"band index outside 1..{self.count}")
        c0, r0, w, h = window if window is not None else (0, 0, self.width, self.height)
        if c0 < 0 or r0 < 0 or w < 1 or h < 1 or c0 + w > self.width or r0 + h > self.height:
            raise Unsupported("window outside the image")
        if out is None:
            out = np.empty((len(idx), h, w), self.dtype.newbyteorder("="))
        elif out.shape != (len(idx), h, w):
            raise ValueError(f"out has shape {out.shape}, the read gives {(len(idx), h, w)}")
        planes = self._planes()  # (planes, H, W, samples per plane)
        rows, cols = slice(r0, r0 + h), slice(c0, c0 + w)
        for k, i in enumerate(idx):
            src = planes[i, rows, cols, 0] if self.planar == 2 else planes[0, rows, cols, i]
            np.copyto(out[k], src, casting="unsafe")
        return out

    def _planes(self) -> np.ndarray:
        """The whole image as ``(planes, H, W, samples per plane)`` in file dtype (a view when possible)."""
        if self.problem:
            raise Unsupported(self.problem)
        n_planes, sp = (self.count, 1) if self.planar == 2 else (1, self.count)
        if self.contiguous:  # strips back to back in file order: the pixels are one array, no copy
            arr = np.frombuffer(self.data, self.dtype, count=n_planes * self.height * self.width * sp,
                                offset=int(self.offsets[0]))
            return arr.reshape(n_planes, self.height, self.width, sp)
        bh, bw = self.block
        across, down = math.ceil(self.width / bw), math.ceil(self.height / bh)
        full = np.empty((n_planes, down * bh, across * bw, sp), self.dtype.newbyteorder("="))
        decode = CODECS.get(self.compression)
        for p in range(n_planes):
            for r in range(down):
                seg_rows = bh if self.tiled else min(bh, self.height - r * bh)
                for c in range(across):
                    s = (p * down + r) * across + c
                    full[p, r * bh:r * bh + seg_rows, c * bw:(c + 1) * bw] = self._segment(s, seg_rows, bw, sp,
                                                                                         decode)
        return full[:, :self.height, :self.width]

    def _segment(self, s: int, rows: int, cols: int, sp: int, decode) -> np.ndarray:
        off, cnt = int(self.offsets[s]), int(self.counts[s])
        raw = memoryview(self.data)[off:off + cnt]
        try:
            buf = decode(raw) if decode is not None else raw
        except Exception as e:  # noqa: BLE001 - zlib/lzma/zstd errors have no common base
            raise Unsupported(f"block {s} does not decode ({type(e).__name__})") from None
        n = rows * cols * sp
        if len(buf) < n * self.dtype.itemsize:
            raise Unsupported(f"block {s} is short ({len(buf)} bytes)")
        if self.predictor == 3:
            return _undo_float_predictor(buf, rows, cols, sp, self.dtype)
        arr = np.frombuffer(buf, self.dtype, count=n).reshape(rows, cols, sp)
        if self.predictor == 2:
            native = arr.astype(self.dtype.newbyteorder("="))
            work = native.view(f"u{native.dtype.itemsize}") if native.dtype.kind == "f" else native
            np.cumsum(work, axis=1, dtype=work.dtype, out=work)
            return native
        return arr


def _undo_float_predictor(buf, rows: int, cols: int, sp: int, dtype: np.dtype) -> np.ndarray:
    """Undo TIFF predictor 3 (floating point) on one decoded block.

    Per row the bytes are differenced with a stride of one pixel and stored most significant byte plane first:
    a running sum of the bytes, then gathering the planes back into big-endian words, restores the samples.
    """
    item = dtype.itemsize
    b = np.frombuffer(buf, np.uint8, count=rows * cols * sp * item).reshape(rows, cols * item, sp)
    acc = np.cumsum(b, axis=1, dtype=np.uint8).reshape(rows, item, cols * sp)
    words = np.ascontiguousarray(acc.transpose(0, 2, 1)).view(f">{dtype.kind}{item}")
    return words.reshape(rows, cols, sp)


# ---------------------------------------------------------------------------------------------------- parsing
def open_tiff(path: str | os.PathLike) -> Tiff:
    """Read ``path`` whole and parse its first image.

    Raises:
        FileNotFoundError, IsADirectoryError: no file there, or a folder.
        Unsupported: not a TIFF, not complete, or a layout this reader does not take (the reason says which).
    """
    path = os.fspath(path)
    try:  # O_NONBLOCK: a FIFO in place of a tile must not hang the reader
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise Unsupported(f"cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            raise Unsupported("not a regular file")
        size = st.st_size
        if size > MAX_FILE_BYTES:
            raise Unsupported(f"{size} bytes: large files go through rasterio")
        data = os.read(fd, size)
    finally:
        os.close(fd)
    if len(data) != size or size < 16:
        raise Unsupported("short read")
    if os.environ.get("GDAL_DISABLE_READDIR_ON_OPEN", "") != "EMPTY_DIR":
        stem = os.path.splitext(path)[0]
        if any(os.path.exists(path + s) or os.path.exists(stem + s) for s in SIDECARS):
            raise Unsupported("has a sidecar file GDAL would read")
    return parse_tiff(path, data)


def parse_tiff(path: str, data: bytes) -> Tiff:
    """Parse the first IFD of the TIFF bytes ``data`` (see :func:`open_tiff`).

    Tiles of one folder written by one program have the same IFD: the same entry table and the same bytes
    everywhere the entries point, except the tie point (each tile's position). Such a file reuses the parse of the
    first one (checked byte for byte, so a file that differs anywhere else is parsed afresh).
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        raise Unsupported("not a TIFF")
    version = struct.unpack_from(order + "H", data, 2)[0]
    if version == 42:
        big, ifd = False, struct.unpack_from(order + "I", data, 4)[0]
    elif version == 43:
        big, ifd = True, struct.unpack_from(order + "Q", data, 8)[0]
    else:
        raise Unsupported(f"TIFF version {version}")
    try:
        n = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)[0]
    except struct.error:
        raise Unsupported("IFD past the end of the file") from None
    start = ifd + (8 if big else 2)
    key = (len(data), data[:16], data[start:start + n * (20 if big else 12)])
    known = _TEMPLATES.get(key)
    if known is not None:
        template, spans, same, tp_at = known
        if b"".join(data[a:b] for a, b in spans) == same:
            tiff = copy.copy(template)
            tiff.path, tiff.data = path, data
            tiff.tiepoint = struct.unpack_from(order + "6d", data, tp_at) if tp_at is not None else None
            return tiff
    tags, spans, tp_at = _read_ifd(data, order, ifd, big)
    tiff = _tiff_from_tags(path, data, order, tags)
    if len(_TEMPLATES) >= _MAX_TEMPLATES:
        _TEMPLATES.clear()
    _TEMPLATES[key] = (tiff, spans, b"".join(data[a:b] for a, b in spans), tp_at)
    return tiff


#: parsed IFDs by (file size, header, entry table) -> (Tiff, out-of-line value spans, their bytes, tie point offset)
_TEMPLATES: dict[tuple, tuple] = {}
_MAX_TEMPLATES = 256


def _read_ifd(data: bytes, order: str, pos: int, big: bool) -> tuple[dict[int, object], list, int | None]:
    """The wanted tags of the IFD at ``pos``, where the other values lie, and where the tie point lies.

    Tags: ASCII as ``str``, offset arrays as numpy, the rest as tuples. Spans: ``(start, end)`` of every value
    stored outside the entry table except the tie point.
    """
    head, entry, inline = ("Q", 20, 8) if big else ("H", 12, 4)
    spans: list[tuple[int, int]] = []
    tp_at = None
    try:
        n = struct.unpack_from(order + head, data, pos)[0]
        pos += 8 if big else 2
        fmt, ptr = order + ("HHQ" if big else "HHI"), order + ("Q" if big else "I")
        tags: dict[int, object] = {}
        for e in range(pos, pos + n * entry, entry):
            code, typ, count = struct.unpack_from(fmt, data, e)
            if typ not in _TYPES:
                raise Unsupported(f"tag {code} has field type {typ}")
            size = _TYPES[typ][1] * count
            at = e + (12 if big else 8)
            if size > inline:
                at = struct.unpack_from(ptr, data, at)[0]
                if code == 33922 and count == 6:
                    tp_at = at
                else:
                    spans.append((at, at + size))
            if code not in _WANTED:
                continue
            if typ in (5, 10):
                raise Unsupported(f"tag {code} is a rational")
            if at + size > len(data):
                raise Unsupported(f"tag {code} points past the end of the file")
            if typ == 2:
                tags[code] = data[at:at + size].split(b"\0", 1)[0].decode("latin-1")
            elif code in _ARRAYS:
                tags[code] = np.frombuffer(data, order + _NUMERIC[typ], count=count, offset=at)
            else:
                tags[code] = struct.unpack_from(f"{order}{count}{_TYPES[typ][0]}", data, at)
    except struct.error:
        raise Unsupported("IFD past the end of the file") from None
    return tags, spans, tp_at


def _one(tags: dict, code: int, default: int | None = None) -> int:
    v = tags.get(code)
    if v is None:
        if default is None:
            raise Unsupported(f"no tag {code}")
        return default
    if len(v) < 1:
        raise Unsupported(f"empty tag {code}")
    return int(v[0])


def _all_same(tags: dict, code: int, default: int, n: int) -> int:
    v = tags.get(code)
    if v is None:
        return default
    vals = set(v)
    if len(vals) != 1 or len(v) not in (1, n):
        raise Unsupported(f"tag {code} differs between samples")
    return vals.pop()


def _floats(tags: dict, code: int) -> tuple[float, ...] | None:
    v = tags.get(code)
    return None if v is None else tuple(map(float, v))


def _tiff_from_tags(path: str, data: bytes, order: str, tags: dict) -> Tiff:
    if _one(tags, 254, 0) & 0b101:
        raise Unsupported("first image is a reduced-resolution image or a mask")
    width, height = _one(tags, 256), _one(tags, 257)
    spp = _one(tags, 277, 1)
    bps = _all_same(tags, 258, 1, spp)
    fmt = _all_same(tags, 339, 1, spp)
    compression = _one(tags, 259, 1)
    photometric = _one(tags, 262, 1)
    planar = _one(tags, 284, 1)
    predictor = _one(tags, 317, 1)
    if bps not in (8, 16, 32, 64) or fmt not in _SAMPLE_KIND or (fmt == 3 and bps < 32):
        raise Unsupported(f"{bps}-bit samples of format {fmt}")
    if compression not in CODECS:
        raise Unsupported(f"compression {compression} (no decoder here)")
    if photometric not in (1, 2, 3) or _one(tags, 266, 1) != 1 or _one(tags, 274, 1) != 1:
        raise Unsupported("photometric, fill order or orientation GDAL reads differently")
    if planar not in (1, 2) or predictor not in (1, 2, 3) or (predictor == 3 and fmt != 3):
        raise Unsupported(f"planar configuration {planar} with predictor {predictor}")
    if width < 1 or height < 1 or spp < 1:
        raise Unsupported("empty image")
    dtype = np.dtype(f"{order}{_SAMPLE_KIND[fmt]}{bps // 8}")
    tiled = 322 in tags
    if tiled:
        block = (_one(tags, 323), _one(tags, 322))
        offsets, counts = tags.get(324), tags.get(325)
    else:
        block = (min(_one(tags, 278, height), height), width)
        offsets, counts = tags.get(273), tags.get(279)
    if offsets is None or counts is None or min(block) < 1:
        raise Unsupported("no strip or tile offsets")
    tiepoint, scale, matrix = _floats(tags, 33922), _floats(tags, 33550), _floats(tags, 34264)
    if tiepoint is not None and len(tiepoint) != 6:
        raise Unsupported("ground control points, not one tie point")
    if (matrix is not None and (tiepoint is not None or len(matrix) != 16)) or (scale is not None
                                                                                 and len(scale) < 2):
        raise Unsupported("georeferencing tags GDAL would combine differently")
    keys = tags.get(34735, ())
    raster_type = _geokey(keys, 1025, 1)
    signature = (dtype.str, spp, planar, tiled, compression, predictor, photometric, tags.get(338), keys,
                 tags.get(34736), tags.get(34737, ""), tags.get(42112, ""), tags.get(42113), scale,
                 tiepoint is not None, matrix is not None)
    tiff = Tiff(path, data, dtype, width, height, spp, planar, tiled, block, offsets.astype(np.int64),
                counts.astype(np.int64), compression, predictor, tiepoint, scale, matrix, raster_type, signature)
    tiff.problem, tiff.contiguous = _check_blocks(tiff, len(data))
    return tiff


def _check_blocks(t: Tiff, size: int) -> tuple[str | None, bool]:
    """Whether the strip / tile table fits the image and the file, and whether the pixels lie in one piece."""
    n_planes, sp = (t.count, 1) if t.planar == 2 else (1, t.count)
    bh, bw = t.block
    per_plane = math.ceil(t.width / bw) * math.ceil(t.height / bh)
    if len(t.offsets) != n_planes * per_plane or len(t.counts) != len(t.offsets):
        return f"{len(t.offsets)} strips/tiles for a {t.width}x{t.height} layout", False
    ends = t.offsets + t.counts
    if size < int(ends.max()) or int(t.offsets.min()) <= 0 or int(t.counts.min()) <= 0:
        return "pixel data past the end of the file, or sparse blocks", False
    if t.compression != 1 or t.tiled or t.predictor != 1:
        return None, False
    plane = t.height * t.width * sp * t.dtype.itemsize
    starts = t.offsets[::per_plane]
    return None, bool(np.all(t.offsets[1:] == ends[:-1]) and int(t.counts.sum()) >= n_planes * plane
                      and np.all(np.diff(starts) == plane))


def _geokey(keys: tuple[int, ...], key: int, default: int) -> int:
    """A SHORT GeoKey stored in the directory itself (location 0)."""
    for i in range(4, len(keys) - 3, 4):
        if keys[i] == key and keys[i + 1] == 0:
            return keys[i + 3]
    return default


# -------------------------------------------------------------------------------------------- checked headers
@dataclass(frozen=True)
class _Checked:
    """What rasterio said about the first file of a signature: its CRS, nodata and descriptions (reused)."""

    crs: object
    crs_string: str | None
    nodata: float | None
    descriptions: tuple[str | None, ...]


class SignatureCache:
    """Signature -> rasterio's verdict on its first file (see the module docstring). Thread-safe; one per process.

    Attributes:
        checked: files compared with rasterio so far; declined: signatures rasterio disagreed on.
    """

    def __init__(self) -> None:
        self._known: dict[tuple, _Checked | str] = {}
        self._crs: dict[str, object] = {}  # WKT -> one CRS object, so equal CRSs compare by identity
        self._lock = threading.Lock()
        self.checked = 0
        self.declined: list[str] = []

    def info(self, tiff: Tiff) -> tuple[RasterInfo, str | None]:
        """The header of ``tiff`` as :class:`RasterInfo` (rasterio's CRS objects) and its CRS as a string.

        Raises:
            Unsupported: rasterio disagrees with the fast path on this signature, or cannot read the file.
        """
        known = self._known.get(tiff.signature)
        if known is None:
            known = self._check(tiff)
        if isinstance(known, str):
            raise Unsupported(known)
        return (RasterInfo(tiff.path, tiff.count, tiff.dtype.name, known.crs, tiff.transform(), tiff.width,
                           tiff.height, known.nodata, known.descriptions), known.crs_string)

    def _check(self, tiff: Tiff) -> _Checked | str:
        import rasterio
        from rasterio.errors import RasterioError

        try:
            with rasterio.open(tiff.path) as src:
                ref = src.read()
                head = (src.count, src.dtypes[0], src.width, src.height, src.transform, src.nodata,
                        tuple(src.descriptions), src.crs)
        except RasterioError as e:
            raise Unsupported(f"rasterio cannot read it either ({str(e)[:80]})") from None
        mine = (tiff.count, tiff.dtype.name, tiff.width, tiff.height, tiff.transform())
        why = None
        if mine != head[:5]:
            why = f"header {mine} != rasterio's {head[:5]}"
        else:
            try:
                got = tiff.read()
            except Unsupported as e:
                why = f"pixels: {e}"
            else:
                if got.dtype != ref.dtype or got.tobytes() != ref.tobytes():
                    why = "pixels differ from rasterio's"
        crs = head[7]
        if crs:
            with self._lock:
                crs = self._crs.setdefault(crs.to_wkt(), crs)
        verdict: _Checked | str
        if why is None:
            verdict = _Checked(crs, crs.to_string() if crs else None, head[5], head[6])
        else:
            verdict = f"fast path disagrees with rasterio on this layout ({why})"
            log.warning("%s: %s; files like it are read with rasterio", tiff.path, verdict)
        with self._lock:
            self.checked += 1
            if isinstance(verdict, str):
                self.declined.append(tiff.path)
            self._known[tiff.signature] = verdict
        return verdict

