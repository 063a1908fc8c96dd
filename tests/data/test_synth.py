"""`esccs data synth` writes the real SEN12MS / SEN12MS-CR layouts, deterministically, with the requested clouds."""

import csv
import json
import pickle

import numpy as np
import pytest
import rasterio

from esccs.data.synth import SynthConfig, make_arrays, plan_dataset, synthesize
from esccs.errors import EsccsError
from esccs.io.names import parse_name

TINY = dict(samples=40, size=32, patches_per_scene=5, workers=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(SynthConfig(out=out, seed=7, **TINY), progress=False)
    return out


def _tifs(root):
    return sorted(p for p in root.rglob("*.tif"))


def test_layout_is_exact_sen12ms_and_sen12ms_cr(tiny):
    src, tgt = _tifs(tiny / "source"), _tifs(tiny / "target")
    assert src and tgt
    for p in src:  # ROIs1158_spring/s2_12/ROIs1158_spring_s2_12_p34.tif
        n = parse_name(p)
        assert n.sensor in ("s1", "s2", "lc")
        assert p.relative_to(tiny / "source") == n.path(".", "sen12ms")
    for p in tgt:  # ROIs1158_spring_s2_cloudy/s2_cloudy_12/ROIs1158_spring_s2_cloudy_12_p34.tif
        n = parse_name(p)
        assert n.sensor in ("s1", "s2", "s2_cloudy", "cloud_mask")
        assert p.relative_to(tiny / "target") == n.path(".", "sen12ms-cr")
    n_src = len({parse_name(p).sample_id for p in src})
    n_tgt = len({parse_name(p).sample_id for p in tgt})
    assert n_src + n_tgt == TINY["samples"]
    assert len(src) == 3 * n_src and len(tgt) == 4 * n_tgt  # every modality of every sample


def test_rasters_have_sen12ms_dtypes_bands_and_utm_10m_grids(tiny):
    want = {"s2": ("uint16", 13), "s2_cloudy": ("uint16", 13), "s1": ("float32", 2), "lc": ("uint8", 4),
            "cloud_mask": ("uint8", 1)}
    for p in _tifs(tiny)[:40]:
        with rasterio.open(p) as src:
            sensor = parse_name(p).sensor
            assert (src.dtypes[0], src.count) == want[sensor], p
            assert 32601 <= src.crs.to_epsg() <= 32660  # WGS84 / UTM north
            assert (src.transform.a, src.transform.e) == (10.0, -10.0)
            assert (src.width, src.height) == (32, 32)
    with rasterio.open(next((tiny / "source").rglob("*_s2_*.tif"))) as src:
        assert src.descriptions[0] == "B01" and src.descriptions[-1] == "B12"


def test_source_and_target_are_disjoint_scenes_with_grouped_splits(tiny):
    cards = {p: json.loads((tiny / p / "dataset.json").read_text()) for p in ("source", "target")}
    groups = {p: {tuple(g) for gs in c["splits"].values() for g in gs} for p, c in cards.items()}
    assert not groups["source"] & groups["target"]
    for c in cards.values():
        split_groups = [{tuple(g) for g in gs} for gs in c["splits"].values()]
        assert len(split_groups) == 2 and not split_groups[0] & split_groups[1]
    assert set(cards["source"]["splits"]) == {"train", "val"} and set(cards["target"]["splits"]) == {"train", "test"}
    assert cards["target"]["labels_eval_only"] is True and cards["source"]["labels_eval_only"] is False


def test_cloud_cover_matches_requested_levels(tiny):
    rows = list(csv.DictReader(open(tiny / "target" / "clouds.csv")))
    assert {float(r["level"]) for r in rows} == {0.0, 0.25, 0.5, 0.75, 1.0}
    for r in rows:
        assert abs(float(r["coverage"]) - float(r["level"])) <= 0.05, r
        n = parse_name(r["id"]).with_sensor("cloud_mask")
        with rasterio.open(n.path(tiny / "target", "sen12ms-cr")) as src:
            mask = src.read(1)
        assert abs(np.isin(mask, (1, 2)).mean() - float(r["coverage"])) < 1e-6


def test_label_files_agree_with_lc_maps(tiny):
    labels = dict(csv.reader(open(tiny / "source" / "labels.csv")))
    labels.pop("id")
    with open(tiny / "source" / "IGBP_probability_labels.pkl", "rb") as f:
        fractions = pickle.load(f)  # our own file, written by the test fixture
    assert set(labels) == set(fractions)
    for name, fr in list(fractions.items())[:5]:
        with rasterio.open(parse_name(name).with_sensor("lc").path(tiny / "source")) as src:
            igbp = src.read(1)
        assert fr.shape == (17,) and fr.dtype == np.float32
        np.testing.assert_allclose(fr, np.bincount(igbp.ravel(), minlength=18)[1:] / igbp.size, atol=1e-6)


def test_deterministic_per_seed_and_worker_count(tmp_path):
    a = synthesize(SynthConfig(out=tmp_path / "a", seed=3, **{**TINY, "samples": 12}), progress=False)
    b = synthesize(SynthConfig(out=tmp_path / "b", seed=3, **{**TINY, "samples": 12, "workers": 2}), progress=False)
    c = synthesize(SynthConfig(out=tmp_path / "c", seed=4, **{**TINY, "samples": 12}), progress=False)
    files_a, files_b = _tifs(a.out), _tifs(b.out)
    assert [p.relative_to(a.out) for p in files_a] == [p.relative_to(b.out) for p in files_b]
    for pa, pb in zip(files_a, files_b):
        with rasterio.open(pa) as x, rasterio.open(pb) as y:
            np.testing.assert_array_equal(x.read(), y.read())
    assert (a.out / "source/labels.csv").read_text() == (b.out / "source/labels.csv").read_text()
    assert (c.out / "source/labels.csv").read_text() != (a.out / "source/labels.csv").read_text()


def test_existing_output_needs_resume_or_overwrite_and_resume_finishes(tmp_path):
    cfg = SynthConfig(out=tmp_path / "d", seed=5, **{**TINY, "samples": 12})
    synthesize(cfg, progress=False)
    with pytest.raises(EsccsError, match="already exists; pass --resume"):
        synthesize(cfg, progress=False)
    files = _tifs(cfg.out)
    before = {p: rasterio.open(p).read() for p in files}
    # Simulate an interrupted run: cards and some rasters missing.
    for p in files[::3]:
        p.unlink()
    (cfg.out / "dataset.json").unlink()
    synthesize(SynthConfig(**{**cfg.__dict__, "resume": True}), progress=False)
    assert _tifs(cfg.out) == files
    for p in files:
        np.testing.assert_array_equal(rasterio.open(p).read(), before[p])
    assert not list(cfg.out.rglob(".*.tif"))  # no temp files left behind
    synthesize(SynthConfig(**{**cfg.__dict__, "overwrite": True}), progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    with pytest.raises(EsccsError, match="refusing to delete"):
        synthesize(SynthConfig(**{**cfg.__dict__, "out": tmp_path / "foreign", "overwrite": True}), progress=False)
    assert (tmp_path / "foreign" / "keep.txt").exists()


def test_igbp_simple_labels_are_the_argmax_of_simplified_fractions(tmp_path):
    from esccs.data.scenes import igbp_simple_label
    from esccs.spec import IGBP_SIMPLE_CLASSES

    out = synthesize(SynthConfig(out=tmp_path / "i", classes="igbp_simple", seed=1, **TINY), progress=False).out
    labels = dict(csv.reader(open(out / "source" / "labels.csv")))
    with open(out / "source" / "IGBP_probability_labels.pkl", "rb") as f:
        fractions = pickle.load(f)
    for name, fr in fractions.items():
        assert labels[name] == IGBP_SIMPLE_CLASSES[igbp_simple_label(fr)]


def test_plan_balances_levels_and_rejects_bad_options(tmp_path):
    cfg = SynthConfig(out=tmp_path, samples=100, size=32, cloud_levels=(0.0, 0.5, 1.0))
    plans = plan_dataset(cfg)
    levels = [p.level for p in plans if p.part == "target"]
    counts = [levels.count(v) for v in (0.0, 0.5, 1.0)]
    assert max(counts) - min(counts) <= 1
    assert len({(p.season, p.scene, p.patch) for p in plans}) == len(plans)
    for bad in (dict(samples=2), dict(size=8), dict(cloud_levels=(1.5,)), dict(source_fraction=1.0),
                dict(layout="x"), dict(classes="hunan_cloud")):
        with pytest.raises((EsccsError, ValueError)):
            SynthConfig(out=tmp_path, **bad)


def test_heavy_cloud_erases_optical_signal(tmp_path):
    cfg = SynthConfig(out=tmp_path, samples=40, size=48, cloud_levels=(1.0,))
    plan = next(p for p in plan_dataset(cfg) if p.part == "target" and p.preset == "thick")
    arr = make_arrays(plan, cfg)
    clear, cloudy = arr["s2"][3].astype(float).ravel(), arr["s2_cloudy"][3].astype(float).ravel()
    assert arr["coverage"] >= 0.95
    assert abs(np.corrcoef(clear, cloudy)[0, 1]) < 0.5
