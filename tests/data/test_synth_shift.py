"""`esccs data synth --shift`: the source part is untouched, the target part differs as docs/data.md says."""

import json

import numpy as np
import pytest
import rasterio

from esccs.data.synth import SENSOR_SAR_DB, SynthConfig, synthesize
from esccs.errors import EsccsError


def _make(root, shift):
    synthesize(SynthConfig(out=root, samples=48, size=16, patches_per_scene=6, workers=1, seed=4, shift=shift),
               progress=False)
    return {p.relative_to(root): p for p in root.rglob("*.tif")}


def _read(p):
    with rasterio.open(p) as ds:
        return ds.read()


def test_sensor_shift_changes_only_the_target_and_by_the_stated_calibration(tmp_path):
    plain, sensor = _make(tmp_path / "a", "none"), _make(tmp_path / "b", "sensor")
    assert plain.keys() == sensor.keys()
    s1 = [k for k in plain if k.parts[0] == "target" and "_s1_" in k.name]
    s2 = [k for k in plain if k.parts[0] == "target" and "_s2_" in k.name and "cloudy" not in k.name]
    src = [k for k in plain if k.parts[0] == "source"]
    assert s1 and s2 and src
    for k in src:  # the source part is the same file for file
        assert np.array_equal(_read(plain[k]), _read(sensor[k]))
    for k in s1:  # S1: +1.0 dB VV, +1.5 dB VH, the same speckle
        d = _read(sensor[k]).astype(np.float64) - _read(plain[k])
        assert np.allclose(d[0], SENSOR_SAR_DB[0], atol=1e-4) and np.allclose(d[1], SENSOR_SAR_DB[1], atol=1e-4)
    a = np.stack([_read(plain[k]) for k in s2]).astype(np.float64)
    b = np.stack([_read(sensor[k]) for k in s2]).astype(np.float64)
    for band in range(a.shape[1]):  # S2: one gain and offset per band for the whole data set
        x, y = a[:, band].ravel(), b[:, band].ravel()
        keep = (y > 1) & (y < 10000)
        gain, offset = np.polyfit(x[keep], y[keep], 1)
        assert 0.87 < gain < 1.13 and -60 < offset < 60
        assert np.abs(y[keep] - (gain * x[keep] + offset)).max() <= 1.0  # up to rounding to DN
    card = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert card["generator"]["shift"] == "sensor"


def test_season_shift_puts_source_and_target_in_different_seasons(tmp_path):
    files = _make(tmp_path / "s", "season")
    seasons = {part: {k.parts[1].split("_")[1] for k in files if k.parts[0] == part} for part in ("source", "target")}
    assert seasons["source"] <= {"spring", "summer"} and seasons["target"] <= {"fall", "winter"}
    assert seasons["source"] and seasons["target"]


def test_unknown_shift_is_refused(tmp_path):
    with pytest.raises(EsccsError, match="--shift must be one of"):
        SynthConfig(out=tmp_path, shift="seasn")
