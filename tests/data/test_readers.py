"""Readers: every layout round-trips from the generator, hand-written real-layout files read, bad input is named."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from esccs.data import Normalizer, grouped_split, open_dataset, read_bands, scan
from esccs.data.synth import SynthConfig, synthesize
from esccs.errors import (
    BandError,
    CorruptRasterError,
    DatasetNotFoundError,
    DTypeError,
    GridMismatchError,
    LabelError,
)
from esccs.io import raster
from esccs.io.names import PatchName
from esccs.spec import IGBP_SIMPLE_CLASSES, S2_BANDS, S2_L2A_12_BANDS, S2_LAND_BANDS

#: a real Sentinel-2 patch (strath-ai/SatelliteCloudGenerator, Apache-2.0: see its LICENSE and README), in the repo
REAL = Path(__file__).resolve().parent / "s2-real-example"
TINY = dict(samples=24, size=32, patches_per_scene=4, workers=1)


@pytest.fixture(scope="module")
def synth_sen12ms(tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "d"
    return synthesize(SynthConfig(out=out, seed=11, **TINY), progress=False)


@pytest.fixture(scope="module")
def synth_paired(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "d"
    return synthesize(SynthConfig(out=out, seed=11, layout="paired", **TINY), progress=False)


def _labels_by_id(report, part):
    return {r["id"]: r["label"] for r in report.records if r["plan"].part == part}


@pytest.mark.parametrize("part", ["source", "target"])
def test_sen12ms_layouts_round_trip(synth_sen12ms, part):
    ds = open_dataset(synth_sen12ms.out, part=part)
    assert ds.layout == ("sen12ms" if part == "source" else "sen12ms-cr")
    assert ds.optical == ("s2" if part == "source" else "s2_cloudy")
    want = _labels_by_id(synth_sen12ms, part)
    assert sorted(s.id for s in ds.samples) == sorted(want)
    assert not ds.skipped
    s = ds.read(0)
    assert s["optical"].shape == (len(S2_LAND_BANDS), 32, 32) and s["optical"].dtype == np.float32
    assert s["sar"].shape == (2, 32, 32) and s["sar"].dtype == np.float32
    assert ds.classes[s["label"]] == want[s["id"]]
    assert s["split"] in (("train", "val") if part == "source" else ("train", "test"))
    assert s["crs"].to_epsg() in range(32601, 32661)
    if part == "target":
        assert s["cloud_mask"].shape == (32, 32) and 0.0 <= s["coverage"] <= 1.0


def test_optical_choice_reads_the_right_file(synth_sen12ms):
    clear = open_dataset(synth_sen12ms.out, part="target", optical="s2", bands=S2_BANDS)
    cloudy = open_dataset(synth_sen12ms.out, part="target", optical="s2_cloudy", bands=S2_BANDS)
    for i in range(len(clear)):
        a, b = clear.read(i), cloudy.read(i)
        assert a["id"] == b["id"]
        sid = a["id"]
        with rasterio.open(clear.samples[i].paths["s2"]) as src:
            np.testing.assert_array_equal(a["optical"], src.read().astype(np.float32))
        assert "s2_cloudy" in Path(cloudy.samples[i].paths["s2_cloudy"]).name and sid.endswith(".tif")


def test_paired_layout_round_trip(synth_paired):
    for part in ("source", "target"):
        ds = open_dataset(synth_paired.out, part=part)
        assert ds.layout == "paired"
        want = _labels_by_id(synth_paired, part)
        assert sorted(s.id for s in ds.samples) == sorted(want)
        s = ds.read(0)
        assert ds.classes[s["label"]] == want[s["id"]]
        assert s["split"] in ("train", "val", "test")
    tgt = open_dataset(synth_paired.out, part="target", optical="s2")  # the clear optical for evaluation
    assert "optical_clear" in str(tgt.samples[0].paths["s2"])


def test_sen12ms_pkl_labels_single_and_multi(synth_sen12ms):
    root = synth_sen12ms.out / "source"
    ds = open_dataset(root, classes="igbp_simple", labels=root / "IGBP_probability_labels.pkl")
    with open(root / "IGBP_probability_labels.pkl", "rb") as f:
        fractions = pickle.load(f)  # our own file
    for s in ds.samples[:5]:
        simple = np.zeros(10)
        np.add.at(simple, [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9], fractions[s.id])
        assert ds.labels[s.id] == int(np.argmax(simple))
    multi = open_dataset(root, classes="igbp_simple", labels=root / "IGBP_probability_labels.pkl", multi_label=True)
    v = multi.read(0)["label"]
    assert v.shape == (len(IGBP_SIMPLE_CLASSES),) and set(np.unique(v)) <= {0.0, 1.0} and v.sum() >= 1


def test_grouped_split_never_cuts_a_scene(synth_sen12ms):
    found = scan(synth_sen12ms.out / "source")
    train, val = grouped_split(found.samples, 0.3, seed=0)
    assert train and val and not set(train) & set(val)
    assert not {found.samples[i].group for i in train} & {found.samples[i].group for i in val}
    assert grouped_split(found.samples, 0.3, seed=0) == (train, val)


def test_normalizer_uses_band_names():
    n = Normalizer.for_bands(("B04", "B02"))
    x = np.stack([np.full((2, 2), 1139.68), np.full((2, 2), 1226.42 + 741.63)]).astype(np.float32)
    np.testing.assert_allclose(n(x)[:, 0, 0], [0.0, 1.0], atol=1e-5)
    assert Normalizer.from_dict(n.to_dict()).bands == ("B04", "B02")
    with pytest.raises(BandError, match="B10"):
        Normalizer.for_bands(("B02", "B10"))


# ---------------------------------------------------------------------------------------------------------------
# Hand-written SEN12MS trees (the exact real layout) and every bad input
# ---------------------------------------------------------------------------------------------------------------

def _write_triplet(root, scene=5, patch=1, season="summer", s2=None, s1=None, crs=32633, s1_crs=None, size=16,
                   s1_transform=None):
    name = PatchName(season, scene, patch)
    t = from_origin(500000, 4000000, 10, 10)
    s2 = s2 if s2 is not None else np.full((13, size, size), 1000, np.uint16)
    s1 = s1 if s1 is not None else np.full((2, size, size), -12.0, np.float32)
    raster.write(name.path(root), s2, crs, t)
    raster.write(name.with_sensor("s1").path(root), s1, s1_crs or crs, s1_transform or t)
    lc = np.full((4, s2.shape[1], s2.shape[2]), 10, np.uint8)
    raster.write(name.with_sensor("lc").path(root), lc, crs, t)
    return name


def _pkl(root, names, value=None):
    vec = np.zeros(17, np.float32)
    vec[9] = 1.0  # grassland
    with open(root / "IGBP_probability_labels.pkl", "wb") as f:
        pickle.dump({n.filename: value if value is not None else vec for n in names}, f)


def test_hand_written_sen12ms_tree_reads_with_pkl_labels(tmp_path):
    names = [_write_triplet(tmp_path, patch=p) for p in (3, 7, 12)]
    _pkl(tmp_path, names)
    ds = open_dataset(tmp_path)
    assert ds.layout == "sen12ms" and len(ds) == 3 and ds.classes == IGBP_SIMPLE_CLASSES
    assert all(ds.labels[n.filename] == IGBP_SIMPLE_CLASSES.index("Grassland") for n in names)
    assert ds.read(0)["optical"][0, 0, 0] == 1000.0


def test_missing_partner_is_skipped_and_listed(tmp_path):
    names = [_write_triplet(tmp_path, patch=p) for p in (1, 2)]
    names[1].with_sensor("s1").path(tmp_path).unlink()
    ds = open_dataset(tmp_path)
    assert [s.id for s in ds.samples] == [names[0].filename]
    assert len(ds.skipped) == 1 and "no s1 partner" in ds.skipped[0][1] and names[1].filename[:-4] in ds.skipped[0][0]


def test_wrong_band_count_and_dtype_name_the_file(tmp_path):
    n = _write_triplet(tmp_path, s2=np.ones((10, 16, 16), np.uint16))
    ds = open_dataset(tmp_path)
    with pytest.raises(BandError, match=r"ROIs1868_summer_s2_5_p1\.tif: s2 needs 13 bands.*found 10"):
        ds.read(0)
    raster.write(n.path(tmp_path), np.ones((13, 16, 16), np.float32), 32633, from_origin(500000, 4000000, 10, 10))
    with pytest.raises(DTypeError, match=r"s2_5_p1\.tif: s2 must be integer DN"):
        open_dataset(tmp_path).read(0)


def test_check_moves_bad_samples_to_skipped(tmp_path):
    _write_triplet(tmp_path, patch=1)
    _write_triplet(tmp_path, patch=2, s2=np.ones((10, 16, 16), np.uint16))
    ds = open_dataset(tmp_path, check=True)
    assert len(ds) == 1 and len(ds.skipped) == 1 and "needs 13 bands" in ds.skipped[0][1]


@pytest.mark.parametrize("what", ["crs", "transform", "size"])
def test_grid_mismatch_between_s1_and_s2(tmp_path, what):
    kw = {"crs": dict(s1_crs=32634), "transform": dict(s1_transform=from_origin(500010, 4000000, 10, 10)),
          "size": dict(s1=np.zeros((2, 15, 16), np.float32))}[what]
    _write_triplet(tmp_path, **kw)
    want = {"crs": "CRS EPSG:32634 differs", "transform": "transform differs", "size": "size 16x15 differs"}[what]
    with pytest.raises(GridMismatchError, match=rf"_s1_5_p1\.tif: {want}"):
        open_dataset(tmp_path).read(0)


def test_nan_in_sar_is_cleaned_and_counted(tmp_path):
    s1 = np.full((2, 16, 16), -12.0, np.float32)
    s1[0, :2, :3] = np.nan
    _write_triplet(tmp_path, s1=s1)
    ds = open_dataset(tmp_path)
    s = ds.read(0)
    assert s["sar_nan"] == 6 and np.isfinite(s["sar"]).all() and s["sar"][0, 0, 0] == -25.0
    assert ds.sar_nan_cleaned == 6


@pytest.mark.parametrize("content", [b"", b"not a tiff at all", "truncated"])
def test_truncated_or_non_tiff_file(tmp_path, content):
    n = _write_triplet(tmp_path)
    path = n.path(tmp_path)
    data = path.read_bytes()[:300] if content == "truncated" else content
    path.write_bytes(data)
    with pytest.raises(CorruptRasterError, match=r"s2_5_p1\.tif: not a readable GeoTIFF"):
        open_dataset(tmp_path).read(0)


def test_empty_or_unknown_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="empty folder"):
        open_dataset(tmp_path)
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no SEN12MS"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no such folder"):
        open_dataset(tmp_path / "nope")


def test_label_file_with_unknown_keys(tmp_path):
    _write_triplet(tmp_path)
    with open(tmp_path / "IGBP_probability_labels.pkl", "wb") as f:
        pickle.dump({"some_other_file.tif": np.ones(17, np.float32) / 17}, f)
    with pytest.raises(LabelError, match="IGBP_probability_labels.pkl"):
        open_dataset(tmp_path)


def test_malicious_pickle_is_refused(tmp_path):
    _write_triplet(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "IGBP_probability_labels.pkl", "wb") as f:
        pickle.dump({"ROIs1868_summer_s2_5_p1.tif": Evil()}, f)
    with pytest.raises(LabelError, match="only plain"):
        open_dataset(tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# The real Sentinel-2 fixture: a 12-band L2A float stack in EPSG:4326
# ---------------------------------------------------------------------------------------------------------------

def test_real_l2a_fixture_needs_an_explicit_band_map():
    path = REAL / "clean.tif"
    with pytest.raises(DTypeError, match=r"clean\.tif: s2 must be integer DN"):
        read_bands(path, "s2", S2_LAND_BANDS)
    arr, info = read_bands(path, "s2", S2_LAND_BANDS, band_map=S2_L2A_12_BANDS)
    assert arr.shape == (10, 256, 256) and info.crs.to_epsg() == 4326
    with rasterio.open(path) as src:
        full = src.read()
    # B8A is the 10th band of the L2A stack but the 8th of the land bands: the mapping is by name.
    np.testing.assert_array_equal(arr[S2_LAND_BANDS.index("B8A")], full[S2_L2A_12_BANDS.index("B8A")])
    np.testing.assert_array_equal(arr[S2_LAND_BANDS.index("B12")], full[11])
    with pytest.raises(BandError, match="band_map names 13 bands, the file has 12"):
        read_bands(path, "s2", S2_LAND_BANDS, band_map=S2_BANDS)
    with pytest.raises(BandError, match="B10 is not in this file"):
        read_bands(path, "s2", ("B10",), band_map=S2_L2A_12_BANDS)
