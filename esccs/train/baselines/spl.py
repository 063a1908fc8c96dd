"""SPL: self-paced cloud removal (TGRS 2022, doi 10.1109/TGRS.2022.3157917), simplified for ESCCS.

A small U-Net restores cloudy optical images (normalised space, residual output). It learns from the labelled
*source* cloud-free images only: each gets synthetic clouds once (:func:`esccs.data.clouds.simulate_clouds` on raw
DN, random coverage in [0, 1] and a random preset, fixed seed), kept in memory for the run. Training follows a
curriculum from low to high texture complexity (mean gradient magnitude of the clear image): epoch ``e`` of ``E``
uses the easiest fraction ``p_e = p0 + (1 - p0) e / (E - 1)`` of the samples (all of them when ``E = 1``). Loss
``L1 + (1 - SSIM)`` against the clear image. The paper's GAN discriminator is left out. At test time the cloudy
optical is restored and classified by the source model f_S. Target images are never used for training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from esccs.train import stages as st
from esccs.train.bank import Bank
from esccs.train.baselines.unet import UNet, apply_net, is_saved, ssim, train_or_load
from esccs.train.loop import Trainer
from esccs.train.methods import Context, Predictor

P0 = 0.5  # fraction of the (easiest) samples used in the first epoch


def texture_complexity(x: torch.Tensor) -> torch.Tensor:
    """Mean gradient magnitude per image of ``(N, C, H, W)`` (forward differences, averaged over bands): ``(N,)``."""
    gx = x[..., :-1, 1:] - x[..., :-1, :-1]
    gy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return torch.sqrt(gx**2 + gy**2 + 1e-12).mean(dim=(1, 2, 3))


def pace(epoch: int, epochs: int, p0: float = P0) -> float:
    """Fraction of samples used at ``epoch``: linear from ``p0`` (first epoch) to 1 (last epoch)."""
    if epochs <= 1:
        return 1.0
    return p0 + (1.0 - p0) * min(epoch, epochs - 1) / (epochs - 1)


def curriculum(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the easiest ``ceil(fraction * N)`` samples (lowest score first; ties keep index order)."""
    n = max(1, math.ceil(fraction * len(scores) - 1e-9))
    return torch.argsort(scores, stable=True)[:n]


class PacedTrainer(Trainer):
    """A :class:`Trainer` whose epoch ``e`` runs on the easiest :func:`pace` fraction of the data only."""

    def __init__(self, *args, scores: torch.Tensor, p0: float = P0, **kw) -> None:
        super().__init__(*args, **kw)
        self.full, self.scores, self.p0 = self.data, scores, p0

    def _epoch(self, epoch: int) -> dict:
        idx = curriculum(self.scores, pace(epoch, self.cfg.epochs, self.p0))
        self.data = {k: v[idx] for k, v in self.full.items()}
        self.n = len(idx)
        self.steps = max(1, self.n // self.cfg.batch_size)
        return super()._epoch(epoch)


def synthetic_clouds(bank: Bank, seed: int) -> torch.Tensor:
    """Cloudy versions of ``bank.optical`` (normalised): clouds rendered on raw DN, one per image, fixed seed."""
    return st.simulated_clouds(bank, np.random.default_rng(seed))[0]


def restore_loss(pred: torch.Tensor, clear: torch.Tensor) -> torch.Tensor:
    """``L1 + (1 - SSIM)`` of a restored batch against the clear batch."""
    return F.l1_loss(pred, clear) + (1.0 - ssim(pred, clear))


def _step(model, b):
    return restore_loss(model(b["optical"]), b["clear"]), None, {}


def spl(ctx: Context) -> Predictor:
    """SPL baseline: train (or load) the cloud-removal U-Net on source images; predict f_S(restore(optical))."""
    cfg = ctx.cfg
    folder = ctx.run / "spl" / "unet"
    src = ctx.src.where("train") if (ctx.src.split == "train").any() else ctx.src
    c = int(src.optical.shape[1])
    loop = cfg.loop("aux")
    data, scores = {}, torch.zeros(0)
    if not is_saved(folder):
        key = f"spl:clouds:{cfg.seed}"
        if key not in ctx.cache:  # generated once per run, kept in memory
            ctx.cache[key] = synthetic_clouds(src, cfg.seed)
        data = {"optical": ctx.cache[key], "clear": src.optical}
        scores = texture_complexity(src.optical)
    net_cfg = {"c": c, "width": cfg.model.width, "p0": P0, "seed": cfg.seed}
    net = train_or_load(folder, lambda: UNet(c, c, cfg.model.width, residual=True), data, _step, loop, net_cfg,
                        ctx.progress, trainer=PacedTrainer, scores=scores)
    source = ctx.source()

    def fn(bank: Bank) -> dict:
        restored = apply_net(net, bank.optical, device=ctx.device)
        return {"logits": st.predict(source, restored, device=ctx.device)["logits"]}

    return Predictor("spl", fn, folder / "net.safetensors", "pipeline", {"components": ["spl/unet", "source"]})
