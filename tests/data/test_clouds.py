"""Synthetic clouds: realised coverage, mask codes, spectral behaviour, determinism and real-mask rendering."""

import numpy as np
import pytest

from esccs.data.clouds import CLOUD_PRESETS, THICK_ALPHA, CloudResult, apply_cloud_mask, simulate_clouds
from esccs.spec import MASK_CLEAR, MASK_SHADOW, MASK_THICK, MASK_THIN, S2_BANDS, S2_L2A_12_BANDS

LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
#: Typical clear L1C magnitudes (mean DN) per band.
CLEAR_DN = dict(zip(S2_BANDS, (1461, 1186, 946, 743, 831, 1029, 1120, 1087, 1158, 504, 12, 793, 486)))


def clear_image(bands=S2_BANDS, size=64, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([CLEAR_DN.get(b, 1000) for b in bands], np.float32)[:, None, None]
    tex = 0.8 + 0.4 * rng.random((1, size, size), dtype=np.float32)
    return np.clip(base * tex, 1, None).astype(np.uint16)


@pytest.mark.parametrize("preset", sorted(CLOUD_PRESETS))
def test_realised_coverage_matches_request(preset):
    img = clear_image()
    for i, level in enumerate(LEVELS):
        res = simulate_clouds(img, level, np.random.default_rng(i), preset=preset)
        cloudy = np.isin(res.mask, (MASK_THICK, MASK_THIN))
        assert isinstance(res, CloudResult) and res.preset == preset
        assert abs(cloudy.mean() - level) <= 0.05, (preset, level, cloudy.mean())
        assert res.coverage == pytest.approx(cloudy.mean())
        assert res.image.shape == img.shape and res.image.dtype == np.uint16
        assert res.mask.dtype == np.uint8 and set(np.unique(res.mask)) <= {0, 1, 2, 3}
        assert res.alpha.shape == img.shape[1:] and res.alpha.dtype == np.float32
        assert res.alpha.min() >= 0.0 and res.alpha.max() <= 1.0
        assert (res.alpha[~cloudy] == 0).all() and (res.alpha[cloudy] > 0).all()
        assert (res.alpha[res.mask == MASK_THICK] >= THICK_ALPHA).all()
        assert (res.alpha[res.mask == MASK_THIN] < THICK_ALPHA).all()


def test_coverage_zero_leaves_image_untouched_and_one_covers_everything():
    img = clear_image()
    res = simulate_clouds(img, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(res.image, img)
    assert (res.mask == MASK_CLEAR).all() and res.coverage == 0.0
    full = simulate_clouds(img, 1.0, np.random.default_rng(0), preset="thick")
    assert full.coverage == 1.0 and (full.mask == MASK_THICK).mean() > 0.7
    assert full.image[1].mean() > 3 * img[1].mean()  # blue is white under thick cloud


def test_thin_is_lighter_than_thick_and_clouds_brighten():
    img = clear_image()
    means = {}
    for preset in ("thick", "thin"):
        alphas = []
        for seed in range(5):
            res = simulate_clouds(img, 0.5, np.random.default_rng(seed), preset=preset)
            alphas.append(res.alpha[res.alpha > 0].mean())
            cloudy = np.isin(res.mask, (1, 2))
            assert res.image[1][cloudy].mean() > img[1][cloudy].mean()
        means[preset] = np.mean(alphas)
    assert means["thin"] < means["thick"] - 0.2
    thin = simulate_clouds(img, 0.5, np.random.default_rng(0), preset="thin")
    assert (thin.mask == MASK_THIN).sum() > (thin.mask == MASK_THICK).sum()


def test_cloud_brightness_follows_band_priors():
    img = clear_image()
    res = simulate_clouds(img, 1.0, np.random.default_rng(1), preset="thick")
    core = res.alpha > 0.9
    level = {b: float(res.image[i][core].mean()) for i, b in enumerate(S2_BANDS)}
    assert 3500 < level["B02"] < 8200 and 1200 < level["B09"] < 4200 and 1300 < level["B12"] < 3700
    assert level["B10"] > 400  # cirrus band lights up (clear ground is ~12 DN)


def test_shadows_darken_nir_swir_more_than_blue():
    img = clear_image()
    ratios = []
    for seed in range(10):
        res = simulate_clouds(img, 0.3, np.random.default_rng(seed), preset="thick")
        shade = res.mask == MASK_SHADOW
        if shade.sum() < 20:
            continue
        assert not np.isin(res.mask[shade], (1, 2)).any()
        r = {b: res.image[S2_BANDS.index(b)][shade].mean() / img[S2_BANDS.index(b)][shade].mean()
             for b in ("B02", "B08", "B8A", "B11", "B12")}
        assert r["B08"] < r["B02"] < 1.0 and r["B12"] < r["B02"] and r["B11"] < r["B02"]
        ratios.append(r["B08"])
    assert len(ratios) >= 5 and np.mean(ratios) < 0.85


def test_deterministic_per_seed():
    img = clear_image()
    for preset in CLOUD_PRESETS:
        a = simulate_clouds(img, 0.4, np.random.default_rng(5), preset=preset)
        b = simulate_clouds(img, 0.4, np.random.default_rng(5), preset=preset)
        c = simulate_clouds(img, 0.4, np.random.default_rng(6), preset=preset)
        for field in ("image", "mask", "alpha"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(a.alpha, c.alpha) and not np.array_equal(a.image, c.image)


def _best_offset(a, b, reach=5):
    """Integer (dy, dx) that best aligns ``b`` onto ``a`` (maximum correlation over the interior)."""
    r, (h, w) = reach, b.shape
    core = a[r:-r, r:-r].ravel()
    scores = {(dy, dx): np.corrcoef(core, b[r - dy:h - r - dy, r - dx:w - r - dx].ravel())[0, 1]
              for dy in range(-r, r + 1) for dx in range(-r, r + 1)}
    return max(scores, key=scores.get)


def test_per_band_misalignment():
    img = np.full((13, 64, 64), 1000, np.uint16)  # flat ground: every change comes from the cloud
    for seed in range(3):
        res = simulate_clouds(img, 0.4, np.random.default_rng(seed), preset="thick")
        b01, b12 = (res.image[i].astype(np.float32) - 1000 for i in (0, 12))
        dy, dx = _best_offset(b01, b12)
        assert (dy, dx) != (0, 0) and max(abs(dy), abs(dx)) <= 4
        assert not np.array_equal(b01 > 0.5 * b01.max(), b12 > 0.5 * b12.max())


def test_works_on_l2a_12_bands_and_band_subsets():
    img = clear_image(S2_L2A_12_BANDS)
    res = simulate_clouds(img, 0.5, np.random.default_rng(0), preset="local", band_names=S2_L2A_12_BANDS)
    assert res.image.shape == (12, 64, 64) and abs(res.coverage - 0.5) <= 0.05
    sub = ("B04", "B03", "B02", "XYZ")
    res = simulate_clouds(clear_image(sub), 0.5, np.random.default_rng(0), band_names=sub)
    assert res.image.shape == (4, 64, 64)
    with pytest.raises(ValueError):
        simulate_clouds(img, 0.5, np.random.default_rng(0))  # 13 names for 12 bands
    with pytest.raises(ValueError):
        simulate_clouds(clear_image(), 0.5, np.random.default_rng(0), preset="storm")
    with pytest.raises(ValueError):
        simulate_clouds(clear_image(), 1.5, np.random.default_rng(0))


def test_float_images_keep_their_dtype_and_outputs_clip():
    img = np.full((13, 32, 32), 65000, np.uint16)
    res = simulate_clouds(img, 0.5, np.random.default_rng(0))
    assert res.image.dtype == np.uint16 and res.image.max() <= 65535
    res = simulate_clouds(clear_image().astype(np.float32), 0.5, np.random.default_rng(0))
    assert res.image.dtype == np.float32


def test_apply_cloud_mask_reproduces_the_mask():
    img = clear_image()
    mask = np.zeros((64, 64), np.uint8)
    mask[5:30, 5:30], mask[40:60, 10:50], mask[30:40, 30:40] = MASK_THICK, MASK_THIN, MASK_SHADOW
    res = apply_cloud_mask(img, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(res.mask, mask)
    assert res.coverage == pytest.approx(np.isin(mask, (1, 2)).mean()) and res.preset == "mask"
    assert (res.alpha[mask == MASK_THICK] >= 0.9).all() and (res.alpha[mask == MASK_THICK] <= 1).all()
    thin = res.alpha[mask == MASK_THIN]
    assert (thin >= 0.3).all() and (thin <= 0.6).all() and (res.alpha[~np.isin(mask, (1, 2))] == 0).all()
    changed = (res.image != img).any(axis=0)
    assert changed[np.isin(mask, (1, 2))].all() and not changed[mask == MASK_CLEAR].any()
    b08, b02 = S2_BANDS.index("B08"), S2_BANDS.index("B02")
    shade = mask == MASK_SHADOW
    assert (res.image[b08][shade].mean() / img[b08][shade].mean()
            < res.image[b02][shade].mean() / img[b02][shade].mean() < 1.0)
    binary = apply_cloud_mask(img, mask == MASK_THICK, np.random.default_rng(0))
    assert set(np.unique(binary.mask)) == {0, 1}
    with pytest.raises(ValueError):
        apply_cloud_mask(img, np.full((64, 64), 7, np.uint8), np.random.default_rng(0))
