"""The scene generator makes the data set the method needs: strong optics, weaker cloud-proof SAR, designed pairs."""

import numpy as np
import pytest

from esccs.data import scenes
from esccs.spec import CLASS_PRESETS, S2_BANDS

B = {b: i for i, b in enumerate(S2_BANDS)}


def render(cls, preset="sen12ms_cloud", n=6, size=64, seed=0):
    rng = np.random.default_rng(seed)
    look = scenes.SceneLook("spring", 1.0, 0.0, 0.0)
    out = []
    for _ in range(n):
        emap = scenes.element_map(cls, preset, (size, size), rng)
        out.append((emap, scenes.render_s2(emap, look, rng), scenes.render_s1(emap, look, rng)))
    return out


@pytest.mark.parametrize("preset", ["sen12ms_cloud", "igbp_simple"])
def test_every_class_renders_with_real_dtypes_and_ranges(preset):
    for cls in CLASS_PRESETS[preset]:
        for emap, s2, s1 in render(cls, preset, n=2, size=48):
            assert s2.shape == (13, 48, 48) and s2.dtype == np.uint16
            assert s1.shape == (2, 48, 48) and s1.dtype == np.float32
            assert np.isfinite(s1).all()
            assert s2[B["B10"]].mean() < 100  # cirrus band stays near 0 over clear ground
            assert emap.dtype == np.uint8 and emap.max() < len(scenes.ELEMENT_NAMES)


def test_b09_below_b8a_and_vh_below_vv():
    for _emap, s2, s1 in render("Dense Forests") + render("Herbaceous"):
        assert s2[B["B09"]].mean() < s2[B["B8A"]].mean()
        gap = (s1[0] - s1[1]).mean()
        assert 4.5 < gap < 9.5, gap  # VH is 5-9 dB below VV


def _means(cls, seed):
    r = render(cls, n=8, seed=seed)
    return np.mean([s2.reshape(13, -1).mean(1) for _, s2, _ in r], 0), np.mean([s1[0].mean() for *_, s1 in r])


def test_industrial_vs_residential_is_a_sar_only_distinction():
    opt_i, vv_i = _means("Industrial", 1)
    opt_r, vv_r = _means("Residential", 2)
    assert np.max(np.abs(opt_i - opt_r) / opt_r) < 0.06  # optics alike
    assert vv_i - vv_r > 2.5  # metal structures backscatter far more


def test_herbaceous_vs_scrub_is_an_optical_only_distinction():
    opt_h, vv_h = _means("Herbaceous", 3)
    opt_s, vv_s = _means("Scrub", 4)
    assert abs(vv_h - vv_s) < 0.8  # same backscatter prior
    assert abs(opt_h[B["B04"]] - opt_s[B["B04"]]) / opt_h[B["B04"]] > 0.1  # redder scrub
    assert abs(opt_h[B["B11"]] - opt_s[B["B11"]]) / opt_h[B["B11"]] > 0.08


def test_igbp_fractions_and_simple_label_match_the_real_scheme():
    lc = np.array([[12, 12, 14, 14], [10, 10, 10, 17]], np.uint8)  # croplands = IGBP 12 + 14 together
    fr = scenes.igbp_fractions(lc)
    assert fr.shape == (17,) and fr.sum() == pytest.approx(1.0)
    assert fr[11] == pytest.approx(0.25) and fr[13] == pytest.approx(0.25)
    assert scenes.igbp_simple_label(fr) == CLASS_PRESETS["igbp_simple"].index("Croplands")


def test_seasons_change_vegetation_nir():
    rng = np.random.default_rng(0)
    emap = scenes.element_map("Dense Forests", "sen12ms_cloud", (32, 32), rng)
    nir = {s: scenes.render_s2(emap, scenes.SceneLook(s, 1.0, 0.0, 0.0), np.random.default_rng(1))[B["B08"]].mean()
           for s in ("summer", "winter")}
    assert nir["summer"] > 1.15 * nir["winter"]
