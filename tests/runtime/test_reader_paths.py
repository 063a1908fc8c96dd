"""The runtime reader's two paths: the fast path equals the rasterio path on every layout, declines what it cannot
take (a spy shows rasterio read it), and ``esccs infer`` predicts the same with either, threads or processes."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.transform import Affine, from_origin
from rt_helpers import CRS, ORIGIN, optical_dn, read_csv, sar_db, write_tif

from esccs.cli import cli
from esccs.errors import ConfigError
from esccs.io import fastread, raster
from esccs.io.tiff_profiles import TIFF_PROFILES
from esccs.runtime import Job, open_scene, open_tiles
from esccs.runtime.reader import Bands, TileReader, window_bounds
from esccs.spec import S1_BANDS, S2_BANDS

P = 24
BANDS = Bands(S2_BANDS, S1_BANDS, P)
#: a model taking a band subset in another order than the file's (the reader picks bands by name)
SUBSET = Bands(("B04", "B03", "B02", "B08", "B11"), ("VH",), P)


def _triple(root, name, profile, rng, size=P, mask=True):
    """S2 (13 x uint16 with band names), S1 (2 x float32), cloud mask (uint8) of one tile in ``profile``."""
    t = from_origin(ORIGIN[0] + 1000 * rng.integers(0, 50), ORIGIN[1], 10.0, 10.0)
    s2 = raster.write(root / "optical" / f"{name}.tif", optical_dn(rng, size, size), CRS, t, band_names=S2_BANDS,
                      profile=profile)
    sar = sar_db(rng, size, size)
    sar[0, 1, 2] = np.nan  # SAR holes are counted, not fatal
    s1 = raster.write(root / "sar" / f"{name}.tif", sar, CRS, t, band_names=S1_BANDS, profile=profile)
    m = None
    if mask:
        m = raster.write(root / "cloud_mask" / f"{name}.tif", rng.integers(0, 4, (size, size)).astype(np.uint8), CRS,
                         t, profile=profile)
    return Job(name, str(s2), str(s1), str(m) if m else None)


def _read(reader, job, bands=BANDS):
    o = np.full((len(bands.optical), bands.patch, bands.patch), -1, np.float32)
    s = np.full((len(bands.sar), bands.patch, bands.patch), -1, np.float32)
    return o, s, reader.read(job, o, s)


@pytest.fixture(scope="module")
def profile_jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    rng = np.random.default_rng(3)
    return {name: _triple(root / name, "t", name, rng) for name in TIFF_PROFILES}


@pytest.mark.parametrize("bands", [BANDS, SUBSET], ids=["all-bands", "subset"])
@pytest.mark.parametrize("profile", list(TIFF_PROFILES))
def test_fast_path_equals_rasterio_path_on_every_layout(profile_jobs, profile, bands):
    job = profile_jobs[profile]
    fast, ref = TileReader(bands, engine="auto"), TileReader(bands, engine="rasterio")
    o1, s1, r1 = _read(fast, job, bands)
    o2, s2, r2 = _read(ref, job, bands)
    assert o1.tobytes() == o2.tobytes() and s1.tobytes() == s2.tobytes()
    assert r1 == r2  # id, window, CRS, bounds, coverage, SAR holes ...
    assert r1["sar_nan"] == (1 if "VV" in bands.sar else 0) and r1["crs"] == "EPSG:32633"
    declined = any(p.startswith(c) for p, c in ((profile, "lzw"), (profile, "zstd"))) and not {
        5, 50000} <= set(fastread.CODECS)
    files = fast.stats()["files"]
    if not declined:
        assert files == {"fast": 3, "rasterio": 0}, fast.stats()
    assert ref.stats()["files"] == {"fast": 0, "rasterio": 3}


def test_centre_crop_of_a_larger_tile_is_the_same_on_both_paths(tmp_path):
    job = _triple(tmp_path, "big", "tiled", np.random.default_rng(5), size=P + 9)
    (o1, s1, r1), (o2, s2, r2) = _read(TileReader(BANDS), job), _read(TileReader(BANDS, engine="rasterio"), job)
    assert r1["cropped"] and r1["window"] == [4, 4, P, P] and r1 == r2
    assert o1.tobytes() == o2.tobytes() and s1.tobytes() == s2.tobytes()


def test_a_file_the_fast_path_cannot_take_is_read_by_rasterio(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    plain = _triple(tmp_path / "a", "plain", "sen12ms", rng)
    odd = _triple(tmp_path / "b", "odd", "sen12ms", rng)
    # rewrite the odd tile's S2 with PackBits, a codec the fast path has no decoder for (same grid as its SAR)
    packed = raster.write(odd.optical, optical_dn(np.random.default_rng(1), P, P), CRS,
                          raster.inspect(odd.sar).transform, band_names=S2_BANDS, profile={"compress": "packbits"})
    odd = Job("odd", str(packed), odd.sar, None)
    opened = []
    real = TileReader._rasterio_open
    monkeypatch.setattr(TileReader, "_rasterio_open", lambda self, p: opened.append(p) or real(self, p))
    reader = TileReader(BANDS)
    _read(reader, plain)
    assert opened == []  # the plain tile never touched the reader's rasterio path
    o, s, r = _read(reader, odd)
    assert opened == [odd.optical]  # only the PackBits S2 went to rasterio; its SAR stayed on the fast path
    stats = reader.stats()
    assert stats["files"] == {"fast": 4, "rasterio": 1}
    assert any("compression 32773" in why for why in stats["declined"]), stats
    o2, s2, r2 = _read(TileReader(BANDS, engine="rasterio"), odd)
    assert o.tobytes() == o2.tobytes() and s.tobytes() == s2.tobytes() and r == r2


def test_a_read_the_fast_path_fails_is_redone_by_rasterio_and_its_error_is_rasterios(tmp_path):
    rng = np.random.default_rng(2)
    good = _triple(tmp_path / "good", "t", "deflate-tiled", rng, mask=False)
    job = _triple(tmp_path / "bad", "t", "deflate-tiled", rng, mask=False)
    raw = bytearray(open(job.optical, "rb").read())
    tiff = fastread.open_tiff(job.optical)
    at = int(tiff.offsets[0])
    raw[at:at + 16] = b"\x00" * 16  # a DEFLATE block that no longer inflates; the header is intact
    open(job.optical, "wb").write(bytes(raw))
    fast, ref = TileReader(BANDS), TileReader(BANDS, engine="rasterio")
    _read(fast, good)  # the layout is checked against rasterio on this one and trusted from then on
    with pytest.raises(Exception) as e_fast:
        _read(fast, job)
    with pytest.raises(Exception) as e_ref:
        _read(ref, job)
    assert type(e_fast.value) is type(e_ref.value) and str(e_fast.value) == str(e_ref.value)
    assert str(e_fast.value).startswith(f"{job.optical}: truncated or unreadable")
    assert any(why.startswith("read: ") for why in fast.stats()["declined"])


def test_scene_windows_stay_on_rasterio(tmp_path):
    rng = np.random.default_rng(4)
    s2 = write_tif(tmp_path / "s2.tif", optical_dn(rng, 2 * P, 2 * P), descriptions=S2_BANDS, block=16)
    s1 = write_tif(tmp_path / "s1.tif", sar_db(rng, 2 * P, 2 * P), block=16)
    src = open_scene(s2, s1, P)
    reader = TileReader(BANDS, keep_open=True, checked_grid=True)
    for job in src.jobs:
        _read(reader, job)
    reader.close()
    assert reader.stats()["files"] == {"fast": 0, "rasterio": 2}  # one handle per file, kept open


def test_unknown_reader_name_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("ESCCS_READER", "gdal-magic")
    with pytest.raises(ConfigError, match="reader 'gdal-magic'.*choose auto or rasterio"):
        TileReader(BANDS)


@pytest.mark.parametrize("workers", [1, 2])
def test_infer_predictions_are_identical_on_both_paths(synth_root, onnx_path, tmp_path, workers):
    """The same tiles through ``esccs infer``: fast path vs rasterio path forced; 2 workers are processes."""
    rows = {}
    for reader in ("auto", "rasterio"):
        out = tmp_path / f"{reader}.csv"
        res = CliRunner().invoke(cli, ["infer", str(synth_root), "--model", str(onnx_path), "--out", str(out),
                                       "--quiet", "--threads", "1", "--workers", str(workers), "--batch-size", "8"],
                                 env={"ESCCS_READER": reader})
        assert res.exit_code == 0, res.output
        rows[reader] = read_csv(out)
    assert len(rows["auto"]) == len(open_tiles(synth_root).jobs) == 20
    assert rows["auto"] == rows["rasterio"]  # every column: class, confidence, weights, coverage, footprint


@pytest.mark.parametrize("t", [from_origin(*ORIGIN, 10.0, 10.0), Affine(10.0, 0.5, 500000.0, 0.25, -10.0, 4500000.0),
                               Affine(0.0001, 0.0, 11.25, 0.0, -0.0001, 48.1)], ids=["utm", "rotated", "degrees"])
def test_footprints_are_rasterios_window_bounds_exactly(t):
    import warnings

    from rasterio.windows import Window
    from rasterio.windows import bounds as rio_bounds

    for w in (Window(0, 0, 16, 16), Window(7, 3, 24, 24), Window(100, 250, 32, 32)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = [float(v) for v in rio_bounds(w, t)]
        assert window_bounds(w, t) == want
