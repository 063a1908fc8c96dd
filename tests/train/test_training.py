"""Training: stages end to end on tiny data, filters, KD/IRM properties, resume, recipes, CLI, bad input."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from esccs.cli import cli
from esccs.data.synth import SynthConfig, synthesize
from esccs.errors import ConfigError, DataError
from esccs.ops.irm_kd import irm_weights_reference
from esccs.ops.unimodal_kd.reference import kd_rows
from esccs.train import stages as st
from esccs.train.config import load_config
from esccs.train.filters import FilterConfig, select
from esccs.train.loop import Trainer
from esccs.train.methods import ABLATION_NAMES, METHODS, Context, ablation
from esccs.train.run import load_banks, train

TINY = {"model.arch": "resnet10", "model.width": 8, "source.epochs": 1, "aux.epochs": 1, "target.epochs": 1,
        "step1.min_per_class": 2, "source.batch_size": 32, "aux.batch_size": 32, "target.batch_size": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "d"
    synthesize(SynthConfig(out=out, samples=480, size=24, patches_per_scene=12, workers=1, seed=3), progress=False)
    return out


@pytest.fixture(scope="module")
def banks(data):
    return load_banks(load_config(None, {"data": str(data), **TINY}), progress=False)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """One run folder for the recipe tests: the shared stages (source, step 1) train once, then load."""
    return tmp_path_factory.mktemp("shared_run")


def cfg_for(data, out, **over):
    return load_config(None, {"data": str(data), "out": str(out), **TINY, **over})


# ------------------------------------------------------------------------------------------------ pure functions
def test_filter_keeps_exactly_what_the_policy_selects():
    logits = torch.tensor([[5.0, 0, 0], [0.1, 0, 0], [0, 4, 0], [0, 0.2, 0], [0, 0.3, 0], [0, 0, 0.1]]).numpy()
    # maxprob tau=0.8: rows 0 and 2 pass; class floor 1 per predicted class adds row 5 for class 2 (its only row)
    kept = select(logits, FilterConfig("maxprob", tau=0.8, min_per_class=1, frac_per_class=0.0))
    assert kept.tolist() == [0, 2, 5]
    # floor 2: class 1 has rows 2, 3, 4 -> keeps 2 and its next most confident, 4
    kept = select(logits, FilterConfig("maxprob", tau=0.8, min_per_class=2, frac_per_class=0.0))
    assert kept.tolist() == [0, 1, 2, 4, 5]
    assert select(logits, FilterConfig("none")).tolist() == list(range(6))
    kept = select(logits, FilterConfig("classwise_topq", q=0.5))
    assert kept.tolist() == [0, 2, 4, 5]  # ceil(q * n) most confident per predicted class
    with pytest.raises(ValueError, match="unknown filter policy"):
        FilterConfig("magic")


def test_kd_with_t1_and_hard_targets_is_cross_entropy():
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    hard = F.one_hot(y, 5).float() * 1e4  # a teacher with a one-hot output
    torch.testing.assert_close(kd_rows(z, hard, 1.0), F.cross_entropy(z, y, reduction="none"), atol=1e-4, rtol=1e-4)


def test_irm_weights_follow_the_clouds_on_constructed_teachers():
    k = 4
    confident = torch.tensor([[6.0, 0, 0, 0]])
    diffuse = torch.zeros(1, k)  # a fully clouded optical patch: optical teachers know nothing
    pi_c, rho_c, k_c, _ = irm_weights_reference(confident, confident, confident)
    pi_f, rho_f, k_f, _ = irm_weights_reference(diffuse, diffuse, confident)
    torch.testing.assert_close(pi_c.sum(1), torch.ones(1))
    torch.testing.assert_close(pi_f.sum(1), torch.ones(1))
    assert pi_f[0, 2] > pi_c[0, 2] and pi_f[0, 2] > 0.5  # pi^R rises when the optical input is fully clouded
    assert rho_f[0] < 1 and k_f[0, 1] < 1 and k_f[0, 0] == 1  # SAR superior: SAR damped, weaker optical k = 1
    sar_weak = torch.tensor([[0.0, 0.5, 0, 0]])
    _, rho_o, k_o, _ = irm_weights_reference(confident, confident, sar_weak)
    assert rho_o[0] > 1 and k_o[0, 0] < 1 and k_o[0, 1] == 1  # optical superior: weaker SAR k = 1


# -------------------------------------------------------------------------------------------------- stages
@pytest.mark.slow
def test_every_stage_runs_and_beats_chance(data, banks, tmp_path):
    cfg = cfg_for(data, tmp_path / "run", **{"source.epochs": 10, "aux.epochs": 6, "target.epochs": 6})
    src, tgt, test = banks
    ctx = Context(cfg, tmp_path / "run", src, tgt, progress=False)
    chance = 1.0 / len(src.classes)
    val = src.where("val")
    src_acc = (st.predict(ctx.source(), val.optical)["logits"].argmax(1) == val.labels).float().mean()
    assert src_acc > 2 * chance, src_acc  # step 0 on clear source scenes
    s1 = ctx.step1()
    assert 0 < len(s1["pl"]["kept"]) <= len(tgt)
    for model, x in ((s1["aux_o"], test.optical), (s1["aux_s"], test.sar)):
        acc = (st.predict(model, x)["logits"].argmax(1) == test.labels).float().mean()
        assert acc > chance, acc  # step 1: both auxiliaries learnt something without target labels
    out = METHODS["esccs"](ctx).fn(test)
    acc = (out["logits"].argmax(1) == test.labels).float().mean()
    assert acc > chance, acc  # step 2
    assert torch.allclose(out["w_o"] + out["w_s"], torch.ones(len(test)))
    # the IRM on the trained tiny models (seeded): fully clouded patches lean on SAR, clear ones less so
    full, clear = test.coverage >= 0.95, test.coverage < 0.05
    assert full.any() and clear.any()
    irm = st.irm_inputs(st.teacher_logits(ctx.source(), s1["aux_o"], s1["aux_s"], test), cfg.step2)
    torch.testing.assert_close(irm["pi"].sum(1), torch.ones(len(test)))
    assert irm["pi"][full, 2].mean() > irm["pi"][clear, 2].mean()  # pi^R rises under full cloud
    assert out["w_s"][full].mean() > out["w_s"][clear].mean()  # the target's SAR weight rises too
    weaker = torch.where(irm["rho"] > 1, 1, 0)  # rho > 1: optical superior, so SAR (column 1) is the weaker one
    assert torch.all(irm["k"].gather(1, weaker[:, None]) == 1)  # k = 1 for the weaker modality
    for name in ("source", "aux_optical", "aux_sar", "target"):
        assert (tmp_path / "run" / name / "model.safetensors").exists()
        assert (tmp_path / "run" / name / "log.csv").read_text().count("\n") == 1 + cfg.loop(
            "source" if name == "source" else "aux" if name.startswith("aux") else "target").epochs


def test_target_labels_never_reach_training(banks):
    _, tgt, test = banks
    assert (tgt.labels == -1).all() and (test.labels >= 0).all()
    assert (tgt.meta["eval_labels"] >= 0).all()


def test_resume_after_interruption_gives_the_same_weights(banks, tmp_path):
    src, _, _ = banks
    cfg = cfg_for("", tmp_path, **{"source.epochs": 3})
    mcfg = st.model_config(cfg, src, "optical")
    data = {"optical": src.optical[:64], "target": src.labels[:64]}

    def step(model, b):
        z = model(b["optical"])
        return F.cross_entropy(z, b["target"]), z, {}

    def fresh():
        torch.manual_seed(0)
        from esccs.models import create_model_from_config

        return create_model_from_config(mcfg)

    loop = cfg.loop("source")
    full = Trainer(fresh(), data, step, loop, tmp_path / "a", "a", False, st.valid_range(src)).fit()
    calls = {"n": 0}

    def dying(model, b):
        calls["n"] += 1
        if calls["n"] == 2 * (64 // loop.batch_size) + 1:  # first step of the third epoch
            raise KeyboardInterrupt
        return step(model, b)

    with pytest.raises(KeyboardInterrupt):
        Trainer(fresh(), data, dying, loop, tmp_path / "b", "b", False, st.valid_range(src)).fit()
    resumed = Trainer(fresh(), data, step, loop, tmp_path / "b", "b", False, st.valid_range(src)).fit()
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_resume_from_a_corrupted_state_is_a_clear_error(banks, tmp_path):
    src, _, _ = banks
    cfg = cfg_for("", tmp_path)
    from esccs.models import create_model_from_config

    model = create_model_from_config(st.model_config(cfg, src, "optical"))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "last.safetensors").write_bytes(b"garbage" * 10)
    (tmp_path / "s" / "last.json").write_text('{"epoch": 0}')
    data = {"optical": src.optical[:8], "target": src.labels[:8]}
    with pytest.raises(DataError, match=r"last\.safetensors: cannot resume: corrupted training state"):
        Trainer(model, data, lambda m, b: (m(b["optical"]).sum(), None, {}), cfg.loop("source"), tmp_path / "s",
                "s", False).fit()


def test_a_checkpoint_of_the_wrong_architecture_for_a_stage(data, banks, tmp_path):
    src, tgt, _ = banks
    cfg = cfg_for(data, tmp_path)
    st.train_source(cfg, src, tmp_path, progress=False)
    shutil.copytree(tmp_path / "source", tmp_path / "target")  # a classifier where the dual target should be
    with pytest.raises((DataError, ConfigError), match="dual_resnet10"):
        st.train_target(cfg, tgt, {"u": torch.zeros(len(tgt), 10), "a_o": torch.zeros(len(tgt), 10),
                                   "a_s": torch.zeros(len(tgt), 10)}, tmp_path, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("spl", "ttl", "cycit", "gdl")])
def test_every_recipe_runs_one_epoch(data, banks, shared_run, method):
    res = train(cfg_for(data, shared_run), [method], [], progress=False, banks=banks)
    r = res[method]
    assert 0.0 <= r["overall"]["oa"] <= 1.0 and set(r["strata"]) <= {"clear", "partial", "complete"}
    assert (shared_run / "results" / f"{method}.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ABLATION_NAMES)
def test_every_ablation_runs_one_epoch(data, banks, shared_run, name):
    src, tgt, test = banks
    ctx = Context(cfg_for(data, shared_run), shared_run, src, tgt, progress=False)
    out = ablation(ctx, name).fn(test)
    assert out["logits"].shape == (len(test), len(src.classes))


def test_step2_loss_on_the_fused_path_matches_the_reference(banks):
    from esccs.models import create_model_from_config
    from esccs.ops import set_fused

    src, tgt, _ = banks
    cfg = cfg_for("", "/nonexistent", **{"step2.vote": "teacher"})  # method.md's weights: the fused irm_kd path
    g = torch.Generator().manual_seed(0)
    b = {"optical": tgt.optical[:5], "sar": tgt.sar[:5], **{k: torch.randn(5, 10, generator=g)
                                                           for k in ("u", "a_o", "a_s")},
         "k": torch.rand(5, 2, generator=g)}
    grads = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = create_model_from_config(st.model_config(cfg, tgt, "dual"))
        with set_fused(fused):
            loss, _, _ = st.target_step(cfg.step2)(model, b)
            loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, r in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------- config, CLI
def test_config_with_unknown_keys(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("target:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml\.target: unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown key 'lerning_rate'"):
        load_config(None, {"lerning_rate": 1})
    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--config", str(bad)])
    assert r.exit_code == 1 and "unknown key 'epoch'" in r.output and "Traceback" not in r.output


def test_source_without_labels_is_a_clear_error(data, tmp_path):
    copy = tmp_path / "nolabels"
    shutil.copytree(data, copy)
    (copy / "source" / "labels.csv").unlink()
    card = (copy / "source" / "dataset.json").read_text().replace('"labels": "labels.csv",', "")
    (copy / "source" / "dataset.json").write_text(card)
    (copy / "source" / "IGBP_probability_labels.pkl").unlink()
    r = CliRunner().invoke(cli, ["train", "--data", str(copy), "--out", str(tmp_path / "r"), "--quiet"])
    assert r.exit_code == 1 and "source" in r.output and "labels" in r.output, r.output


@pytest.mark.slow
def test_cli_train_then_eval(data, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(run), "--method", "esccs,sar-only",
                                 "--epochs", "1", "--arch", "resnet10", "--width", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "esccs" in r.output and (run / "config.yaml").exists() and (run / "step1.json").exists()
    r = CliRunner().invoke(cli, ["eval", str(run / "target" / "model.safetensors"), "--data", str(data),
                                 "--out", str(tmp_path / "e.json"), "--plots", str(tmp_path)])
    assert r.exit_code == 0, r.output
    import json

    e = json.loads((tmp_path / "e.json").read_text())
    assert {"overall", "strata", "diagnostics"} <= set(e) and "pi" in e["diagnostics"]
    assert np.array(e["overall"]["confusion"]).sum() == e["overall"]["n"]
    assert (tmp_path / "target_confusion.png").exists()
    r = CliRunner().invoke(cli, ["eval", str(run), "--table", str(tmp_path / "acc.md")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "acc.md").read_text()
    assert "| **esccs** |" in text and "| sar-only |" in text and (tmp_path / "acc_by_cover.png").exists()
