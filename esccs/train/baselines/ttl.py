"""TTL: transitive transfer through single-factor intermediate domains (JSTARS 2023), simplified for ESCCS.

The chain changes one factor per hop, on co-registered target-train samples (no target labels):

1. f_S (cloudy optical, 10 bands) -> **I1**: one intensity channel, the mean surface reflectance of the visible and
   NIR bands (B02, B03, B04, B08; all bands when none of those is present), standardised (spectral factor).
2. I1 -> **I2**: the same intensity with multiplicative Gamma speckle (4.4 looks, fixed seed) in dB, standardised
   (radiometric factor: SAR-like statistics).
3. I2 -> **SAR** (VV, VH): the real sensor.

Each hop is step-1 style filtered pseudo-label KD (``cfg.step1``: filter policy, tau, class floor, T, lambda_kd):
the previous model's logits on all target-train samples give pseudo-labels; the next model learns CE to them on the
kept samples + lambda_kd * KD_T to the logits. I1 and I2 models are 1-channel classifiers (registered
architecture, ``modality="sar"`` with one band named ``I1`` / ``I2``); the I2 model starts from the I1 model's
weights, the SAR model from scratch. The predictor is the final SAR model on ``bank.sar``.
Deviation: I1 averages reflectance rather than normalised bands, so that I2 is exactly I1's intensity in dB.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from esccs.data.speckle import linear_to_db, speckle
from esccs.train import stages as st
from esccs.train.bank import Bank
from esccs.train.filters import FilterConfig, select
from esccs.train.methods import Context, Predictor, classifier_predictor

INTENSITY_BANDS = ("B02", "B03", "B04", "B08")
LOOKS = 4.4


def reflectance_intensity(bank: Bank) -> torch.Tensor:
    """Mean reflectance (DN / 10000) of the visible + NIR bands of ``bank.optical``: ``(N, 1, H, W)``."""
    norm = bank.opt_norm
    chans = [i for i, b in enumerate(norm.bands) if b in INTENSITY_BANDS] or list(range(len(norm.bands)))
    mean, std = (torch.as_tensor(v[chans]).view(1, -1, 1, 1) for v in (norm.mean, norm.std))
    raw = bank.optical[:, chans] * std + mean
    return (raw.clamp(*norm.clip) / 10000.0).mean(1, keepdim=True)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over the whole tensor."""
    return (x - x.mean()) / x.std().clamp_min(1e-6)


def intermediate_domains(bank: Bank, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two intermediate images of every sample: I1 (intensity) and I2 (speckled dB intensity), standardised."""
    r = reflectance_intensity(bank)
    rng = np.random.default_rng(seed)
    power = np.maximum(r.numpy().astype(np.float32), 1e-4)
    db = linear_to_db(speckle(power, LOOKS, rng)).astype(np.float32)
    return standardise(r), standardise(torch.from_numpy(db))


def one_channel_config(cfg, bank: Bank, band: str):
    """A 1-channel classifier's :class:`~esccs.models.ModelConfig` (registered architecture, one named band)."""
    return dataclasses.replace(st.model_config(cfg, bank, "sar"), sar_bands=(band,), normalization=None)


def hop(ctx: Context, stage: str, mcfg, x: torch.Tensor, teacher: torch.Tensor, key: str, init=None):
    """One hop: filtered pseudo-labels from ``teacher`` logits -> train (or load) the next model on ``x``."""
    s1 = ctx.cfg.step1
    kept = torch.as_tensor(select(teacher.numpy(), FilterConfig(s1.policy, s1.tau, s1.min_per_class,
                                                               s1.frac_per_class)), dtype=torch.long)
    data = {key: x[kept], "target": teacher.argmax(1)[kept], "teacher": teacher[kept]}
    step = st.aux_step(key, s1.temperature, s1.lambda_kd)
    model = st.run_stage(ctx.run, stage, mcfg, data, step, ctx.cfg.loop("aux"), ctx.progress,
                         extra={"kept": int(len(kept)), "baseline": "ttl"}, init=init)
    return model, st.predict(model, x, device=ctx.device)["logits"]


def ttl(ctx: Context) -> Predictor:
    """TTL baseline: f_S -> I1 -> I2 -> SAR, each hop filtered pseudo-label KD on target-train pairs."""
    cfg, tgt = ctx.cfg, ctx.tgt
    i1, i2 = intermediate_domains(tgt, cfg.seed)
    u = st.predict(ctx.source(), tgt.optical, device=ctx.device)["logits"]
    m1, z1 = hop(ctx, "ttl/i1", one_channel_config(cfg, tgt, "I1"), i1, u, "sar")
    m2, z2 = hop(ctx, "ttl/i2", one_channel_config(cfg, tgt, "I2"), i2, z1, "sar", init=st.init_from(optical=m1))
    m3, _ = hop(ctx, "ttl/sar", st.model_config(cfg, tgt, "sar"), tgt.sar, z2, "sar")
    pred = classifier_predictor("ttl", m3, "sar", ctx.run / "ttl" / "sar" / "model.safetensors", ctx.device)
    pred.info = {"chain": ["source", "ttl/i1", "ttl/i2", "ttl/sar"]}
    return pred
