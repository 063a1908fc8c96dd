"""The stages of the multi-step transfer, each a function over the shared loop (see ``../shared/method.md``).

- :func:`train_source` — step 0: the source model on labelled cloud-free optical.
- :func:`pseudo_label` + :func:`train_aux` — step 1: filtered pseudo-labels from the source model train the cloudy
  optical and the SAR auxiliary models (CE to the pseudo-label + KD to the source logits).
- :func:`train_target` — step 2: unfiltered three-teacher distillation into the dual-branch target, with the IRM's
  teacher weights (IRM-A) and per-sample gradient balancing (IRM-B), plus the branch distillation.

Every stage skips itself when its checkpoint exists (``RUN/<stage>/model.safetensors``) and resumes from its last
epoch when interrupted. Target labels are never read here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esccs.errors import DataError
from esccs.models import ModelConfig, create_model_from_config, load_checkpoint, save_checkpoint
from esccs.ops import irm_kd, unimodal_kd
from esccs.ops.irm_kd import irm_weights_reference
from esccs.ops.unimodal_kd.reference import kd_rows
from esccs.spec import S1_BANDS
from esccs.train.bank import Bank
from esccs.train.config import LoopConfig, Step1Config, Step2Config, TrainConfig
from esccs.train.filters import FilterConfig, select
from esccs.train.loop import Trainer


def model_config(cfg: TrainConfig, bank: Bank, kind: str) -> ModelConfig:
    """The architecture record of a stage's model: ``optical`` / ``sar`` classifier or ``dual`` target."""
    norm = {"optical": bank.opt_norm.to_dict(), "sar": bank.sar_norm.to_dict()}
    common = dict(classes=tuple(bank.classes), width=cfg.model.width, stem=cfg.model.stem, normalization=norm,
                  patch_size=int(bank.optical.shape[-1]))
    if kind == "dual":
        return ModelConfig(name=f"dual_{cfg.model.arch}", optical_bands=tuple(cfg.bands), sar_bands=S1_BANDS,
                           **common)
    if kind == "sar":
        return ModelConfig(name=cfg.model.arch, modality="sar", sar_bands=S1_BANDS, **common)
    return ModelConfig(name=cfg.model.arch, modality="optical", optical_bands=tuple(cfg.bands), **common)


def run_stage(run: Path, stage: str, mcfg: ModelConfig, data: dict, step, loop: LoopConfig, progress: bool = True,
              extra: dict | None = None, erase_range=None, init=None) -> nn.Module:
    """Train (or load, when ``run/stage/model.safetensors`` exists) one model and save its checkpoint.

    ``init(model)`` may copy weights into the fresh model before training (e.g. the optical encoder from f_S).
    """
    ckpt = Path(run) / stage / "model.safetensors"
    if ckpt.exists():
        model, _, _ = load_checkpoint(ckpt, expect=mcfg.name)
        return model.to(loop.device).eval()
    torch.manual_seed(loop.seed)
    model = create_model_from_config(mcfg)
    if init is not None:
        init(model)
    model = Trainer(model, data, step, loop, Path(run) / stage, stage, progress, erase_range).fit()
    save_checkpoint(ckpt, model.cpu(), mcfg, extra={"stage": stage, "epochs": loop.epochs, **(extra or {})})
    return model.to(loop.device).eval()


@torch.no_grad()
def predict(model: nn.Module, *inputs: torch.Tensor, batch: int = 256, device: str = "cpu") -> dict:
    """Run a classifier (one input) or a dual model (two inputs) in eval mode; returns CPU tensors.

    Returns ``{"logits": (N, K)}`` and, for a dual model, ``logits_o``, ``logits_s``, ``w_o``, ``w_s``.
    """
    model.eval().to(device)
    outs: dict[str, list] = {}
    for s in range(0, len(inputs[0]), batch):
        xs = [x[s:s + batch].to(device) for x in inputs]
        y = model(*xs)
        y = y if isinstance(y, dict) else {"logits": y}
        for k, v in y.items():
            outs.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


# ---------------------------------------------------------------------------------------------------------- step 0
def train_source(cfg: TrainConfig, src: Bank, run: Path, progress: bool = True) -> nn.Module:
    """Step 0: the source model f_S, cross-entropy on labelled cloud-free optical (source train split)."""
    train = src.where("train") if (src.split == "train").any() else src
    if (train.labels < 0).any():
        missing = int((train.labels < 0).sum())
        raise DataError(src.meta.get("root", "source"), f"the source part needs labels: {missing} of {len(train)} "
                        "training samples have none (labels.csv, IGBP_probability_labels.pkl or --labels)")

    def step(model, b):
        z = model(b["optical"])
        return F.cross_entropy(z, b["target"]), z, {}

    return run_stage(run, "source", model_config(cfg, src, "optical"), {"optical": train.optical,
                     "target": train.labels}, step, cfg.loop("source"), progress, erase_range=valid_range(src))


def init_from(optical=None, sar=None):
    """An ``init`` for :func:`run_stage`: copy encoders of trained classifiers into a fresh model.

    For a classifier, ``optical`` (or ``sar``) is copied whole (encoder and head); for a dual model the optical
    encoder comes from ``optical`` and the SAR encoder from ``sar`` (either may be ``None``: trained from scratch).
    """
    def init(model: nn.Module) -> None:
        if hasattr(model, "opt_encoder"):
            if optical is not None:
                model.opt_encoder.load_state_dict(optical.encoder.state_dict())
            if sar is not None:
                model.sar_encoder.load_state_dict(sar.encoder.state_dict())
        else:
            src = optical if optical is not None else sar
            if src is not None:
                model.load_state_dict(src.state_dict())

    return init


def valid_range(bank: Bank) -> tuple[torch.Tensor, torch.Tensor]:
    """Each optical band's valid DN range in normalised units ``(C,)``, ``(C,)`` (the random-erasing fill range)."""
    n = bank.opt_norm
    lo, hi = (torch.as_tensor((v - n.mean) / n.std) for v in n.clip)
    return lo, hi


# ---------------------------------------------------------------------------------------------------------- step 1
def pseudo_label(source: nn.Module, tgt: Bank, step1: Step1Config, device: str = "cpu") -> dict:
    """Source logits on the target's cloudy optical, pseudo-labels, and the indices the filter keeps."""
    u = predict(source, tgt.optical, device=device)["logits"]
    fcfg = FilterConfig(step1.policy, step1.tau, step1.min_per_class, step1.frac_per_class)
    kept = select(u.numpy(), fcfg)
    return {"u": u, "pseudo": u.argmax(1), "kept": torch.as_tensor(kept, dtype=torch.long)}


def aux_step(key: str, temperature: float, lambda_kd: float):
    """Step-1 loss for an auxiliary on input ``key``: CE to the pseudo-label + lambda * KD_T to the source logits."""
    def step(model, b):
        z = model(b[key])
        kd = kd_rows(z, b["teacher"], temperature).mean() if lambda_kd else z.new_zeros(())
        return F.cross_entropy(z, b["target"]) + lambda_kd * kd, z, {}

    return step


def train_aux(cfg: TrainConfig, tgt: Bank, pl: dict, run: Path, modality: str, progress: bool = True,
              stage: str | None = None, source: nn.Module | None = None) -> nn.Module:
    """Step 1: an auxiliary model (``optical``: cloudy optical; ``sar``) on the filtered pseudo-labels.

    The optical auxiliary starts from the source model's weights when ``source`` is given and
    ``step1.init_from_source`` is set; the SAR auxiliary always starts from scratch (other input).
    """
    kept = pl["kept"]
    x = (tgt.optical if modality == "optical" else tgt.sar)[kept]
    data = {modality: x, "target": pl["pseudo"][kept], "teacher": pl["u"][kept]}
    step = aux_step(modality, cfg.step1.temperature, cfg.step1.lambda_kd)
    return run_stage(run, stage or f"aux_{modality}", model_config(cfg, tgt, modality), data, step, cfg.loop("aux"),
                     progress, extra={"kept": int(len(kept))}, erase_range=valid_range(tgt),
                     init=init_from(optical=source) if modality == "optical" and cfg.step1.init_from_source else None)


# ---------------------------------------------------------------------------------------------------------- step 2
def irm_inputs(teachers: dict, s2: Step2Config) -> dict:
    """Per-sample IRM quantities from the frozen teachers, computed once: pi (N,3), rho (N,), k (N,2)."""
    pi, rho, k, ybar = irm_weights_reference(teachers["u"], teachers["a_o"], teachers["a_s"], gamma=s2.gamma,
                                             alpha=s2.alpha, k_min=s2.k_min, reference=s2.reference,
                                             score=s2.score, form=s2.form)
    if not s2.irm_b:
        k = torch.ones_like(k)
    return {"pi": pi, "rho": rho, "k": k, "ybar": ybar}


def target_step(s2: Step2Config):
    """Step-2 loss: IRM-weighted three-teacher KD + consensus CE on the fused logits, plus branch KD."""
    def step(model, b):
        k = b["k"]
        out = model(b["optical"], b["sar"], k=k if s2.irm_apply == "grad" else None)
        dec = irm_kd(out["logits"], b["u"], b["a_o"], b["a_s"], temperature=s2.temperature, gamma=s2.gamma,
                     beta=s2.beta, alpha=s2.alpha, k_min=s2.k_min, reference=s2.reference, score=s2.score,
                     form=s2.form).loss
        weights = k if s2.irm_apply == "loss" else None
        uni = unimodal_kd(out["logits_o"], out["logits_s"], b["a_o"], b["a_s"], temperature=s2.temperature,
                          weights=weights)
        return dec + s2.lambda_u * uni, out["logits"], {}

    return step


def train_target(cfg: TrainConfig, tgt: Bank, teachers: dict, run: Path, progress: bool = True,
                 stage: str = "target", init_models: tuple | None = None) -> nn.Module:
    """Step 2: the dual-branch target from all target-train samples (unfiltered unless ``step2.filter``).

    ``init_models`` = ``(f_O, f_R)``: with ``step2.init_from_teachers`` the two encoders start from theirs.
    """
    irm = irm_inputs(teachers, cfg.step2)
    idx = torch.arange(len(tgt))
    if cfg.step2.filter:
        fcfg = FilterConfig(cfg.step1.policy, cfg.step1.tau, cfg.step1.min_per_class, cfg.step1.frac_per_class)
        idx = torch.as_tensor(select(teachers["u"].numpy(), fcfg))
    data = {"optical": tgt.optical[idx], "sar": tgt.sar[idx], "u": teachers["u"][idx], "a_o": teachers["a_o"][idx],
            "a_s": teachers["a_s"][idx], "k": irm["k"][idx], "target": irm["ybar"][idx]}
    init = init_from(*init_models) if init_models and cfg.step2.init_from_teachers else None
    return run_stage(run, stage, model_config(cfg, tgt, "dual"), data, target_step(cfg.step2), cfg.loop("target"),
                     progress, extra={"mean_pi": irm["pi"].mean(0).tolist()}, init=init)


def teacher_logits(source: nn.Module, aux_o: nn.Module, aux_s: nn.Module, tgt: Bank, device: str = "cpu") -> dict:
    """The three frozen teachers' logits on target samples: u (source), a_o (optical aux), a_s (SAR aux)."""
    return {"u": predict(source, tgt.optical, device=device)["logits"],
            "a_o": predict(aux_o, tgt.optical, device=device)["logits"],
            "a_s": predict(aux_s, tgt.sar, device=device)["logits"]}


def stratum_ids(coverage: torch.Tensor) -> np.ndarray:
    """Cloud stratum names of coverage fractions."""
    from esccs.spec import cloud_stratum

    return np.array([cloud_stratum(min(max(float(c), 0.0), 1.0)) for c in coverage])


__all__ = ["model_config", "run_stage", "predict", "train_source", "pseudo_label", "train_aux", "train_target",
           "teacher_logits", "irm_inputs", "target_step", "aux_step", "stratum_ids"]
