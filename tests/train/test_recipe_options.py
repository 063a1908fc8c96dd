"""Our options beyond the paper each change what they say; the paper preset is today's recipe exactly."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from esccs.ops.irm_kd.reference import irm_kd_reference
from esccs.ops.unimodal_kd.reference import kd_rows, unimodal_kd_reference
from esccs.train import stages as st
from esccs.train.config import Step1Config, Step2Config, load_config
from esccs.train.methods import ABLATIONS, PAPER_STEP1, PAPER_STEP2, agreement_labels

K = 4


def _pl(n=6):
    u = torch.randn(n, K, generator=torch.Generator().manual_seed(0))
    return u


def test_cloud_aware_step1_keeps_clouded_patches_out_of_hard_labels():
    from esccs.data.transforms import Normalizer
    from esccs.train.bank import Bank

    n = 8
    cov = torch.tensor([0.0, 0.1, 0.5, 0.75, 0.95, 1.0, 1.0, 0.0])
    bank = Bank([f"p{i}" for i in range(n)], torch.randn(n, 3, 4, 4), torch.randn(n, 2, 4, 4), torch.full((n,), -1),
                cov, torch.zeros(n).numpy().astype(str), tuple("abcd"), Normalizer.for_bands(("B02", "B03", "B04")),
                Normalizer.for_bands(("VV", "VH")))
    u = torch.randn(n, K, generator=torch.Generator().manual_seed(1))
    s1 = Step1Config(policy="none", cloud_max=0.9, clouded="soft")
    pl = st.pseudo_label(None, bank, s1, logits=u)
    assert pl["kept"].tolist() == [0, 1, 2, 3, 7] and pl["clouded"].tolist() == [4, 5, 6]
    opt = st.aux_data(bank, pl, "optical", s1)
    sar = st.aux_data(bank, pl, "sar", s1)
    assert len(sar["target"]) == 5 and (sar["target"] >= 0).all()  # SAR: no label from a clouded optical image
    assert len(opt["target"]) == 8 and opt["target"][-3:].tolist() == [-1, -1, -1]  # f_O: soft rows
    assert torch.equal(opt["teacher"][-3:], torch.zeros(3, K))  # ... whose KD target is uniform
    hard = st.aux_data(bank, pl, "optical", dataclasses.replace(s1, clouded="hard"))
    assert len(hard["target"]) == 5
    paper = st.pseudo_label(None, bank, Step1Config(policy="none", cloud_max=1.0, clouded="hard"), logits=u)
    assert paper["kept"].tolist() == list(range(n)) and len(paper["clouded"]) == 0


def test_soft_rows_get_only_the_uniform_kd_term():
    z = torch.randn(4, K, requires_grad=True)
    b = {"x": None, "target": torch.tensor([1, 2, -1, -1]), "teacher": torch.cat([torch.randn(2, K),
                                                                                   torch.zeros(2, K)])}
    step = st.aux_step("x", 4.0, 1.0)
    loss, _, _ = step(lambda x: z, b)
    ref = F.cross_entropy(z[:2], b["target"][:2], reduction="sum") / 4 + kd_rows(z, b["teacher"], 4.0).mean()
    torch.testing.assert_close(loss, ref)
    # every row labelled: exactly the paper's CE + lambda KD (mean over the batch)
    b2 = {"x": None, "target": torch.tensor([1, 2, 0, 3]), "teacher": b["teacher"]}
    loss2, _, _ = step(lambda x: z, b2)
    torch.testing.assert_close(loss2, F.cross_entropy(z, b2["target"]) + kd_rows(z, b2["teacher"], 4.0).mean())


def test_modality_vote_gives_one_vote_per_modality_and_follows_the_clouds():
    big = 6.0
    # f_S and f_O say class 0, f_R says class 1
    t = {"u": torch.tensor([[big, 0, 0, 0]] * 3), "a_o": torch.tensor([[big, 0, 0, 0]] * 3),
         "a_s": torch.tensor([[0, big, 0, 0]] * 3)}
    cov = torch.tensor([0.0, 0.6, 1.0])
    s2 = Step2Config(vote="modality")
    pi, rho, k, ybar = st.modality_weights(t, cov, s2)
    paper_ybar = irm_kd_reference(torch.zeros(3, K), t["u"], t["a_o"], t["a_s"], reduction="none")  # noqa: F841
    # teacher vote: two optical votes against one -> class 0 everywhere; modality vote: clear -> 0 (a tie broken
    # by the visible optical), 60 % cloud -> SAR (its vote outweighs 0.4 of optical), full cloud -> SAR
    assert ybar.tolist() == [0, 1, 1]
    assert pi[2].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)  # full cloud: the SAR teacher only
    assert pi[0, 0] == pytest.approx(pi[0, 1]) and pi.sum(1).tolist() == pytest.approx([1, 1, 1])
    assert k[2, 1] == pytest.approx(1.0)  # SAR is never damped where the optical image is not visible
    assert (pi[:, 2][1:] > pi[:, 2][0]).all()
    irm = st.irm_inputs(t, dataclasses.replace(s2, vote="teacher"), cov)
    assert irm["ybar"].tolist() == [0, 0, 0]  # method.md's consensus is outvoted by the two optical teachers


def test_relabelling_round_uses_cross_modal_agreement():
    z_t = torch.tensor([[5.0, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]])
    a_o = torch.tensor([[5.0, 0, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0], [0, 0, 0, 5]])
    a_s = torch.tensor([[0.0, 5, 0, 0], [0, 5, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0]])
    cov = torch.tensor([0.0, 0.0, 0.0, 1.0])
    lab = agreement_labels(z_t, a_o, a_s, cov, Step1Config(cloud_max=0.9))
    assert lab["pseudo"].tolist() == [0, 1, 2, 3]  # the target's labels, not step 1's
    assert lab["kept_sar"].tolist() == [0, 1]  # row 2: nobody agrees; row 3: only f_O, which sees cloud there
    assert lab["kept"].tolist() == [0, 1] and lab["clouded"].tolist() == [3]


def test_paper_preset_is_todays_recipe_on_a_fixed_batch():
    from esccs.models import create_model_from_config

    cfg = load_config(None, {"model.arch": "resnet10", "model.width": 8})
    paper = dataclasses.replace(cfg, step1=dataclasses.replace(cfg.step1, **PAPER_STEP1),
                                step2=dataclasses.replace(cfg.step2, **PAPER_STEP2))
    assert paper.step2.vote == "teacher" and paper.step2.rounds == 0 and paper.step1.cloud_max == 1.0

    class _B:
        classes = tuple("abcdefghij")
        opt_norm = sar_norm = None

    from esccs.data.transforms import Normalizer

    bank = type("B", (), {"classes": tuple("abcdefghij"), "opt_norm": Normalizer.for_bands(cfg.bands),
                          "sar_norm": Normalizer.for_bands(("VV", "VH")),
                          "optical": torch.zeros(1, 10, 16, 16)})()
    g = torch.Generator().manual_seed(0)
    b = {"optical": torch.randn(5, 10, 16, 16, generator=g), "sar": torch.randn(5, 2, 16, 16, generator=g),
         **{k: torch.randn(5, 10, generator=g) for k in ("u", "a_o", "a_s")}}
    irm = st.irm_inputs(b, paper.step2)
    b.update(k=irm["k"], target=irm["ybar"], pi=irm["pi"])
    torch.manual_seed(0)
    model = create_model_from_config(st.model_config(paper, bank, "dual"))
    loss, _, _ = st.target_step(paper.step2)(model, b)
    # today's recipe written out: irm_kd reference (three equal votes) + lambda_u * unimodal KD
    out = model(b["optical"], b["sar"], k=b["k"])
    s2 = paper.step2
    ref = irm_kd_reference(out["logits"], b["u"], b["a_o"], b["a_s"], temperature=s2.temperature, gamma=s2.gamma,
                           beta=s2.beta, alpha=s2.alpha, k_min=s2.k_min).loss + \
        s2.lambda_u * unimodal_kd_reference(out["logits_o"], out["logits_s"], b["a_o"], b["a_s"],
                                            temperature=s2.temperature)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    # the default recipe's loss on the same batch is different (one vote per modality)
    assert cfg.step2.vote == "modality"
    irm2 = st.irm_inputs(b, cfg.step2, torch.ones(5))
    assert not torch.equal(irm2["pi"], irm["pi"])


def test_every_ablation_of_our_options_turns_one_option_off():
    cfg = load_config(None, {})
    for name, field, paper_value in (("no-rounds", "rounds", 0), ("teacher-vote", "vote", "teacher")):
        assert ABLATIONS[name][field] == paper_value and getattr(cfg.step2, field) != paper_value
    assert ABLATIONS["no-cloud-step1"]["step1"] == {"cloud_max": 1.0, "clouded": "hard"} and cfg.step1.cloud_max < 1
    assert ABLATIONS["hard-clouded"]["step1"] == {"clouded": "hard"} and cfg.step1.clouded == "soft"
    assert ABLATIONS["no-source-clouds"]["step1"] == {"source_clouds": False} and cfg.step1.source_clouds
    assert ABLATIONS["relabel-both"] == {"relabel": "both"} and cfg.step2.relabel == "sar"
    assert PAPER_STEP1 == {"cloud_max": 1.0, "clouded": "hard", "source_clouds": False, "sar_teacher": "source",
                           "radiometric": "none"}
    assert ABLATIONS["no-radiometric"] == {"step1": {"radiometric": "none"}} and cfg.step1.radiometric == "auto"
    assert PAPER_STEP2 == {"vote": "teacher", "rounds": 0, "calibrate": False}
    assert ABLATIONS["no-calibration"] == {"calibrate": False} and cfg.step2.calibrate
