"""Speckle, dB conversions and the noise / filter helpers of the synthetic generator."""

import numpy as np
import pytest

from esccs.data.noise import fractal_noise, gaussian_blur, shift
from esccs.data.speckle import db_to_linear, linear_to_db, speckle


def test_speckle_db_std_matches_looks_and_keeps_mean_power():
    power = np.full((512, 512), 0.05, np.float32)
    out = speckle(power, 4.4, np.random.default_rng(0))
    assert out.shape == power.shape and out.dtype == np.float32
    assert abs(float(linear_to_db(out).std()) - 2.2) < 0.15  # theory: 10/ln10 * sqrt(psi'(4.4)) = 2.19 dB
    assert abs(float(out.mean()) / 0.05 - 1.0) < 0.02
    single = speckle(power, 1.0, np.random.default_rng(0))
    assert float(linear_to_db(single).std()) > 5.0  # single look: 5.6 dB


def test_speckle_is_deterministic_and_rejects_bad_looks():
    power = np.ones((2, 16, 16), np.float32)
    a = speckle(power, 4.4, np.random.default_rng(3))
    np.testing.assert_array_equal(a, speckle(power, 4.4, np.random.default_rng(3)))
    assert not np.array_equal(a, speckle(power, 4.4, np.random.default_rng(4)))
    with pytest.raises(ValueError):
        speckle(power, 0.0, np.random.default_rng(0))


def test_db_linear_round_trip():
    db = np.linspace(-30, 5, 101, dtype=np.float32)
    np.testing.assert_allclose(linear_to_db(db_to_linear(db)), db, atol=1e-4)
    assert linear_to_db(db_to_linear(db)).dtype == np.float32
    assert db_to_linear(np.array([-10.0, 0.0, 10.0])) == pytest.approx([0.1, 1.0, 10.0])
    assert np.isfinite(linear_to_db(np.zeros(3))).all()


def _roughness(field):
    return float(np.abs(np.diff(field, axis=0)).mean() + np.abs(np.diff(field, axis=1)).mean())


def test_fractal_noise_range_shape_smoothness_and_determinism():
    f = fractal_noise((64, 96), np.random.default_rng(0), decay=1.0)
    assert f.shape == (64, 96) and f.dtype == np.float32
    assert f.min() == 0.0 and f.max() == pytest.approx(1.0)
    rough = np.mean([_roughness(fractal_noise((128, 128), np.random.default_rng(s), decay=0.5)) for s in range(4)])
    smooth = np.mean([_roughness(fractal_noise((128, 128), np.random.default_rng(s), decay=2.0)) for s in range(4)])
    assert smooth < 0.5 * rough
    np.testing.assert_array_equal(fractal_noise((32, 32), np.random.default_rng(7)),
                                  fractal_noise((32, 32), np.random.default_rng(7)))
    assert not np.array_equal(fractal_noise((32, 32), np.random.default_rng(7)),
                              fractal_noise((32, 32), np.random.default_rng(8)))


def test_gaussian_blur_keeps_constant_shape_and_dtype_and_smooths():
    const = np.full((3, 20, 24), 7.5, np.float32)
    out = gaussian_blur(const, 1.5)
    assert out.shape == const.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 7.5, rtol=1e-5)
    noise = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    blurred = gaussian_blur(noise, 2.0)
    assert blurred.shape == (40, 40) and blurred.std() < 0.5 * noise.std()
    assert abs(float(blurred.mean()) - float(noise.mean())) < 0.02
    assert gaussian_blur(noise, 0.0) is noise
    assert gaussian_blur(np.full((8, 8), 100, np.uint16), 1.0).dtype == np.uint16


def test_shift_moves_content_and_replicates_edges():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = shift(img, 1, -1)
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[1:, :-1], img[:-1, 1:])
    np.testing.assert_array_equal(out[0, :-1], img[0, 1:])  # top row replicated
    np.testing.assert_array_equal(out[:, -1], [3, 3, 7])  # right column replicated
    stack = np.stack([img, img + 100])
    np.testing.assert_array_equal(shift(stack, 1, -1)[1], out + 100)
