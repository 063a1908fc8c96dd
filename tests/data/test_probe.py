"""The synthetic data set is one where the method matters (checked with the quick probe classifier)."""

import pytest

from esccs.data.probe import format_probe, run_probe
from esccs.data.synth import SynthConfig, synthesize


@pytest.mark.slow
def test_probe_shows_strong_optics_weaker_cloud_proof_sar_and_clouds_that_wipe_optics(tmp_path):
    out = synthesize(SynthConfig(out=tmp_path / "d", samples=1000, size=48, patches_per_scene=20, seed=0),
                     progress=False).out
    r = run_probe(out, part="target")
    acc, by = r["accuracy"], r["by_level"]
    print(format_probe(r))
    assert acc["clear optical"] > acc["SAR"] + 0.03  # cloud-free optics are the strongest single cue
    assert acc["SAR"] > r["chance"] + 0.3  # SAR is weaker but clearly informative
    assert acc["cloudy optical + SAR"] > max(acc["cloudy optical"], acc["SAR"])  # the modalities complement
    assert acc["clear optical + SAR"] > acc["clear optical"] + 0.03  # some pairs are separable only by SAR
    cloudy = by["cloudy optical"]
    assert cloudy["0"] - cloudy["1"] > 0.3  # full cover wipes the optical cue
    sar = by["SAR"]
    assert sar["1"] > cloudy["1"] + 0.2  # under full cover SAR is the better cue
    assert (cloudy["0"] - cloudy["1"]) > (sar["0"] - sar["1"]) + 0.2  # and clouds do not hurt SAR
    assert by["clear-trained on cloudy"]["1"] < 0.3  # a source model on clouded optics is near chance
