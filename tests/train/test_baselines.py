"""Baselines SPL, TTL, CycIT and GDL: end to end on tiny data, resume, no target labels, and their building blocks."""

import dataclasses
from pathlib import Path

import pytest
import torch

from esccs.data.synth import SynthConfig, synthesize
from esccs.train.bank import Bank
from esccs.train.baselines import cycit, gdl, spl, ttl
from esccs.train.baselines.unet import UNet, ssim
from esccs.train.config import load_config
from esccs.train.loop import Trainer
from esccs.train.methods import METHODS, Context
from esccs.train.run import load_banks

TINY = {"model.arch": "resnet10", "model.width": 8, "source.epochs": 1, "aux.epochs": 1, "target.epochs": 1,
        "step1.min_per_class": 2, "source.batch_size": 32, "aux.batch_size": 32, "target.batch_size": 32}
RECIPES = ("spl", "ttl", "cycit", "gdl")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    synthesize(SynthConfig(out=root / "d", samples=200, size=32, patches_per_scene=10, workers=1), progress=False)
    cfg = load_config(None, {"data": str(root / "d"), "out": str(root / "run"), **TINY})
    return cfg, load_banks(cfg, progress=False)


@pytest.fixture(scope="module")
def bigger(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines_bigger")
    synthesize(SynthConfig(out=root / "d", samples=600, size=24, patches_per_scene=12, workers=1, seed=5),
               progress=False)
    cfg = load_config(None, {"data": str(root / "d"), "out": str(root / "run"), **TINY, "source.epochs": 8,
                             "aux.epochs": 8, "target.epochs": 8})
    return cfg, load_banks(cfg, progress=False)


class SpyBank(Bank):
    """A bank that records reads of what training must not see: labels, clear optical, held-back labels."""

    def __getattribute__(self, name):
        if name in ("labels", "clear", "meta"):
            object.__getattribute__(self, "touched").append(name)
        return object.__getattribute__(self, name)


def spy(bank: Bank) -> SpyBank:
    out = SpyBank(**{f.name: getattr(bank, f.name) for f in dataclasses.fields(bank)})
    object.__setattr__(out, "touched", [])
    return out


def context(setup, **over) -> Context:
    cfg, (src, tgt, _) = setup
    cfg = dataclasses.replace(cfg, **over)
    return Context(cfg, Path(cfg.out), src, spy(tgt), progress=False)


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_predicts_and_then_loads(setup, name, monkeypatch):
    cfg, (_, _, test) = setup
    ctx = context(setup)
    pred = METHODS[name](ctx)
    out = pred.fn(test)
    assert out["logits"].shape == (len(test), len(test.classes))
    assert torch.isfinite(out["logits"]).all()
    assert ctx.tgt.touched == []  # never read target labels, clear optical or held-back labels
    assert pred.checkpoint is not None and pred.checkpoint.exists()
    assert str(pred.checkpoint).startswith(str(ctx.run / name))
    mtime = pred.checkpoint.stat().st_mtime_ns

    def no_training(self):
        raise AssertionError(f"{self.name}: trained again instead of loading")

    monkeypatch.setattr(Trainer, "fit", no_training)
    again = METHODS[name](context(setup))
    torch.testing.assert_close(again.fn(test)["logits"], out["logits"])
    assert pred.checkpoint.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_deterministic_for_the_seed(setup, name, tmp_path):
    _, (_, _, test) = setup
    source = context(setup).source()  # the shared f_S; each run below trains the baseline's own stages afresh
    logits = []
    for run in ("a", "b"):
        ctx = context(setup, out=str(tmp_path / run))
        ctx.cache["source"] = source
        logits.append(METHODS[name](ctx).fn(test)["logits"])
    torch.testing.assert_close(logits[0], logits[1])


def test_cycit_never_reads_target_labels(setup, tmp_path, monkeypatch):
    _, (_, _, test) = setup
    ctx = context(setup, out=str(tmp_path))
    ctx.cache["source"] = context(setup).source()  # reuse f_S
    ctx.tgt.labels, ctx.tgt.clear, ctx.tgt.meta = None, None, {}  # any use fails, on top of the spy
    fits = []

    sizes = []

    def fit(self):  # the whole data flow of both stages, without the training time
        fits.append((self.name, sorted(self.data)))
        sizes.append(len(next(iter(self.data.values()))))
        return self.model.eval()

    monkeypatch.setattr(Trainer, "fit", fit)
    pred = cycit.cycit(ctx)
    assert ctx.tgt.touched == []
    assert fits == [("cycit/translator", ["optical", "sar"]),
                    ("cycit/classifier", ["mu", "pool", "sar_t", "target"])]
    # the translator learns only from pairs whose optical image is visible (the cover is the cloud mask's)
    visible = int((ctx.tgt.coverage <= cycit.PAIR_MAX_COVER).sum())
    assert 0 < visible < len(ctx.tgt) and sizes[0] == visible
    assert (tmp_path / "cycit" / "translator" / "net.safetensors").exists()
    assert pred.fn(test)["logits"].shape == (len(test), len(test.classes))


# ------------------------------------------------------------------------------------------------ building blocks
def test_ssim_is_one_on_itself_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g).cumsum(-1) / 4  # some structure
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    scores = [float(ssim(x + s * torch.randn(x.shape, generator=g), x)) for s in (0.05, 0.3, 1.0)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_spl_pace_takes_the_easiest_fraction():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    assert spl.pace(0, 5, 0.5) == 0.5 and spl.pace(4, 5, 0.5) == 1.0 and spl.pace(2, 5, 0.5) == 0.75
    assert spl.pace(0, 1) == 1.0
    assert sorted(spl.curriculum(scores, 0.3).tolist()) == [1, 5, 9]
    assert sorted(spl.curriculum(scores, spl.pace(0, 5, 0.5)).tolist()) == [1, 3, 5, 7, 9]
    assert len(spl.curriculum(scores, 1.0)) == 10
    flat = torch.zeros(1, 2, 8, 8)
    rough = torch.zeros(1, 2, 8, 8)
    rough[..., ::2, :] = 1.0
    tex = spl.texture_complexity(torch.cat([rough, flat]))
    assert tex[0] > tex[1] and float(tex[1]) == pytest.approx(0.0, abs=1e-5)


def test_spl_clouds_and_ttl_domains_are_deterministic(setup):
    _, (src, tgt, _) = setup
    small = src.subset(range(4))
    a, b = spl.synthetic_clouds(small, 0), spl.synthetic_clouds(small, 0)
    torch.testing.assert_close(a, b)
    assert a.shape == small.optical.shape and not torch.equal(a, small.optical)
    i1, i2 = ttl.intermediate_domains(tgt, 0)
    j1, j2 = ttl.intermediate_domains(tgt, 0)
    torch.testing.assert_close(i2, j2)
    assert i1.shape == i2.shape == (len(tgt), 1, *tgt.optical.shape[-2:])
    assert float(i1.mean()) == pytest.approx(0.0, abs=1e-4) and float(i2.std()) == pytest.approx(1.0, abs=1e-3)


def test_gradient_reversal_negates_and_scales_the_gradient():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64)
    y = cycit.grad_reverse(x, 0.5)
    torch.testing.assert_close(y, x)  # identity forward
    (y * w).sum().backward()
    # numeric gradient of the forward f(x) = sum(w * x), by central differences, then reversed and scaled
    eps, numeric = 1e-6, torch.zeros_like(w)
    with torch.no_grad():
        for i in range(3):
            for j in range(4):
                d = torch.zeros_like(x)
                d[i, j] = eps
                numeric[i, j] = ((w * (x + d)).sum() - (w * (x - d)).sum()) / (2 * eps)
    torch.testing.assert_close(x.grad, -0.5 * numeric)


def test_gdl_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zero = torch.zeros(4, 6)
    assert torch.equal(gdl.gaussian_kl(zero, zero), torch.zeros(4))
    assert (gdl.gaussian_kl(torch.ones(4, 6), zero) > 0).all()
    assert (gdl.gaussian_kl(zero, torch.full((4, 6), -1.0)) > 0).all()


def test_unet_keeps_the_size_and_starts_as_identity_when_residual():
    x = torch.randn(2, 5, 20, 20)
    assert UNet(5, 2, 4)(x).shape == (2, 2, 20, 20)
    torch.testing.assert_close(UNet(5, 5, 4, residual=True).eval()(x), x)
    with pytest.raises(ValueError):
        UNet(5, 2, residual=True)


def test_spl_paced_trainer_uses_growing_subsets(tmp_path):
    seen = []

    def step(model, b):
        seen.append(b["x"].clone())
        return model(b["x"]).pow(2).mean(), None, {}

    cfg = dataclasses.replace(load_config(None, {}).aux, epochs=3, batch_size=100, augment=False)
    x = torch.arange(10.0).view(10, 1, 1, 1)
    net = torch.nn.Conv2d(1, 1, 1)
    spl.PacedTrainer(net, {"x": x}, step, cfg, tmp_path, "t", False, scores=torch.arange(10.0), p0=0.4).fit()
    assert [sorted(s.flatten().tolist()) for s in seen] == [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6], list(range(10))]


# ------------------------------------------------------------------------------------------- TTL and CycIT, fixed
def test_ttl_carry_spreads_the_first_convolution_and_copies_the_rest():
    from esccs.models import create_model

    torch.manual_seed(0)
    prev = create_model("resnet10", width=8, in_chans=1, n_classes=10, patch_size=32)
    nxt = create_model("resnet10", width=8, in_chans=2, n_classes=10, patch_size=32)
    ttl.carry(prev)(nxt)
    a, b = prev.state_dict(), nxt.state_dict()
    first = next(k for k, v in a.items() if v.dim() == 4)
    torch.testing.assert_close(b[first], a[first].repeat(1, 2, 1, 1) / 2)  # same response to equal channels
    for k in a:
        if k != first:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_ttl_intermediate_hops_learn_the_labelled_source_images(setup, tmp_path, monkeypatch):
    _, (src, _, test) = setup
    ctx = context(setup, out=str(tmp_path))
    ctx.cache["source"] = context(setup).source()
    fits = []

    def fit(self):
        fits.append((self.name, len(self.data["target"]), self.data["target"].clone()))
        return self.model.eval()

    monkeypatch.setattr(Trainer, "fit", fit)
    ttl.ttl(ctx)
    assert [f[0] for f in fits] == ["ttl/i1", "ttl/i2", "ttl/sar"]
    train = src.where("train")
    for _, n, y in fits[:2]:
        assert n == len(train) and torch.equal(y, train.labels)  # source images in the hop's domain, their labels
    assert ctx.tgt.touched == []  # the SAR hop uses step 1's pseudo-labels, never target labels


def test_cycit_translated_sar_has_the_statistics_of_real_sar(setup, tmp_path):
    _, (_, tgt, _) = setup
    cfg = dataclasses.replace(setup[0], out=str(tmp_path), aux=dataclasses.replace(setup[0].aux, epochs=8))
    ctx = Context(cfg, tmp_path, setup[1][0], tgt, progress=False)
    net = cycit.train_translator(ctx)
    test = setup[1][2]  # images the translator and its residual bank never saw
    from esccs.train.baselines.unet import apply_net

    mu = apply_net(net, test.optical)
    resid = cycit.residual_bank(net, cycit.translator_pairs(tgt))
    pools = torch.randint(len(resid), (len(test), cycit.POOL), generator=torch.Generator().manual_seed(0))
    fake = cycit.translate(mu, resid, pools, cycit.draw_choices(len(mu), cycit.POOL, True,
                                                                torch.Generator().manual_seed(0)))
    within = lambda x: float(x.flatten(2).std(2).mean())  # noqa: E731 - within-image std, averaged
    real = within(test.sar)
    assert 0.7 < within(fake) / real < 1.4, (within(fake), real)  # speckle-like spread, as real SAR
    assert within(mu) / real < 0.7  # the mean image alone (an L1 translator's output) is far too smooth
    # heavy bright tail: the top percentile of a draw sits as far above its median as real SAR's does
    q = lambda x: float((x.quantile(0.99) - x.median()) / x.std())  # noqa: E731
    assert abs(q(fake[:, 0]) - q(test.sar[:, 0])) < 0.6
    # the spread of image means (scene level offsets) is real SAR's too, where the mean images have less of it
    spread = lambda x: float(x.mean((2, 3)).std(0).mean())  # noqa: E731
    assert 0.7 < spread(fake) / spread(test.sar) < 1.4 and spread(mu) < spread(fake)


def test_cycit_translation_adds_a_rotated_residual_of_the_rows_pool():
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(5, 2, 6, 6, generator=g)
    mu = torch.randn(40, 2, 6, 6, generator=g)
    pools = torch.randint(5, (40, 3), generator=g)
    bank = resid.clone()
    draw = cycit.draw_choices(40, 3, True, torch.Generator().manual_seed(1))
    out = cycit.translate(mu, resid, pools, draw)
    assert torch.equal(resid, bank)  # the bank is never changed in place
    seen = set()
    for i in range(40):
        r = out[i] - mu[i]
        views = {(int(j), k, f) for j in pools[i].tolist() for k in range(4) for f in (0, 1)
                 if torch.allclose(r, torch.rot90(resid[j], k, (-2, -1)).flip(-1) if f else
                                   torch.rot90(resid[j], k, (-2, -1)), atol=1e-6)}
        assert views, i  # mu + one of the row's residuals, turned and/or flipped
        seen |= {(k, f) for _, k, f in views}
    assert len(seen) == 8  # every turn and flip occurs
    for i in range(40):  # exactly the drawn column, turn and flip
        j, k, f = draw[i].tolist()
        want = torch.rot90(resid[pools[i, j]], k, (-2, -1))
        torch.testing.assert_close(out[i], mu[i] + (want.flip(-1) if f else want))
    assert torch.equal(draw, cycit.draw_choices(40, 3, True, torch.Generator().manual_seed(1)))  # seeded
    flat = cycit.draw_choices(400, 3, False, torch.Generator().manual_seed(0))
    assert set(flat[:, 1].tolist()) == {0, 2} and set(flat[:, 0].tolist()) == {0, 1, 2}  # non-square: half turns
    wide = cycit.translate(torch.zeros(400, 2, 4, 6), torch.randn(5, 2, 4, 6), torch.randint(5, (400, 3)), flat)
    assert wide.shape == (400, 2, 4, 6)


def test_cycit_epoch_draws_are_seeded_per_epoch_for_every_row(setup, tmp_path, monkeypatch):
    from esccs.models import create_model

    clf = create_model("resnet10", width=8, in_chans=2, n_classes=10, patch_size=32)
    data = {"mu": torch.zeros(10, 2, 8, 8), "pool": torch.zeros(10, 4, dtype=torch.long),
            "target": torch.zeros(10, dtype=torch.long), "sar_t": torch.zeros(10, 2, 8, 8)}
    loop = dataclasses.replace(setup[0].loop("target"), epochs=2)
    tr = cycit.RampTrainer(cycit.DannNet(clf, 10), data, lambda m, b: None, loop, tmp_path, "t", False)
    seen = []
    monkeypatch.setattr(Trainer, "_epoch", lambda self, e: seen.append(self.data["draw"].clone()) or {})
    for e in (0, 1, 0):
        tr._epoch(e)
    assert seen[0].shape == (10, 3) and torch.equal(seen[0], seen[2])  # the same epoch draws the same
    assert not torch.equal(seen[0], seen[1])  # a new epoch draws anew


def test_cycit_residual_pools_draw_from_the_pairs_of_the_images_class():
    pair_cls = torch.tensor([0, 0, 1, -1, 2, 1, -1])
    labels = torch.tensor([0, 1, 2, 3, 0, 1])  # class 3 has no pair
    pools = cycit.residual_pools(labels, pair_cls, k=50, gen=torch.Generator().manual_seed(0))
    assert pools.shape == (6, 50)
    for row, y in zip(pools, labels.tolist()):
        got = set(row.tolist())
        want = set(torch.nonzero(pair_cls == y).flatten().tolist()) or {0, 1, 2, 4, 5}  # else any labelled pair
        assert got == want, (y, got)
    none = cycit.residual_pools(labels, torch.full((4,), -1), k=20, gen=torch.Generator().manual_seed(0))
    assert set(none.flatten().tolist()) == {0, 1, 2, 3}  # no pair has a class: all pairs


def test_cycit_pair_classes_are_step1_filtered_pseudo_labels(setup):
    ctx = context(setup, step1=dataclasses.replace(setup[0].step1, policy="classwise_topq"))  # keeps half
    cls = cycit.pair_classes(ctx)
    pl = ctx.pseudo(ctx.cfg.step1, "tgt")
    visible = torch.nonzero(ctx.tgt.coverage <= cycit.PAIR_MAX_COVER).flatten()
    kept = set(pl["kept"].tolist())
    want = torch.tensor([int(pl["pseudo"][i]) if int(i) in kept else -1 for i in visible])
    assert torch.equal(cls, want) and (cls >= 0).any() and (cls < 0).any()
    assert ctx.tgt.touched == []


def test_cycit_refuses_a_classifier_saved_by_an_older_translation(setup, tmp_path):
    from esccs.errors import DataError
    from esccs.models import create_model_from_config, save_checkpoint
    from esccs.train import stages as st

    ctx = context(setup, out=str(tmp_path))
    ctx.run = tmp_path
    mcfg = st.model_config(ctx.cfg, ctx.tgt, "sar")
    save_checkpoint(ctx.checkpoint("cycit/classifier"), create_model_from_config(mcfg), mcfg,
                    extra={"stage": "cycit/classifier", "baseline": "cycit"})  # no translation recorded
    with pytest.raises(DataError, match="older CycIT"):
        cycit.train_classifier(ctx, None)
    ctx.checkpoint("cycit/classifier").unlink()
    (ctx.checkpoint("cycit/classifier").parent / "last.json").write_text("{}")  # interrupted, no translation
    with pytest.raises(DataError, match="interrupted older CycIT"):
        cycit.train_classifier(ctx, None)
    save_checkpoint(ctx.checkpoint("cycit/classifier"), create_model_from_config(mcfg), mcfg,
                    extra={"stage": "cycit/classifier", "translation": cycit.TRANSLATION})
    assert not cycit.train_classifier(ctx, None).training  # the current translation's checkpoint loads


def test_cycit_refuses_a_target_without_visible_pairs(setup, tmp_path):
    from esccs.errors import DataError

    _, (src, tgt, _) = setup
    cloudy = tgt.subset(torch.nonzero(tgt.coverage > cycit.PAIR_MAX_COVER).flatten())
    ctx = Context(dataclasses.replace(setup[0], out=str(tmp_path)), tmp_path, src, cloudy, progress=False)
    with pytest.raises(DataError, match="no target-train pair with cloud cover"):
        cycit.train_translator(ctx)


def test_cycit_adaptation_ramps_up_and_adabn_uses_target_statistics():
    assert cycit.ramp(0.0) == 0.0 and cycit.ramp(1.0) == pytest.approx(1.0, abs=1e-4)
    assert 0 < cycit.ramp(0.1) < cycit.ramp(0.3) < cycit.ramp(0.6)
    from esccs.models import create_model

    model = create_model("resnet10", width=8, in_chans=2, n_classes=10, patch_size=32)
    x = 3.0 + 2.0 * torch.randn(64, 2, 32, 32)
    cycit.adapt_bn(model, x)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not model.training
    torch.testing.assert_close(bn.running_mean.mean(), torch.tensor(0.0), atol=10.0, rtol=0)  # re-estimated
    assert bn.num_batches_tracked > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ("ttl", "cycit"))
def test_ttl_and_cycit_beat_chance_on_a_tiny_seeded_run(bigger, name, tmp_path):
    cfg, (src, tgt, test) = bigger
    cfg = dataclasses.replace(cfg, out=str(tmp_path))
    ctx = Context(cfg, tmp_path, src, tgt, progress=False)
    out = METHODS[name](ctx).fn(test)
    acc = float((out["logits"].argmax(1) == test.labels).float().mean())
    assert acc > 1.5 / len(test.classes), acc
