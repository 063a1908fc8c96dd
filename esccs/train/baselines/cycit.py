"""CycIT: translate labelled optical into a SAR-like domain, then adapt to real SAR (LGRS 2022), simplified.

Stage 1 (translator): the paper uses an unpaired CycleGAN. Here a small *paired* U-Net optical -> SAR trained with
L1 on the co-registered target-train pairs (cloudy optical, SAR) is a cheap stand-in for it: no adversarial or
cycle loss, and it sees target optical (never target labels). It turns the labelled source cloud-free optical images
into SAR-like images that keep their source labels.

Stage 2 (DTAM stand-in): a SAR classifier (registered architecture, 2 channels) trained on the translated source
images with CE to the source labels, + a DANN domain discriminator behind a gradient-reversal layer on the encoder
features (translated source vs unlabelled real target-train SAR; weight :data:`ADV_WEIGHT`), + a centre loss pulling
each translated feature to its class centre (weight :data:`CENTER_WEIGHT`). Each source sample is paired with a
fixed (seeded) real target SAR sample; the real SAR of a batch is not augmented. The predictor is the SAR classifier
on ``bank.sar``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from esccs.models import create_model_from_config, load_checkpoint, save_checkpoint
from esccs.train import stages as st
from esccs.train.baselines.unet import UNet, apply_net, train_or_load
from esccs.train.loop import Trainer
from esccs.train.methods import Context, Predictor, classifier_predictor

ADV_WEIGHT = 0.1
CENTER_WEIGHT = 0.01


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


class DannNet(nn.Module):
    """Training wrapper: a classifier's ``encoder`` and ``head`` + a domain discriminator + learnable class centres.

    The submodules are the classifier's own (shared), so training the wrapper trains the classifier; the parameter
    names ``encoder.*`` / ``head.*`` match the classifier's, and ``head`` gets the loop's head learning rate.
    """

    def __init__(self, classifier: nn.Module, n_classes: int) -> None:
        super().__init__()
        d = int(classifier.num_features)
        self.encoder, self.head = classifier.encoder, classifier.head
        self.disc = nn.Sequential(nn.Linear(d, d), nn.ReLU(True), nn.Linear(d, 1))
        self.centers = nn.Parameter(torch.zeros(n_classes, d))

    def forward(self, sar: torch.Tensor, sar_t: torch.Tensor) -> dict:
        """Source logits, source features, and domain logits of source (first half) and target (second half)."""
        h = self.encoder(torch.cat([sar, sar_t]))
        hs = h[: len(sar)]
        return {"logits": self.head(hs), "h": hs, "domain": self.disc(grad_reverse(h)).squeeze(1)}


def dann_step(model: DannNet, b: dict):
    """CE on translated source + ADV_WEIGHT * domain BCE (through the reversal) + CENTER_WEIGHT * centre loss."""
    out = model(b["sar"], b["sar_t"])
    z, h, y = out["logits"], out["h"], b["target"]
    n = len(z)
    domain = torch.cat([torch.zeros(n), torch.ones(len(b["sar_t"]))]).to(z.device)
    adv = F.binary_cross_entropy_with_logits(out["domain"].float(), domain)
    center = ((h.float() - model.centers[y]) ** 2).sum(1).mean()
    return F.cross_entropy(z, y) + ADV_WEIGHT * adv + CENTER_WEIGHT * center, z, {}


def _translator_step(model, b):
    return F.l1_loss(model(b["optical"]), b["sar"]), None, {}


def train_translator(ctx: Context) -> nn.Module:
    """Stage 1: paired U-Net optical -> SAR on target-train pairs (L1), trained or loaded."""
    c_o, c_s = int(ctx.tgt.optical.shape[1]), int(ctx.tgt.sar.shape[1])
    width = ctx.cfg.model.width
    data = {"optical": ctx.tgt.optical, "sar": ctx.tgt.sar}
    return train_or_load(ctx.run / "cycit" / "translator", lambda: UNet(c_o, c_s, width), data, _translator_step,
                         ctx.cfg.loop("aux"), {"c_in": c_o, "c_out": c_s, "width": width, "seed": ctx.cfg.seed},
                         ctx.progress)


def train_classifier(ctx: Context, translator: nn.Module) -> nn.Module:
    """Stage 2: SAR classifier on translated labelled source + DANN against real target SAR + centre loss."""
    ckpt = ctx.run / "cycit" / "classifier" / "model.safetensors"
    mcfg = st.model_config(ctx.cfg, ctx.tgt, "sar")
    loop = ctx.cfg.loop("target")
    if ckpt.exists():
        return load_checkpoint(ckpt, expect=mcfg.name)[0].to(loop.device).eval()
    src = ctx.src.where("train") if (ctx.src.split == "train").any() else ctx.src
    fake = apply_net(translator, src.optical, device=ctx.device)
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    n_t = len(ctx.tgt.sar)
    pair = torch.cat([torch.randperm(n_t, generator=gen) for _ in range(-(-len(fake) // n_t))])[: len(fake)]
    data = {"sar": fake, "target": src.labels, "sar_t": ctx.tgt.sar[pair]}
    torch.manual_seed(loop.seed)
    clf = create_model_from_config(mcfg)
    wrapper = DannNet(clf, len(ctx.tgt.classes))
    Trainer(wrapper, data, dann_step, loop, Path(ckpt).parent, "cycit/classifier", ctx.progress).fit()
    save_checkpoint(ckpt, clf.cpu(), mcfg, extra={"stage": "cycit/classifier", "epochs": loop.epochs,
                                                  "baseline": "cycit"})
    return clf.to(loop.device).eval()


def cycit(ctx: Context) -> Predictor:
    """CycIT baseline: translator (stage 1), then the adapted SAR classifier (stage 2); predicts on ``bank.sar``."""
    ckpt = ctx.run / "cycit" / "classifier" / "model.safetensors"
    translator = None if ckpt.exists() else train_translator(ctx)
    model = train_classifier(ctx, translator)
    pred = classifier_predictor("cycit", model, "sar", ckpt, ctx.device)
    pred.info = {"translator": "paired U-Net L1 (CycleGAN stand-in)"}
    return pred
