"""[ours] Relative radiometric normalisation of the target's optical images (``step1.radiometric``)."""

import json

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
    # an affine change of the DN is undone: estimated against exactly the source patches the clear target patches
    # came from, the corrected clear target images are those source images
    src_even = _bank(raw[clear.numpy()], np.zeros(20), "s")
    norm_even, _ = st.radiometric(src_even, tgt, "clear")
    torch.testing.assert_close(tgt.renormalized(norm_even).optical[clear], src_even.optical, rtol=1e-4, atol=1e-3)
    # the folded normaliser applied to raw target DN is the correction: its clear pixels have the source's moments
    px = lambda x: x.transpose(0, 1).reshape(x.shape[1], -1)  # noqa: E731
    torch.testing.assert_close(px(fixed.optical[clear]).mean(1), px(src.optical).mean(1), rtol=0, atol=1e-3)
    torch.testing.assert_close(px(fixed.optical[clear]).std(1), px(src.optical).std(1), rtol=1e-3, atol=1e-3)
    mean, std = st._band_moments(fixed.optical[clear], chunk=3)  # the chunked moments the map is built from
    torch.testing.assert_close(mean, px(fixed.optical[clear]).double().mean(1))
    torch.testing.assert_close(std, px(fixed.optical[clear]).double().std(1))
    torch.testing.assert_close(fixed.optical, torch.from_numpy(norm(clouded)), rtol=1e-5, atol=1e-4)


def test_auto_leaves_data_without_a_shift_alone():
    src = _bank(_raw(40, 2), np.zeros(40), "s")
    tgt = _bank(_raw(40, 3), np.zeros(40), "t")  # another draw of the same distribution
    norm, report = st.radiometric(src, tgt, "auto")
    assert norm is None and not report["applied"] and report["mean_z2"] <= st.RADIOMETRIC_Z2, report
    assert st.radiometric(src, tgt, "clear")[0] is not None  # "clear" always corrects
    assert st.radiometric(src, tgt, "none") == (None, {"mode": "none", "applied": False})
    # many scenes make a tiny offset "significant": the effect-size floor keeps auto from correcting it
    big_src = _bank(_raw(800, 5), np.zeros(800), "s")
    nudged = _bank(_raw(800, 6) + 20.0, np.zeros(800), "t")  # about 0.1 sd
    norm, report = st.radiometric(big_src, nudged, "auto")
    assert norm is None and report["mean_z2"] > st.RADIOMETRIC_Z2 and report["effect"] <= st.RADIOMETRIC_EFFECT
    assert st.radiometric(big_src, nudged, "clear")[0] is not None
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
    cfg_over = {"data": str(data), "out": str(tmp_path / "run"), "model.arch": "resnet10", "model.width": 8,
                "source.epochs": 1, "aux.epochs": 1, "target.epochs": 1, "step1.min_per_class": 2,
                "step1.radiometric": "clear", "step2.rounds": 0}
    cfg = load_config(None, cfg_over)
    res = train(cfg, ["esccs", "optical-only", "source-only"], progress=False)
    run = tmp_path / "run"
    assert (run / "aux_optical_rad").is_dir() and not (run / "aux_optical").exists()
    assert res["esccs"]["info"]["radiometric"] is True
    report = json.loads((run / "step1.json").read_text())["radiometric:clear"]
    assert report["applied"] and len(report["gain"]) == len(cfg.bands)
    assert len(res["esccs"]["info"]["temperatures"]) == 1  # calibrated once (no relabelling round here)
    for name, ckpt in (("esccs", run / "target" / "model.safetensors"),
                       ("optical-only", run / "aux_optical_rad" / "model.safetensors"),
                       ("source-only", run / "source" / "model.safetensors")):
        again = evaluate_checkpoint(ckpt, data, progress=False)
        assert again["ids"] == res[name]["ids"] and again["pred"] == res[name]["pred"], name
        assert again["overall"] == res[name]["overall"], name
    assert evaluate_checkpoint(run / "target" / "model.safetensors", data, progress=False)["diagnostics"]
    # the same run folder with the correction off refuses to reuse the corrected target
    with pytest.raises(ConfigError, match="another input normaliser"):
        train(load_config(None, {**cfg_over, "step1.radiometric": "none"}), ["esccs"], progress=False)
    from esccs.models import load_checkpoint

    norm_t = load_checkpoint(run / "target" / "model.safetensors")[1].normalization["optical"]
    norm_s = load_checkpoint(run / "source" / "model.safetensors")[1].normalization["optical"]
    assert norm_t != norm_s  # the target model's normaliser is the corrected one, the source model's the official one
    assert norm_s == Normalizer.for_bands(cfg.bands).to_dict()


def test_a_finished_stage_is_reused_only_with_its_normaliser_and_recipe(tmp_path):
    from esccs.models import create_model_from_config, save_checkpoint

    bank = _bank(_raw(4, 7), np.zeros(4), "t")
    cfg = load_config(None, {"model.arch": "resnet10", "model.width": 8})
    mcfg = st.model_config(cfg, bank, "optical")
    save_checkpoint(st.checkpoint_path(tmp_path, "aux_optical"), create_model_from_config(mcfg), mcfg,
                    extra={"recipe": {"step1.q": 0.5}})
    loop = cfg.loop("aux")
    no_training = None  # the stage exists: nothing is trained, so no data and no step are needed
    assert st.run_stage(tmp_path, "aux_optical", mcfg, {}, no_training, loop, recipe={"step1.q": 0.5}) is not None
    assert st.run_stage(tmp_path, "aux_optical", mcfg, {}, no_training, loop) is not None  # no recipe: normaliser only
    with pytest.raises(ConfigError, match="aux_optical: .*step1.q = 0.5, the config asks for 0.7"):
        st.run_stage(tmp_path, "aux_optical", mcfg, {}, no_training, loop, recipe={"step1.q": 0.7})
    other = st.model_config(cfg, bank.renormalized(_shifted_norm()), "optical")
    with pytest.raises(ConfigError, match="another input normaliser"):
        st.run_stage(tmp_path, "aux_optical", other, {}, no_training, loop, recipe={"step1.q": 0.5})


def _shifted_norm():
    n = Normalizer.for_bands(BANDS)
    return Normalizer(n.bands, n.mean + 10, n.std * 1.1, n.clip)


def test_a_relabelling_round_is_reused_whatever_rounds_follow_it_and_step2_stages_record_step1(tmp_path):
    cfg1 = load_config(None, {"step2.rounds": 1})
    cfg2 = load_config(None, {"step2.rounds": 2})
    # round 0 and the round-1 auxiliary are the same models whether one or two rounds follow
    assert st.step2_recipe(cfg1, 0) == st.step2_recipe(cfg2, 0) and "step2.rounds" not in st.step2_recipe(cfg2, 1)
    # the last round records the number of rounds: rounds 1 -> 2 does not reuse the final model
    assert st.step2_recipe(cfg1, 1)["step2.rounds"] == 1 and st.step2_recipe(cfg2, 2)["step2.rounds"] == 2
    # a step-2 stage depends on its teachers' step-1 settings
    other = load_config(None, {"step1.cloud_max": 0.5})
    assert st.step2_recipe(other)["step1.cloud_max"] == 0.5 != st.step2_recipe(cfg1)["step1.cloud_max"]

    bank = _bank(_raw(4, 7), np.zeros(4), "t")
    small = load_config(None, {"model.arch": "resnet10", "model.width": 8})
    mcfg = st.model_config(small, bank, "dual")
    from esccs.models import create_model_from_config, save_checkpoint

    # a checkpoint of a one-round run: its final model, and its round 0
    tmp = tmp_path
    save_checkpoint(st.checkpoint_path(tmp, "target"), create_model_from_config(mcfg),
                    mcfg, extra={"recipe": st.step2_recipe(cfg1, 1)})
    save_checkpoint(st.checkpoint_path(tmp, "target_round0"), create_model_from_config(mcfg), mcfg,
                    extra={"recipe": st.step2_recipe(cfg1, 0)})
    loop = small.loop("target")
    assert st.run_stage(tmp, "target_round0", mcfg, {}, None, loop, recipe=st.step2_recipe(cfg2, 0)) is not None
    with pytest.raises(ConfigError, match=r"target: .*step2.round = 1, the config asks for 2"):
        st.run_stage(tmp, "target", mcfg, {}, None, loop, recipe=st.step2_recipe(cfg2, 2))
    # a final model saved before rounds were recorded: the number of rounds alone refuses it
    save_checkpoint(st.checkpoint_path(tmp, "final_v1"), create_model_from_config(mcfg), mcfg,
                    extra={"recipe": {k: v for k, v in st.step2_recipe(cfg1).items() if k.startswith("step2.")}})
    with pytest.raises(ConfigError, match=r"final_v1: .*step2.rounds = 1, the config asks for 3"):
        st.run_stage(tmp, "final_v1", mcfg, {}, None, loop, recipe=st.step2_recipe(load_config(None, {}), 3))
    # a setting added to a group the checkpoint records is compared too (the stage never saw it)
    added = {**st.step2_recipe(cfg1, 0), "step2.new_option": 1}
    with pytest.raises(ConfigError, match=r"target_round0: .*trained with no step2.new_option, the config asks for 1"):
        st.run_stage(tmp, "target_round0", mcfg, {}, None, loop, recipe=added)
    with pytest.raises(ConfigError, match=r"target_round0: .*step1.cloud_max"):
        st.run_stage(tmp, "target_round0", mcfg, {}, None, loop, recipe=st.step2_recipe(other, 0))
    # an older checkpoint that recorded step 2 only is still checked on what it recorded
    old = {k: v for k, v in st.step2_recipe(cfg1).items() if k.startswith("step2.")}
    save_checkpoint(st.checkpoint_path(tmp, "older"), create_model_from_config(mcfg), mcfg, extra={"recipe": old})
    assert st.run_stage(tmp, "older", mcfg, {}, None, loop, recipe=st.step2_recipe(cfg1)) is not None
    with pytest.raises(ConfigError, match=r"older: .*step2.beta"):
        st.run_stage(tmp, "older", mcfg, {}, None, loop, recipe=st.step2_recipe(load_config(None, {"step2.beta": 0.1})))
