"""TTL: transitive transfer through single-factor intermediate domains (JSTARS 2023), simplified for ESCCS.

TTL moves a classifier from optical to SAR through intermediate domains that each change one factor, carrying the
weights from hop to hop. The hops here (``I1``, ``I2`` are 1-channel images):

1. **I1** (spectral factor): the labelled *source* images mapped to one intensity channel, the mean reflectance of
   the visible and NIR bands (B02, B03, B04, B08; all bands when none of those is present). The I1 model starts
   from f_S (its first convolution summed over the input bands, the usual channel-reduction init) and learns CE to
   the source labels.
2. **I2** (radiometric factor): the same intensity of the source images with multiplicative Gamma speckle
   (4.4 looks, fixed seed) in dB, standardised: SAR-like statistics. Starts from the I1 model, CE to the labels.
3. **SAR** (sensor): the SAR model starts from the I2 model (its 1-channel stem copied to both VV and VH, halved, so
   the first layer's response to equal inputs is unchanged) and learns step 1's filtered pseudo-labels on target-train
   SAR (CE + lambda_kd KD_T to f_S's logits, exactly f_R's recipe), the epoch selected on held-out target-train.

So the labelled knowledge reaches the SAR model through the weights of the chain; target labels are never used.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from esccs.data.speckle import linear_to_db, speckle
from esccs.train import stages as st
from esccs.train.bank import Bank
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


def carry(prev: torch.nn.Module):
    """An ``init`` that copies ``prev``'s weights into the next hop's model, adapting the first convolution.

    When the input channel counts differ, the first convolution's kernel is summed over ``prev``'s input channels
    and spread evenly over the new ones (sum preserved: an image equal in every channel gives the same response).
    """
    def init(model: torch.nn.Module) -> None:
        src, dst = prev.state_dict(), model.state_dict()
        for k, v in dst.items():
            w = src.get(k)
            if w is None:
                continue
            if w.shape == v.shape:
                dst[k] = w.clone()
            elif w.dim() == 4 and w.shape[0] == v.shape[0] and w.shape[2:] == v.shape[2:]:
                dst[k] = w.sum(1, keepdim=True).repeat(1, v.shape[1], 1, 1) / v.shape[1]
        model.load_state_dict(dst)

    return init


def _supervised(key: str):
    def step(model, b):
        z = model(b[key])
        return F.cross_entropy(z, b["target"]), z, {}

    return step


def source_hop(ctx: Context, stage: str, mcfg, x: torch.Tensor, y: torch.Tensor, val: tuple | None, init):
    """An intermediate hop: the labelled source images in that domain, CE to the source labels."""
    return st.run_stage(ctx.run, stage, mcfg, {"sar": x, "target": y}, _supervised("sar"), ctx.cfg.loop("source"),
                        ctx.progress, extra={"baseline": "ttl"}, init=init,
                        val={"sar": val[0], "target": val[1]} if val is not None and len(val[1]) else None)


def ttl(ctx: Context) -> Predictor:
    """TTL baseline: f_S -> I1 -> I2 (labelled source images) -> SAR (step-1 pseudo-labels on target SAR)."""
    cfg = ctx.cfg
    src = ctx.src.where("train") if (ctx.src.split == "train").any() else ctx.src
    sval = ctx.src.where("val")
    n = len(src)
    both = src.subset(list(range(n))) if not len(sval) else Bank(
        src.ids + sval.ids, torch.cat([src.optical, sval.optical]), torch.cat([src.sar, sval.sar]),
        torch.cat([src.labels, sval.labels]), torch.cat([src.coverage, sval.coverage]),
        np.concatenate([src.split, sval.split]), src.classes, src.opt_norm, src.sar_norm)
    i1, i2 = intermediate_domains(both, cfg.seed)  # one standardisation for train and val images
    y = both.labels
    m1 = source_hop(ctx, "ttl/i1", one_channel_config(cfg, ctx.tgt, "I1"), i1[:n], y[:n], (i1[n:], y[n:]),
                    carry(ctx.source()))
    m2 = source_hop(ctx, "ttl/i2", one_channel_config(cfg, ctx.tgt, "I2"), i2[:n], y[:n], (i2[n:], y[n:]),
                    carry(m1))
    pl, vpl = ctx.pseudo(cfg.step1, "tgt"), ctx.pseudo(cfg.step1, "tval")
    data = st.aux_data(ctx.tgt, pl, "sar", cfg.step1)
    vdata = st.aux_data(ctx.tval, vpl, "sar", cfg.step1) if len(ctx.tval) else None
    m3 = st.run_stage(ctx.run, "ttl/sar", st.model_config(cfg, ctx.tgt, "sar"), data,
                      st.aux_step("sar", cfg.step1.temperature, cfg.step1.lambda_kd), cfg.loop("aux"), ctx.progress,
                      extra={"baseline": "ttl", "kept": int(len(pl["kept"]))}, init=carry(m2), val=vdata)
    pred = classifier_predictor("ttl", m3, "sar", ctx.checkpoint("ttl/sar"), ctx.device)
    pred.info = {"chain": ["source", "ttl/i1", "ttl/i2", "ttl/sar"]}
    return pred
