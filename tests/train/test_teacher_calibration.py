"""[ours] Teachers temperature-scaled on the held-out part of target-train before step 2 (``step2.calibrate``)."""

import torch

from esccs.train import stages as st
from esccs.train.config import load_config

K = 5


def _overconfident(n, factor, seed):
    """Logits whose labels are drawn from softmax(z), reported as ``factor * z`` (over-confident by ``factor``)."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, K, generator=g)
    y = torch.multinomial(z.softmax(1), 1, generator=g)[:, 0]
    return factor * z, y


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    for factor in (0.5, 1.0, 3.0):
        logits, y = _overconfident(20000, factor, int(10 * factor))
        t = st.fit_temperature(logits, y)
        assert abs(t / factor - 1) < 0.08, (factor, t)


def test_only_visible_held_out_patches_and_f_s_labels_are_used():
    logits_o, y = _overconfident(400, 3.0, 1)
    logits_s = logits_o / 6  # the same scores, under-confident by 2
    u = torch.nn.functional.one_hot(y, K).float() * 10  # f_S's argmax: the labels
    cover = torch.cat([torch.zeros(200), torch.ones(200)])
    held = {"u": u, "a_o": logits_o, "a_s": logits_s}
    temps = st.calibrate_teachers(held, cover)
    # clouded rows do not count: scrambling them (logits and f_S's labels) changes nothing
    scrambled = {k: torch.cat([v[:200], v[200:].flip(0).roll(1, 1)]) for k, v in held.items()}
    assert st.calibrate_teachers(scrambled, cover) == temps
    assert temps["a_o"] > 2.0 and temps["a_s"] < 1.0  # over-confident f_O is softened; f_R is sharpened
    assert set(temps) == {"a_o", "a_s"}  # f_S is never rescaled
    assert st.calibrate_teachers(held, torch.ones(400)) == {"a_o": 1.0, "a_s": 1.0}  # nothing visible: unchanged


def test_the_pooled_teacher_uses_the_calibrated_logits():
    cfg = load_config(None, {})
    assert cfg.step2.calibrate and cfg.step2.fusion == "product" and cfg.step2.vote == "modality"
    g = torch.Generator().manual_seed(0)
    teachers = {k: torch.randn(6, K, generator=g) for k in ("u", "a_o", "a_s")}
    cover = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 0.0])
    temps = {"a_o": 0.5, "a_s": 2.0}
    t = st.tempered(teachers, temps)
    assert torch.equal(t["u"], teachers["u"])
    class _Bank:  # what target_data reads of a bank
        optical, sar, coverage = torch.zeros(6, 1, 2, 2), torch.zeros(6, 2, 2, 2), cover

        def __len__(self):
            return 6

    bank = _Bank()
    data, _ = st.target_data(cfg, bank, t)
    v = (1 - cover).unsqueeze(1)
    want = v * (teachers["a_o"] / 0.5).log_softmax(1) + (teachers["a_s"] / 2.0).log_softmax(1)
    torch.testing.assert_close(data["pooled"], want)
    assert torch.equal(data["target"], want.argmax(1))
    raw, _ = st.target_data(cfg, bank, teachers)
    assert not torch.allclose(raw["pooled"], data["pooled"])


def test_esccs_calibrates_the_teachers_of_every_round(monkeypatch, tmp_path):
    """The recipe hands step 2 the teachers divided by temperatures fitted on the held-out part, round by round."""
    import numpy as np

    from esccs.data.transforms import Normalizer
    from esccs.train import methods
    from esccs.train.bank import Bank

    def bank(n, seed):
        g = torch.Generator().manual_seed(seed)
        cov = torch.tensor([0.0, 0.25, 0.5, 1.0] * (n // 4))
        return Bank([f"p{i}" for i in range(n)], torch.randn(n, 3, 4, 4, generator=g), torch.randn(n, 2, 4, 4),
                    torch.full((n,), -1), cov, np.array(["train"] * n), tuple("abcde"),
                    Normalizer.for_bands(("B02", "B03", "B04")), Normalizer.for_bands(("VV", "VH")))

    def logits(n, seed, factor):
        z, y = _overconfident(n, factor, seed)
        return {"u": torch.nn.functional.one_hot(y, K).float() * 5, "a_o": z, "a_s": z / factor * 0.5}

    raw = {"tgt": logits(40, 1, 3.0), "tval": logits(40, 2, 3.0)}
    after = {"tgt": logits(40, 3, 0.3), "tval": logits(40, 4, 0.3)}  # the relabelled round's teachers
    seen = []
    monkeypatch.setattr(methods.Context, "step1", lambda self, s1=None, suffix="": {"aux_o": None, "aux_s": None})
    monkeypatch.setattr(methods.Context, "teachers", lambda self, suffix="", b="tgt", step1=None: raw[b])
    recipes = []

    def relabel(ctx, cfg, m, o, s, prefix, recipe):
        recipes.append((prefix, recipe))
        return o, s, after["tgt"], after["tval"]

    def train_target(cfg, tgt, teachers, run, progress, name, **k):
        recipes.append((name, k["recipe"]))
        seen.append((teachers, k["val"][1]))

    monkeypatch.setattr(methods, "relabel_round", relabel)
    monkeypatch.setattr(st, "train_target", train_target)
    for calibrate in (True, False):
        seen.clear()
        recipes.clear()
        cfg = load_config(None, {"step1.radiometric": "none", "step2.rounds": 2, "step2.calibrate": calibrate})
        ctx = methods.Context(cfg, tmp_path, bank(8, 0), bank(40, 1), False, tval=bank(40, 2))
        pred = methods.esccs(ctx)
        assert len(seen) == 3
        # each stage of the chain is reused under its own round's settings; only the last records the round count
        assert [(name, r["step2.round"], r.get("step2.rounds")) for name, r in recipes] == [
            ("target_round0", 0, None), ("target_r1", 1, None), ("target_round1", 1, None), ("target_r2", 2, 2),
            ("target", 2, 2)]
        assert all(r["step2.calibrate"] == calibrate for _, r in recipes)
        for (teachers, vteachers), source in zip(seen, (raw, after, after)):
            temps = st.calibrate_teachers(source["tval"], ctx.tval.coverage) if calibrate else {"a_o": 1, "a_s": 1}
            for k in ("a_o", "a_s"):
                torch.testing.assert_close(teachers[k], source["tgt"][k] / temps[k])
                torch.testing.assert_close(vteachers[k], source["tval"][k] / temps[k])
            assert torch.equal(teachers["u"], source["tgt"]["u"])
        assert len(pred.info["temperatures"]) == (3 if calibrate else 0)
        if calibrate:
            assert pred.info["temperatures"][0] != pred.info["temperatures"][1]  # refitted after the round
