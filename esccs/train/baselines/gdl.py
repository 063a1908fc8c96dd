"""GDL: dual-branch fusion with Gaussian (probabilistic) feature heads, simplified for ESCCS.

Two encoders of the run's backbone family (optical from f_S, SAR from scratch) feed per-branch Gaussian heads:
``mu_m = A_m h_m``, ``log sigma_m^2 = B_m h_m`` (linear); in training the branch embedding is the reparameterised
sample ``mu + sigma * eps``, in evaluation ``mu``; a KL to N(0, I) (weight :data:`KL_WEIGHT`) keeps them
distributions. A fused head classifies the concatenated embeddings; one unimodal head per branch classifies its own
embedding. Losses on all target-train samples (no filter, no target labels), with ``u`` the source logits on the
cloudy optical and ``y = argmax u``:

``CE(z, y) + KD_T(z, u) + UNI_WEIGHT * sum_m [CE(z_m, y) + KD_T(z_m, stopgrad(z))] + KL_WEIGHT * KL``

(T = ``cfg.step1.temperature``). The predictor returns the fused logits only (kind ``pipeline``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from esccs.models import create_model_from_config
from esccs.ops import kd_rows
from esccs.train import stages as st
from esccs.train.baselines.unet import is_saved, train_or_load
from esccs.train.methods import Context, Predictor

KL_WEIGHT = 1e-3
UNI_WEIGHT = 0.5


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(N(mu, exp(logvar)) || N(0, I))`` of ``(B, d)`` parameters: ``(B,)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


class GaussianDualNet(nn.Module):
    """Optical + SAR encoders, Gaussian feature heads, a fused head and two unimodal heads.

    Args:
        opt_encoder: ``(B, C_o, H, W) -> (B, d_o)`` with ``num_features``.
        sar_encoder: ``(B, C_s, H, W) -> (B, d_s)`` with ``num_features``.
        n_classes: number of classes.
    """

    def __init__(self, opt_encoder: nn.Module, sar_encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.opt_encoder, self.sar_encoder = opt_encoder, sar_encoder
        d_o, d_s = int(opt_encoder.num_features), int(sar_encoder.num_features)
        self.gauss = nn.ModuleDict({"o": nn.Linear(d_o, 2 * d_o), "s": nn.Linear(d_s, 2 * d_s)})
        for lin in self.gauss.values():  # start near mu = h, sigma^2 = e^-4: the encoders' features pass through
            d = lin.in_features
            with torch.no_grad():
                lin.weight.zero_()
                lin.weight[:d].copy_(torch.eye(d))
                lin.bias.zero_()
                lin.bias[d:].fill_(-4.0)
        # "head" prefix: the loop trains these at the head learning rate
        self.head = nn.ModuleDict({"fused": nn.Linear(d_o + d_s, n_classes), "o": nn.Linear(d_o, n_classes),
                                   "s": nn.Linear(d_s, n_classes)})

    def _embed(self, key: str, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.gauss[key](h).chunk(2, dim=1)
        logvar = logvar.clamp(-10.0, 10.0)
        e = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return e, gaussian_kl(mu, logvar)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (fused), ``logits_o``, ``logits_s`` ``(B, K)`` and the per-sample KL ``kl`` ``(B,)``."""
        e_o, kl_o = self._embed("o", self.opt_encoder(optical))
        e_s, kl_s = self._embed("s", self.sar_encoder(sar))
        return {"logits": self.head["fused"](torch.cat([e_o, e_s], 1)), "logits_o": self.head["o"](e_o),
                "logits_s": self.head["s"](e_s), "kl": kl_o + kl_s}


def gdl_step(temperature: float):
    """The GDL loss (module docstring) for batches with ``optical``, ``sar``, ``target`` (= argmax u), ``teacher``."""
    def step(model, b):
        out = model(b["optical"], b["sar"])
        z, y = out["logits"], b["target"]
        loss = F.cross_entropy(z, y) + kd_rows(z, b["teacher"], temperature).mean()
        for key in ("logits_o", "logits_s"):
            zm = out[key]
            loss = loss + UNI_WEIGHT * (F.cross_entropy(zm, y) + kd_rows(zm, z.detach(), temperature).mean())
        return loss + KL_WEIGHT * out["kl"].mean(), z, {}

    return step


def build_gdl(ctx: Context) -> GaussianDualNet:
    """Two bare encoders of the run's backbone (``n_classes=0``); the optical one copied from f_S."""
    def encoder(kind: str) -> nn.Module:
        mcfg = dataclasses.replace(st.model_config(ctx.cfg, ctx.tgt, kind), classes=None, n_classes=0)
        return create_model_from_config(mcfg)

    net = GaussianDualNet(encoder("optical"), encoder("sar"), len(ctx.tgt.classes))
    net.opt_encoder.load_state_dict(ctx.source().encoder.state_dict())
    return net


def gdl(ctx: Context) -> Predictor:
    """GDL baseline: train (or load) the Gaussian dual-branch net; predict the fused logits."""
    cfg = ctx.cfg
    folder = ctx.run / "gdl" / "net"
    data, val = {}, None
    if not is_saved(folder):
        from esccs.train.methods import pseudo_data

        data, val = (pseudo_data(ctx, b, ("optical", "sar")) for b in ("tgt", "tval"))
    net_cfg = {"arch": cfg.model.arch, "width": cfg.model.width, "stem": cfg.model.stem, "bands": list(cfg.bands),
               "classes": list(ctx.tgt.classes), "kl_weight": KL_WEIGHT, "uni_weight": UNI_WEIGHT, "seed": cfg.seed}
    net = train_or_load(folder, lambda: build_gdl(ctx), data, gdl_step(cfg.step1.temperature), cfg.loop("target"),
                        net_cfg, ctx.progress, val=val)

    def fn(bank) -> dict:
        return {"logits": st.predict(net, bank.optical, bank.sar, device=ctx.device)["logits"]}

    return Predictor("gdl", fn, folder / "net.safetensors", "pipeline", {"components": ["gdl/net"]})
