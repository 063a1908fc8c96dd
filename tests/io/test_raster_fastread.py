"""The fast GeoTIFF reader equals rasterio byte for byte on every layout GDAL writes, or declines the file.

Each layout is written with rasterio / GDAL creation options, then read both ways: whole file, a band subset and
window cast into float32 (what the runtime does), and the header (CRS, transform, nodata, band names).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from esccs.io import fastread, raster
from esccs.io.fastread import SignatureCache, Unsupported, open_tiff
from esccs.io.tiff_profiles import TIFF_PROFILES

ORIGIN = from_origin(500000.0, 4500000.0, 10.0, 10.0)


def _data(dtype: str, count: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.normal(-12, 6, (count, h, w)).astype(dt)
        a[0, 0, :3] = [np.nan, np.inf, -0.0]  # the values a float path gets wrong first
        return a
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -30000), min(info.max, 60000), (count, h, w), endpoint=True).astype(dt)


def _write(path, arr, crs="EPSG:32633", transform=ORIGIN, nodata=None, names=None, tags=None, **options):
    profile = {"driver": "GTiff", "count": arr.shape[0], "height": arr.shape[1], "width": arr.shape[2],
               "dtype": arr.dtype.name, "crs": crs, "transform": transform, "nodata": nodata, **options}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        for i, name in enumerate(names or (), 1):
            dst.set_band_description(i, name)
        if tags:
            dst.update_tags(**tags)
    return path


# (id, dtype, bands, height, width, creation options, extra write arguments)
LAYOUTS = [
    ("striped-pixel-u16-13", "uint16", 13, 29, 37, {}, {}),
    ("striped-pixel-rows5", "uint16", 13, 29, 37, {"blockysize": 5}, {}),
    ("striped-band-u16", "uint16", 13, 29, 37, {"interleave": "band"}, {}),
    ("tiled16-pixel-edges", "uint16", 13, 29, 37, {"tiled": True, "blockxsize": 16, "blockysize": 16}, {}),
    ("tiled16-band-edges", "uint16", 4, 29, 37, {"tiled": True, "blockxsize": 16, "blockysize": 16,
                                                  "interleave": "band"}, {}),
    ("deflate-striped", "uint16", 13, 29, 37, {"compress": "deflate"}, {}),
    ("deflate-pred2-tiled", "uint16", 13, 29, 37, {"compress": "deflate", "predictor": 2, "tiled": True,
                                                    "blockxsize": 16, "blockysize": 16}, {}),
    ("deflate-pred2-band-i16", "int16", 3, 29, 37, {"compress": "deflate", "predictor": 2, "interleave": "band"}, {}),
    ("deflate-pred2-f32", "float32", 2, 29, 37, {"compress": "deflate", "predictor": 2}, {}),
    ("deflate-pred3-f32-pixel", "float32", 2, 29, 37, {"compress": "deflate", "predictor": 3}, {}),
    ("deflate-pred3-f32-tiled", "float32", 2, 29, 37, {"compress": "deflate", "predictor": 3, "tiled": True,
                                                        "blockxsize": 16, "blockysize": 16}, {}),
    ("deflate-pred3-f64-band", "float64", 2, 29, 37, {"compress": "deflate", "predictor": 3, "interleave": "band"},
     {}),
    ("lzma", "uint16", 13, 29, 37, {"compress": "lzma"}, {}),
    ("lzw", "uint16", 13, 29, 37, {"compress": "lzw"}, {}),
    ("lzw-pred2", "uint16", 13, 29, 37, {"compress": "lzw", "predictor": 2}, {}),
    ("zstd-tiled", "uint16", 13, 29, 37, {"compress": "zstd", "tiled": True, "blockxsize": 16, "blockysize": 16},
     {}),
    ("zstd-pred3-f32", "float32", 2, 29, 37, {"compress": "zstd", "predictor": 3}, {}),
    ("packbits", "uint8", 1, 29, 37, {"compress": "packbits"}, {}),
    ("bigtiff", "uint16", 13, 29, 37, {"BIGTIFF": "YES"}, {}),
    ("bigtiff-deflate-tiled", "float32", 2, 29, 37, {"BIGTIFF": "YES", "compress": "deflate", "tiled": True,
                                                      "blockxsize": 16, "blockysize": 16}, {}),
    ("big-endian-u16", "uint16", 13, 29, 37, {"ENDIANNESS": "BIG"}, {}),
    ("big-endian-f32-pred3", "float32", 2, 29, 37, {"ENDIANNESS": "BIG", "compress": "deflate", "predictor": 3}, {}),
    ("big-endian-pred2-tiled", "uint16", 3, 29, 37, {"ENDIANNESS": "BIG", "compress": "deflate", "predictor": 2,
                                                      "tiled": True, "blockxsize": 16, "blockysize": 16}, {}),
    ("mask-u8", "uint8", 1, 29, 37, {}, {}),
    ("int8", "int8", 2, 29, 37, {}, {}),
    ("uint32", "uint32", 2, 29, 37, {}, {}),
    ("int32-deflate-pred2", "int32", 2, 29, 37, {"compress": "deflate", "predictor": 2}, {}),
    ("float64", "float64", 2, 29, 37, {}, {}),
    ("nodata-zero", "uint16", 13, 29, 37, {}, {"nodata": 0}),
    ("nodata-nan", "float32", 2, 29, 37, {}, {"nodata": float("nan")}),
    ("nodata-negative", "int16", 1, 29, 37, {}, {"nodata": -9999}),
    ("band-names", "uint16", 13, 29, 37, {}, {"names": [f"B{i:02d}" for i in range(13)]}),
    ("no-crs", "uint16", 2, 29, 37, {}, {"crs": None, "transform": Affine.identity()}),
    ("geographic", "float32", 2, 29, 37, {}, {"crs": "EPSG:4326",
                                               "transform": from_origin(11.25, 48.1, 0.0001, 0.0001)}),
    ("rotated", "uint16", 2, 29, 37, {}, {"transform": Affine(10.0, 0.5, 500000.0, 0.25, -10.0, 4500000.0)}),
    ("pixel-is-point", "uint16", 2, 29, 37, {}, {"tags": {"AREA_OR_POINT": "Point"}}),
]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Every layout written once: id -> path."""
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for lid, dtype, count, h, w, options, extra in LAYOUTS:
        out[lid] = _write(root / f"{lid}.tif", _data(dtype, count, h, w, seed=len(out)), **extra, **options)
    # a COG with overviews (GDAL's COG driver only copies): 700 px so it gets an overview level
    plain = _write(root / "cog-src.tif", _data("uint16", 3, 700, 700, 3))
    rasterio.shutil.copy(plain, root / "cog.tif", driver="COG", compress="deflate", blocksize=256)
    out["cog"] = root / "cog.tif"
    return out


def _declined_here(lid: str) -> bool:
    """Layouts whose codec has no decoder in this environment (they go to rasterio)."""
    needs = {"lzw": 5, "zstd": 50000, "packbits": 32773}
    return any(lid.startswith(name) and code not in fastread.CODECS for name, code in needs.items())


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("lid", [x[0] for x in LAYOUTS] + ["cog"])
def test_every_layout_equals_rasterio_byte_for_byte(layouts, lid):
    path = layouts[lid]
    if _declined_here(lid):
        with pytest.raises(Unsupported, match="compression"):
            open_tiff(path)
        return
    tiff = open_tiff(path)
    with rasterio.open(path) as src:
        ref = src.read()
        assert _same(tiff.read(), ref)
        # a band subset in another order and an inner window, cast into float32 like the runtime's batch rows
        idx = [src.count, 1] if src.count > 1 else [1]
        win = (3, 5, src.width - 7, src.height - 9)
        mine = np.full((len(idx), win[3], win[2]), -1.0, np.float32)
        tiff.read(idx, win, out=mine)
        theirs = src.read(idx, window=rasterio.windows.Window(*win), out=np.empty_like(mine))
        assert _same(mine, theirs)
        info, crs_string = SignatureCache().info(tiff)
        assert (info.count, info.dtype, info.width, info.height) == (src.count, src.dtypes[0], src.width,
                                                                      src.height)
        assert info.transform == src.transform  # exact, not almost
        assert info.crs == src.crs and crs_string == (src.crs.to_string() if src.crs else None)
        assert info.descriptions == tuple(src.descriptions)
        assert info.nodata == src.nodata or (math.isnan(info.nodata) and math.isnan(src.nodata))


def test_cog_reads_the_full_resolution_image_not_an_overview(layouts):
    with rasterio.open(layouts["cog"]) as src:
        assert src.overviews(1), "the test COG should have overviews"
    tiff = open_tiff(layouts["cog"])
    assert (tiff.width, tiff.height, tiff.tiled, tiff.compression) == (700, 700, True, 8)


def test_the_profiles_synth_writes_are_all_read_fast_or_declined_by_codec(tmp_path):
    arr = _data("uint16", 13, 40, 40)
    for name in TIFF_PROFILES:
        path = raster.write(tmp_path / f"{name}.tif", arr, 32633, ORIGIN, band_names=[f"b{i}" for i in range(13)],
                            profile=name)
        try:
            tiff = open_tiff(path)
        except Unsupported as e:
            assert "compression" in str(e) and _declined_here(name), (name, e)
            continue
        assert _same(tiff.read(), arr), name


def test_tiles_of_one_layout_reuse_the_parse_but_keep_their_own_position(tmp_path):
    fastread._TEMPLATES.clear()
    a = _write(tmp_path / "a.tif", _data("uint16", 13, 16, 16, 1), transform=from_origin(300000, 5000000, 10, 10))
    b = _write(tmp_path / "b.tif", _data("uint16", 13, 16, 16, 2), transform=from_origin(300160, 5000000, 10, 10))
    ta, tb = open_tiff(a), open_tiff(b)
    assert len(fastread._TEMPLATES) == 1  # b reused a's parse
    for t, p in ((ta, a), (tb, b)):
        with rasterio.open(p) as src:
            assert t.transform() == src.transform and _same(t.read(), src.read())
    # same entry table, a band name of the same length changed: the bytes differ, so it is parsed afresh
    c = _write(tmp_path / "c.tif", _data("uint16", 13, 16, 16, 3), names=["X"] + [""] * 12)
    d = _write(tmp_path / "d.tif", _data("uint16", 13, 16, 16, 4), names=["Y"] + [""] * 12)
    cache = SignatureCache()
    assert cache.info(open_tiff(c))[0].descriptions[0] == "X"
    assert cache.info(open_tiff(d))[0].descriptions[0] == "Y"


def test_a_signature_rasterio_disagrees_on_goes_to_rasterio(tmp_path, monkeypatch):
    path = _write(tmp_path / "t.tif", _data("uint16", 13, 16, 16))
    real = fastread.Tiff.read

    def off_by_one(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.flat[0] += 1
        return out

    monkeypatch.setattr(fastread.Tiff, "read", off_by_one)
    cache = SignatureCache()
    with pytest.raises(Unsupported, match="disagrees with rasterio.*pixels differ"):
        cache.info(open_tiff(path))
    assert cache.declined == [str(path)] and cache.checked == 1
    with pytest.raises(Unsupported):  # remembered: not checked again
        cache.info(open_tiff(path))
    assert cache.checked == 1


def test_broken_files_are_declined_not_read(tmp_path):
    path = _write(tmp_path / "t.tif", _data("uint16", 13, 32, 32))
    data = path.read_bytes()
    # IFD kept, pixel data cut: the strips point past the end of the file
    cut = tmp_path / "cut.tif"
    ifd = int.from_bytes(data[4:8], "little")
    cut.write_bytes(data[:ifd] if ifd < len(data) // 2 else data[:8] + data[8:ifd][:100] + data[ifd:])
    with pytest.raises(Unsupported):
        open_tiff(cut).read()
    (tmp_path / "text.tif").write_text("not a tiff at all\n")
    with pytest.raises(Unsupported, match="not a TIFF"):
        open_tiff(tmp_path / "text.tif")
    deflated = _write(tmp_path / "d.tif", _data("uint16", 13, 32, 32), compress="deflate")
    raw = bytearray(deflated.read_bytes())
    t = open_tiff(deflated)
    start = int(t.offsets[0])
    raw[start:start + 8] = b"\xff" * 8  # a block that does not inflate
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(raw))
    with pytest.raises(Unsupported, match="does not decode"):
        open_tiff(bad).read()
