"""[ours] Relative radiometric normalisation of the target's optical images (``step1.radiometric``)."""

import numpy as np
import pytest
import torch

from esccs.data.synth import SynthConfig, synthesize
from esccs.data.transforms import Normalizer
from esccs.errors import ConfigError
from esccs.train import stages as st
from esccs.train.bank import Bank
from esccs.train.config import load_config
from esccs.train.run import evaluate_checkpoint, train

BANDS = ("B02", "B03", "B04", "B08")
GAIN = np.array([0.9, 1.1, 0.95, 1.08], np.float32)
OFFSET = np.array([40.0, -30.0, 25.0, -45.0], np.float32)


def _raw(n, seed):
    """Textured S2-like DN images, (n, 4, 8, 8), one scene per 4 patches."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(900, 1300, size=(n, len(BANDS), 1, 1))
    return (base + rng.normal(0, 150, size=(n, len(BANDS), 8, 8))).astype(np.float32)


def _bank(raw, coverage, part):
    n = len(raw)
    norm = Normalizer.for_bands(BANDS)
    return Bank([f"{part}{i}" for i in range(n)], torch.from_numpy(norm(raw)), torch.zeros(n, 2, 8, 8),
                torch.full((n,), -1), torch.as_tensor(coverage, dtype=torch.float32), np.array(["train"] * n),
                tuple("abcd"), norm, Normalizer.for_bands(("VV", "VH")),
                groups=np.array([f"{part}-scene{i // 4}" for i in range(n)]))


def test_renormalized_equals_normalising_the_raw_values():
    raw = _raw(6, 0)
    bank = _bank(raw, np.zeros(6), "t")
    other = Normalizer(BANDS, np.array([100.0, 2000, -50, 900], np.float32), np.array([300.0, 50, 2, 4000], np.float32),
                       bank.opt_norm.clip)
    torch.testing.assert_close(bank.renormalized(other).optical, torch.from_numpy(other(raw)), rtol=1e-5, atol=1e-4)
    assert bank.renormalized(other).opt_norm is other and bank.optical is not bank.renormalized(other).optical
    with pytest.raises(Exception, match="cannot renormalise"):
        bank.renormalized(Normalizer.for_bands(BANDS[:3]))


def test_the_map_removes_a_sensor_gain_and_offset_exactly():
    raw = _raw(40, 1)
    src = _bank(raw, np.zeros(40), "s")
    # the target: the same scenes through another sensor calibration; half of them clouded (excluded from stats)
    shifted = raw * GAIN[None, :, None, None] + OFFSET[None, :, None, None]
    cover = np.where(np.arange(40) % 2 == 0, 0.0, 0.5)
    clouded = shifted.copy()
    clouded[cover > 0, :, :4] = 9000.0  # bright cloud over half of those images
    tgt = _bank(clouded, cover, "t")
    norm, report = st.radiometric(src, tgt, "auto")
    assert report["applied"] and report["mean_z2"] > st.RADIOMETRIC_Z2 and report["clear_patches"] == 20
    fixed = tgt.renormalized(norm)
    clear = torch.as_tensor(cover == 0)
    # an affine change of the DN is undone: the corrected clear target images are the source images
    # (exact here because the clear target patches are the even source patches, whose statistics match all of them
    # only approximately; compare against the map estimated from exactly those patches)
    src_even = _bank(raw[clear.numpy()], np.zeros(20), "s")
    norm_even, _ = st.radiometric(src_even, tgt, "clear")
    torch.testing.assert_close(tgt.renormalized(norm_even).optical[clear], src_even.optical, rtol=1e-4, atol=1e-3)
    # the folded normaliser applied to raw target DN is the correction: its clear pixels have the source's moments
    px = lambda x: x.transpose(0, 1).reshape(x.shape[1], -1)  # noqa: E731
    torch.testing.assert_close(px(fixed.optical[clear]).mean(1), px(src.optical).mean(1), rtol=0, atol=1e-3)
    torch.testing.assert_close(px(fixed.optical[clear]).std(1), px(src.optical).std(1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fixed.optical, torch.from_numpy(norm(clouded)), rtol=1e-5, atol=1e-4)


def test_auto_leaves_data_without_a_shift_alone():
    src = _bank(_raw(40, 2), np.zeros(40), "s")
    tgt = _bank(_raw(40, 3), np.zeros(40), "t")  # another draw of the same distribution
    norm, report = st.radiometric(src, tgt, "auto")
    assert norm is None and not report["applied"] and report["mean_z2"] <= st.RADIOMETRIC_Z2, report
    assert st.radiometric(src, tgt, "clear")[0] is not None  # "clear" always corrects
    assert st.radiometric(src, tgt, "none") == (None, {"mode": "none", "applied": False})
    few = _bank(_raw(8, 4), np.r_[np.zeros(4), np.ones(4)], "t")
    norm, report = st.radiometric(src, few, "clear")
    assert norm is None and "fewer than" in report["why"]


def test_a_typo_in_the_option_is_refused():
    with pytest.raises(ConfigError, match="step1.radiometric.*did you mean 'clear'"):
        load_config(None, {"step1.radiometric": "clera"})


@pytest.mark.slow
def test_a_corrected_run_carries_its_normaliser_into_the_checkpoint(tmp_path):
    """Train on sensor-shifted data with the correction on; evaluating the saved checkpoint alone (what export and
    ``esccs eval CKPT`` see) reproduces the run's predictions, and f_S's own stages stay uncorrected."""
    data = tmp_path / "d"
    synthesize(SynthConfig(out=data, samples=360, size=16, patches_per_scene=12, workers=1, seed=5, shift="sensor"),
               progress=False)
    cfg = load_config(None, {"data": str(data), "out": str(tmp_path / "run"), "model.arch": "resnet10",
                             "model.width": 8, "source.epochs": 1, "aux.epochs": 1, "target.epochs": 1,
                             "step1.min_per_class": 2, "step1.radiometric": "clear", "step2.rounds": 0})
    res = train(cfg, ["esccs", "optical-only", "source-only"], progress=False)
    run = tmp_path / "run"
    assert (run / "aux_optical_rad").is_dir() and not (run / "aux_optical").exists()
    assert res["esccs"]["info"]["radiometric"] is True
    report = __import__("json").loads((run / "step1.json").read_text())["radiometric:clear"]
    assert report["applied"] and len(report["gain"]) == len(cfg.bands)
    for name, ckpt in (("esccs", run / "target" / "model.safetensors"),
                       ("optical-only", run / "aux_optical_rad" / "model.safetensors"),
                       ("source-only", run / "source" / "model.safetensors")):
        again = evaluate_checkpoint(ckpt, data, progress=False)
        assert again["overall"] == res[name]["overall"], name
    from esccs.models import load_checkpoint

    norm_t = load_checkpoint(run / "target" / "model.safetensors")[1].normalization["optical"]
    norm_s = load_checkpoint(run / "source" / "model.safetensors")[1].normalization["optical"]
    assert norm_t != norm_s  # the target model's normaliser is the corrected one, the source model's the official one
    assert norm_s == Normalizer.for_bands(cfg.bands).to_dict()
