"""CycIT: translate labelled optical into a SAR-like domain, then adapt to real SAR (LGRS 2022), simplified.

Stage 1 (translator): the paper uses an unpaired CycleGAN, whose adversarial loss makes the output *look like* SAR,
speckle and bright scatterers included. A paired L1 U-Net alone outputs the conditional median: smooth mean images
with a fraction of real SAR's within-image variance, on which a classifier learns cues that real SAR does not show.
Here a small paired U-Net optical -> SAR, trained with L1 on the co-registered target-train pairs whose optical
image is visible (cloud cover <= :data:`PAIR_MAX_COVER`, from the cloud mask; never target labels), predicts the
mean image ``mu``; what it cannot predict, the residual ``real - mu`` of each of those pairs (level offset, speckle,
texture, bright scatterers), is kept as an empirical, class-conditional noise model (:func:`residual_bank`): a pair's
class is step 1's filtered pseudo-label of it (f_S on its optical image). A labelled source image of class ``y`` is
translated to ``mu + r``, ``r`` the residual of a pair of class ``y``, rotated / flipped at random, drawn afresh
every epoch of stage 2 among :data:`POOL` candidates (:func:`residual_pools`, :func:`translate`). Translated SAR has
real SAR's spread, level offsets, tails and per-class texture, where the class information of (synthetic) SAR
mostly lies: on the development data a classifier on the mean images alone reached 27-31 % OA on real SAR, on
mean images plus the residual of a random pair 30-31 %, plus a residual of the same pseudo-class 42-43 %
(``benchmarks/cycit_diagnosis.py``; docs/method.md, cycit).

Stage 2 (DTAM stand-in): a SAR classifier (registered architecture, 2 channels) trained on the translated source
images with CE to the source labels, + a DANN domain discriminator behind a gradient-reversal layer on the encoder
features (translated source vs unlabelled real target-train SAR) whose weight ramps up as
``ADV_WEIGHT * (2 / (1 + exp(-10 p)) - 1)`` over training progress ``p`` (Ganin & Lempitsky), + a centre loss
pulling each translated feature to its class centre (weight :data:`CENTER_WEIGHT`). BatchNorm is domain specific:
the two domains go through the encoder in separate batches (separate batch statistics), and after training the
classifier's running statistics are re-estimated on real target SAR alone (AdaBN), which the predictor uses.
The epoch is selected on held-out target-train SAR against step 1's pseudo-labels. The predictor is the SAR
classifier on ``bank.sar``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from esccs.errors import DataError
from esccs.io.atomic import write_text
from esccs.models import create_model_from_config, load_checkpoint, save_checkpoint
from esccs.train import distributed as ddp
from esccs.train import stages as st
from esccs.train.bank import Bank
from esccs.train.baselines.unet import UNet, apply_net, train_or_load
from esccs.train.loop import Trainer
from esccs.train.methods import Context, Predictor, classifier_predictor

ADV_WEIGHT = 0.1
CENTER_WEIGHT = 0.01
PAIR_MAX_COVER = 0.25  # the translator learns (and its residuals come) from pairs this visible
POOL = 16  # candidate residuals per source image, drawn once among the pairs of its class; one is used per epoch
TRANSLATION = "mu + class-conditional pair residual"  # recorded in the classifier checkpoint, checked on reuse


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``-scale`` (Ganin & Lempitsky, DANN)."""
    return _GradReverse.apply(x, float(scale))


def ramp(progress: float) -> float:
    """DANN's adaptation schedule ``2 / (1 + exp(-10 p)) - 1``: 0 at the start, -> 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class DannNet(nn.Module):
    """Training wrapper: a classifier's ``encoder`` and ``head`` + a domain discriminator + learnable class centres.

    The submodules are the classifier's own (shared), so training the wrapper trains the classifier; the parameter
    names ``encoder.*`` / ``head.*`` match the classifier's, and ``head`` gets the loop's head learning rate.
    ``adv_scale`` is set by :class:`RampTrainer` every epoch.
    """

    def __init__(self, classifier: nn.Module, n_classes: int) -> None:
        super().__init__()
        d = int(classifier.num_features)
        self.encoder, self.head = classifier.encoder, classifier.head
        self.disc = nn.Sequential(nn.Linear(d, d), nn.ReLU(True), nn.Linear(d, 1))
        self.centers = nn.Parameter(torch.zeros(n_classes, d))
        self.adv_scale = 1.0

    def forward(self, sar: torch.Tensor, sar_t: torch.Tensor) -> dict:
        """Source logits and features, and domain logits of source then target (separate BN batches)."""
        hs, ht = self.encoder(sar), self.encoder(sar_t)
        return {"logits": self.head(hs), "h": hs,
                "domain": self.disc(grad_reverse(torch.cat([hs, ht]))).squeeze(1)}


class RampTrainer(Trainer):
    """A :class:`Trainer` that sets the adaptation weight of the epoch (:func:`ramp`) before running it.

    With a residual ``pool`` in the data it also draws the epoch's translation choices (:func:`draw_choices`) for
    every row, from a generator seeded by the run's seed and the epoch: a resumed run makes the same draws, and
    under torchrun each rank slices its rows of the same draws, as one process would use them.
    """

    def _epoch(self, epoch: int) -> dict:
        self.model.adv_scale = ADV_WEIGHT * ramp(epoch / max(self.cfg.epochs - 1, 1))
        if "pool" in self.data:
            gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch + 7_919)
            mu = self.data["mu"]
            self.data["draw"] = draw_choices(len(mu), self.data["pool"].shape[1], mu.shape[-1] == mu.shape[-2], gen)
        return super()._epoch(epoch)


def draw_choices(n: int, k: int, square: bool = True, gen: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 3)`` random choices per row for :func:`translate`: pool column, quarter turns, flip.

    The column is in ``[0, k)``, the turns 0-3 (0 or 2 when the images are not square), the flip 0 or 1.
    """
    col = torch.randint(k, (n,), generator=gen)
    turns = torch.randint(4, (n,), generator=gen) if square else 2 * torch.randint(2, (n,), generator=gen)
    return torch.stack([col, turns, torch.randint(2, (n,), generator=gen)], 1)


def translate(mu: torch.Tensor, resid: torch.Tensor, pool: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """SAR-like images ``mu + r``, ``r`` the row's chosen ``pool`` residual, turned and flipped as ``draw`` says.

    Args:
        mu: ``(N, C, H, W)`` the translator's mean images.
        resid: ``(P, C, H, W)`` residuals ``real - mu`` of the translator's pairs (:func:`residual_bank`).
        pool: ``(N, K)`` candidate residual indices per row (:func:`residual_pools`).
        draw: ``(N, 3)`` pool column, quarter turns and flip per row (:func:`draw_choices`).
    """
    n = len(mu)
    draw = draw.to(pool.device)
    r = resid[pool[torch.arange(n, device=pool.device), draw[:, 0]]]  # advanced indexing: a copy of the bank rows
    for k in range(1, 4):
        m = draw[:, 1] == k
        if bool(m.any()):
            r[m] = torch.rot90(r[m], k, (-2, -1))
    m = draw[:, 2].bool()
    r[m] = r[m].flip(-1)
    return mu + r


def dann_step(model: DannNet, b: dict, resid: torch.Tensor | None = None):
    """CE on translated source + ramped domain BCE (through the reversal) + CENTER_WEIGHT * centre loss.

    A batch carries the translator's ``mu`` of its source images, their residual ``pool`` and the epoch's ``draw``
    (:class:`RampTrainer`); the SAR-like images are made here from the residual bank ``resid`` (bound with
    :func:`functools.partial`: kept out of the model, so DDP never broadcasts it). A validation batch, or one
    without ``mu``, carries ``sar`` instead.
    """
    sar = translate(b["mu"], resid, b["pool"], b["draw"]) if "mu" in b else b["sar"]
    out = model(sar, b["sar_t"])
    z, h, y = out["logits"], out["h"], b["target"]
    n = len(z)
    domain = torch.cat([torch.zeros(n), torch.ones(len(b["sar_t"]))]).to(z.device)
    adv = F.binary_cross_entropy_with_logits(out["domain"].float(), domain)
    center = ((h.float() - model.centers[y.clamp_min(0)]) ** 2).sum(1).mean()
    ce = F.cross_entropy(z, y.clamp_min(0))
    return ce + model.adv_scale * adv + CENTER_WEIGHT * center, z, {}


def _translator_step(model, b):
    return (model(b["optical"]) - b["sar"]).abs().mean(), None, {}


def translator_pairs(bank: Bank) -> tuple[torch.Tensor, torch.Tensor]:
    """The (optical, SAR) pairs of ``bank`` a translator can learn from: cloud cover <= :data:`PAIR_MAX_COVER`.

    Under cloud the optical image says nothing about the SAR one, so those pairs can only teach the translator the
    mean SAR image. (Measured on the development data, leaving them out changed little: CycIT 29.7 % OA against
    31.3 % with every pair, the translated within-image std 0.19 against 0.20.) The cover comes from the cloud mask
    (an input), never from labels.
    """
    keep = bank.coverage <= PAIR_MAX_COVER
    return bank.optical[keep], bank.sar[keep]


def train_translator(ctx: Context) -> nn.Module:
    """Stage 1: paired U-Net optical -> mean SAR image ``mu`` on target-train's visible pairs (L1).

    Raises:
        DataError: target-train has no pair with cloud cover <= :data:`PAIR_MAX_COVER`.
    """
    c_o, c_s = int(ctx.tgt.optical.shape[1]), int(ctx.tgt.sar.shape[1])
    width = ctx.cfg.model.width
    opt, sar = translator_pairs(ctx.tgt)
    if not len(opt):
        raise DataError(ctx.tgt.meta.get("root", "target"), f"cycit: no target-train pair with cloud cover <= "
                        f"{PAIR_MAX_COVER} to train the optical -> SAR translator on")
    vopt, vsar = translator_pairs(ctx.tval)
    val = {"optical": vopt, "sar": vsar} if len(vopt) else None
    return train_or_load(ctx.run / "cycit" / "translator", lambda: UNet(c_o, c_s, width),
                         {"optical": opt, "sar": sar}, _translator_step, ctx.cfg.loop("aux"),
                         {"c_in": c_o, "c_out": c_s, "width": width, "seed": ctx.cfg.seed, "loss": "l1",
                          "pairs": f"cover <= {PAIR_MAX_COVER}"}, ctx.progress, val=val)


def residual_bank(translator: nn.Module, pairs: tuple[torch.Tensor, torch.Tensor],
                  device: str = "cpu") -> torch.Tensor:
    """The residuals ``real - mu`` of the translator's (optical, SAR) ``pairs``: ``(P, C, H, W)``.

    What the optical image cannot tell about the SAR one (the scene's level offset, speckle, texture, bright
    scatterers): the noise model of the translation, taken from real SAR.
    """
    return pairs[1] - apply_net(translator, pairs[0], device=device)


def pair_classes(ctx: Context) -> torch.Tensor:
    """Step 1's filtered pseudo-label of each translator pair: ``(P,)``, in the order of :func:`translator_pairs`.

    The label is f_S's on the pair's optical image, -1 where step 1's filter drops it; never target labels.
    """
    pl = ctx.pseudo(ctx.cfg.step1, "tgt")
    cls = torch.full((len(ctx.tgt),), -1, dtype=torch.long)
    cls[pl["kept"]] = pl["pseudo"][pl["kept"]]
    return cls[ctx.tgt.coverage <= PAIR_MAX_COVER]


def residual_pools(labels: torch.Tensor, pair_cls: torch.Tensor, k: int = POOL,
                   gen: torch.Generator | None = None) -> torch.Tensor:
    """``(N, k)`` residual indices per source image, drawn with replacement among the pairs of the image's class.

    A class without a pair draws among the pairs with any class, else among all pairs.
    """
    labelled = torch.nonzero(pair_cls >= 0).flatten()
    fallback = labelled if len(labelled) else torch.arange(len(pair_cls))
    pools = torch.empty((len(labels), k), dtype=torch.long)
    for c in labels.unique().tolist():
        rows = torch.nonzero(labels == c).flatten()
        cand = torch.nonzero(pair_cls == c).flatten()
        cand = cand if len(cand) else fallback
        pools[rows] = cand[torch.randint(len(cand), (len(rows), k), generator=gen)]
    return pools


def within_var(x: torch.Tensor) -> torch.Tensor:
    """Mean within-image variance per channel of ``(N, C, H, W)`` images: ``(C,)``."""
    return x.flatten(2).var(2).mean(0)


@torch.no_grad()
def adapt_bn(model: nn.Module, x: torch.Tensor, batch: int = 128, device: str = "cpu") -> None:
    """AdaBN: re-estimate every BatchNorm's running statistics on ``x`` (cumulative average), weights unchanged."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train().to(device)
    for s in range(0, len(x), batch):
        model(x[s:s + batch].to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def target_rows(ctx: Context, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` real target-train SAR images, one per source row, for the domain discriminator (each used evenly)."""
    n_t = len(ctx.tgt.sar)
    pair = torch.cat([torch.randperm(n_t, generator=gen) for _ in range(-(-n // n_t))])[:n]
    return ctx.tgt.sar[pair]


def fit_classifier(ctx: Context, data: dict, step, folder: Path, name: str) -> tuple[nn.Module, Trainer]:
    """Train stage 2's SAR classifier on ``data`` with ``step``, then AdaBN on target SAR: (classifier, trainer).

    :class:`RampTrainer`; the epoch is selected on held-out target-train SAR against step 1's pseudo-labels.
    """
    loop = ctx.cfg.loop("target")
    val = None
    if len(ctx.tval):
        vpl = ctx.pseudo(ctx.cfg.step1, "tval")
        k = vpl["kept"]
        val = {"sar": ctx.tval.sar[k], "sar_t": ctx.tval.sar[k], "target": vpl["pseudo"][k]}
    torch.manual_seed(loop.seed)
    clf = create_model_from_config(st.model_config(ctx.cfg, ctx.tgt, "sar"))
    trainer = RampTrainer(DannNet(clf, len(ctx.tgt.classes)), data, step, loop, folder, name, ctx.progress, val=val)
    trainer.fit()
    adapt_bn(clf, ctx.tgt.sar, device=ctx.device)
    return clf, trainer


def train_classifier(ctx: Context, translator: nn.Module) -> nn.Module:
    """Stage 2: SAR classifier on translated labelled source + ramped DANN against real target SAR + centre loss.

    Raises:
        DataError: the saved classifier was trained on another translation (an older CycIT).
    """
    ckpt = ctx.checkpoint("cycit/classifier")
    mcfg = st.model_config(ctx.cfg, ctx.tgt, "sar")
    loop = ctx.cfg.loop("target")
    folders = f"delete {Path(ckpt).parent} and {ctx.run / 'cycit' / 'translator'} to retrain"
    if ckpt.exists():
        model, _, extra = load_checkpoint(ckpt, expect=mcfg.name)
        if extra.get("translation") != TRANSLATION:
            raise DataError(ckpt, f"saved by an older CycIT (translation {extra.get('translation')!r}); {folders}")
        return model.to(loop.device).eval()
    marker = Path(ckpt).parent / "translation.txt"  # an interrupted run resumes only with the same translation
    if (Path(ckpt).parent / "last.json").exists():
        was = marker.read_text().strip() if marker.exists() else None
        if was != TRANSLATION:
            raise DataError(Path(ckpt).parent / "last.json", f"an interrupted older CycIT (translation {was!r}); "
                                                               f"{folders}")
    src = ctx.src.where("train") if (ctx.src.split == "train").any() else ctx.src
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    pairs = translator_pairs(ctx.tgt)
    resid = residual_bank(translator, pairs, ctx.device)
    pools = residual_pools(src.labels, pair_classes(ctx), POOL, gen)
    mu = apply_net(translator, src.optical, device=ctx.device)
    data = {"mu": mu, "pool": pools, "target": src.labels, "sar_t": target_rows(ctx, len(mu), gen)}
    ddp.on_main(write_text, marker, TRANSLATION + "\n")
    clf, trainer = fit_classifier(ctx, data, functools.partial(dann_step, resid=resid.to(loop.device)),
                                  Path(ckpt).parent, "cycit/classifier")
    ddp.on_main(save_checkpoint, ckpt, clf.cpu(), mcfg, extra={"stage": "cycit/classifier", **trainer.summary(),
                                                               "baseline": "cycit", "bn": "adabn-target",
                                                               "translation": TRANSLATION,
                                                               "residual_pairs": len(resid)})
    return clf.to(loop.device).eval()


def cycit(ctx: Context) -> Predictor:
    """CycIT baseline: translator (stage 1), then the adapted SAR classifier (stage 2); predicts on ``bank.sar``."""
    ckpt = ctx.checkpoint("cycit/classifier")
    translator = None if ckpt.exists() else train_translator(ctx)
    model = train_classifier(ctx, translator)
    pred = classifier_predictor("cycit", model, "sar", ckpt, ctx.device)
    pred.info = {"translator": f"paired U-Net, L1 (CycleGAN stand-in); {TRANSLATION}",
                 "bn": "domain-specific batches + AdaBN on target SAR", "adv": "ramped DANN"}
    return pred
