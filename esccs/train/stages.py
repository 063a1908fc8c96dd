"""The stages of the multi-step transfer, each a function over the shared loop (see ``docs/method.md``).

- :func:`train_source` — step 0: the source model on labelled cloud-free optical.
- :func:`pseudo_label` + :func:`train_aux` — step 1: filtered pseudo-labels from the source model train the cloudy
  optical and the SAR auxiliary models (CE to the pseudo-label + KD to the source logits).
- :func:`train_target` — step 2: unfiltered three-teacher distillation into the dual-branch target, with the IRM's
  teacher weights (IRM-A) and per-sample gradient balancing (IRM-B), plus the branch distillation.

Every stage skips itself when its checkpoint exists (``RUN/<stage>/model.safetensors``) and resumes from its last
epoch when interrupted. Target labels are never read here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esccs.data.transforms import Normalizer
from esccs.errors import ConfigError, DataError
from esccs.models import ModelConfig, create_model_from_config, load_checkpoint, save_checkpoint
from esccs.ops import irm_kd, kd_rows, unimodal_kd
from esccs.ops.irm_kd import balance_from_rho, irm_weights_reference
from esccs.spec import S1_BANDS
from esccs.train import distributed as ddp
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


def checkpoint_path(run: Path, stage: str) -> Path:
    """Where a stage's model lives: ``RUN/<stage>/model.safetensors``."""
    return Path(run) / stage / "model.safetensors"


#: recipe keys one side may lack: a chain stage's round (older checkpoints did not record it) and the number of
#: rounds (only the last stage of the chain records it)
_MAY_LACK = ("step2.round", "step2.rounds")


def _recipe_differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between a saved recipe and the config's, sorted (see :func:`check_reuse`)."""
    groups_old, groups_new = {k.split(".")[0] for k in old}, {k.split(".")[0] for k in new}
    out = []
    for k in sorted(set(old) | set(new)):
        if k in old and k in new:
            if old[k] != new[k]:
                out.append(k)
        elif k not in _MAY_LACK and k.split(".")[0] in groups_old & groups_new:
            out.append(k)  # a setting of a group both record, present on one side only (added, removed)
    return out


def check_reuse(ckpt: Path, saved: ModelConfig, meta: dict, mcfg: ModelConfig, recipe: dict | None) -> None:
    """Refuse to reuse a finished stage trained with another input normaliser or another recipe.

    Every setting of a group both recipes record (``step1.*``, ``step2.*``) is compared, one that only one side has
    included; a group the checkpoint did not record at all (a stage saved before it was recorded, e.g. a step-2
    stage's step-1 settings) is not, nor ``step2.round`` / ``step2.rounds`` where one side lacks them (an
    intermediate relabelling round does not depend on the number of rounds after it).

    Raises:
        ConfigError: naming the stage folder and the first setting that differs (a checkpoint saved without a
            recipe is only checked for its normaliser).
    """
    where = ckpt.parent
    if saved.normalization != mcfg.normalization:
        raise ConfigError(f"{where}: this finished stage was trained with another input normaliser (e.g. with or "
                          "without step1.radiometric's correction); delete the folder or train into another --out")
    old = meta.get("recipe")
    differs = [] if recipe is None or old is None else _recipe_differences(old, recipe)
    if differs:
        key = differs[0]
        was = f"{key} = {old[key]!r}" if key in old else f"no {key}"
        asks = repr(recipe[key]) if key in recipe else "none (the setting is gone)"
        raise ConfigError(f"{where}: this finished stage was trained with {was}, the config asks for {asks}; "
                          "delete the folder or train into another --out")


def run_stage(run: Path, stage: str, mcfg: ModelConfig, data: dict, step, loop: LoopConfig, progress: bool = True,
              extra: dict | None = None, erase_range=None, init=None, val: dict | None = None,
              recipe: dict | None = None) -> nn.Module:
    """Train (or load, when ``run/stage/model.safetensors`` exists) one model and save its checkpoint.

    ``recipe`` (JSON-able settings that define the stage besides its architecture) is saved with it; a finished
    stage is reused only with the same normaliser and recipe (:func:`check_reuse`).

    ``init(model)`` may copy weights into the fresh model before training (e.g. the optical encoder from f_S).
    ``val`` (the same keys as ``data``) selects the checkpoint epoch (``loop.select``); the sidecar records the
    SGD steps and the selected epoch.
    """
    ckpt = checkpoint_path(run, stage)
    if ckpt.exists():
        model, saved, meta = load_checkpoint(ckpt, expect=mcfg.name)
        check_reuse(ckpt, saved, meta, mcfg, recipe)
        return model.to(loop.device).eval()
    torch.manual_seed(loop.seed)
    model = create_model_from_config(mcfg)
    if init is not None:
        init(model)
    trainer = Trainer(model, data, step, loop, Path(run) / stage, stage, progress, erase_range, val=val)
    model = trainer.fit()
    summary = trainer.summary()
    sel = f", val acc {summary['val_acc']:.3f}" if summary["val_acc"] is not None else ""
    if ddp.is_main():
        print(f"  {stage}: {summary['steps']} steps, selected epoch {summary['selected_epoch'] + 1}/"
              f"{summary['epochs']} ({summary['select']}{sel})", flush=True)
    rec = {} if recipe is None else {"recipe": recipe}
    ddp.on_main(save_checkpoint, ckpt, model.cpu(), mcfg, extra={"stage": stage, **summary, **(extra or {}), **rec})
    return model.to(loop.device).eval()


@torch.no_grad()
def predict(model: nn.Module, *inputs: torch.Tensor, batch: int = 256, device: str = "cpu") -> dict:
    """Run a classifier (one input) or a dual model (two inputs) in eval mode; returns CPU tensors.

    Returns ``{"logits": (N, K)}`` and, for a dual model, ``logits_o``, ``logits_s``, ``w_o``, ``w_s``.
    Under torchrun every rank runs its block of the rows and gets all of them back, in order
    (:func:`esccs.train.distributed.shard_range`, :func:`~esccs.train.distributed.gather_rows`).
    """
    model.eval().to(device)
    lo, hi = ddp.shard_range(len(inputs[0]))
    if ddp.active():
        inputs = tuple(x[lo:hi] for x in inputs)
    outs: dict[str, list] = {}
    for s in range(0, max(len(inputs[0]), 1), batch):  # an empty input still gives (0, K) outputs
        xs = [x[s:s + batch].to(device) for x in inputs]
        y = model(*xs)
        y = y if isinstance(y, dict) else {"logits": y}
        for k, v in y.items():
            outs.setdefault(k, []).append(v.float().cpu())
    return ddp.gather_rows({k: torch.cat(v) for k, v in outs.items()})


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

    val = src.where("val")
    return run_stage(run, "source", model_config(cfg, src, "optical"), {"optical": train.optical,
                     "target": train.labels}, step, cfg.loop("source"), progress, erase_range=valid_range(src),
                     val={"optical": val.optical, "target": val.labels} if len(val) else None)


def init_from(optical=None, sar=None, product_head: bool = False):
    """An ``init`` for :func:`run_stage`: copy encoders of trained classifiers into a fresh model.

    For a classifier, ``optical`` (or ``sar``) is copied whole (encoder and head); for a dual model the optical
    encoder comes from ``optical`` and the SAR encoder from ``sar`` (either may be ``None``: trained from scratch);
    with ``product_head`` the fused head is ``[W_O, W_R]``, ``b_O + b_R``: its logits are the sum of the two
    classifiers' logits, the (unnormalised) product of their posteriors.
    """
    def init(model: nn.Module) -> None:
        if hasattr(model, "opt_encoder"):
            if optical is not None:
                model.opt_encoder.load_state_dict(optical.encoder.state_dict())
            if sar is not None:
                model.sar_encoder.load_state_dict(sar.encoder.state_dict())
            if product_head and optical is not None and sar is not None:
                with torch.no_grad():  # z = z_O + z_R: the fused head starts as the product of the teachers
                    d_o = optical.head.weight.shape[1]
                    model.head.weight[:, :d_o] = optical.head.weight
                    model.head.weight[:, d_o:] = sar.head.weight
                    model.head.bias.copy_(optical.head.bias + sar.head.bias)
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
#: [ours] relative radiometric normalisation: target patches this clear give the target's band statistics; "auto"
#: corrects when the band means differ beyond sampling noise (mean squared z of the per-scene band-mean differences
#: above RADIOMETRIC_Z2; development data: 1.6 on plain data, 10.6 and 16.0 under a sensor + season shift) AND by
#: enough to matter (mean |difference| above RADIOMETRIC_EFFECT source standard deviations; 0.07 plain, 0.28 and
#: 0.29 shifted: z alone grows with the number of scenes); fewer than RADIOMETRIC_MIN clear patches: no correction
RADIOMETRIC_CLEAR_MAX = 0.05
RADIOMETRIC_Z2 = 4.0
RADIOMETRIC_EFFECT = 0.15
RADIOMETRIC_MIN = 10


def radiometric(src: Bank, tgt: Bank, mode: str) -> tuple[Normalizer | None, dict]:
    """[ours] The target's optical normaliser after relative radiometric normalisation, or None; and a report.

    Per band, the pixel mean and std of target-train's clear patches (cloud cover <= :data:`RADIOMETRIC_CLEAR_MAX`,
    from the mask; never labels) are mapped onto those of the source-train images: ``y' = a y + c`` on normalised
    values with ``a = sd_S / sd_T``, ``c = mu_S - a mu_T``, folded into a :class:`Normalizer` (``std / a``,
    ``mean - c std / a``) so a model trained on it carries the correction into export and inference. ``mode``:
    ``"clear"`` corrects whenever there are enough clear patches, ``"auto"`` only when the band means
    differ beyond sampling noise: with band means per scene (patches of one scene overlap, so they are not
    independent draws), ``z_b = (mean_T - mean_S) / sqrt(var_T / n_T + var_S / n_S)`` and ``mean_b z_b^2 >``
    :data:`RADIOMETRIC_Z2`, and by enough to matter: the mean ``|mean_T - mean_S| / sd_S`` over bands >
    :data:`RADIOMETRIC_EFFECT`; ``"none"`` never. The statistics come from ``tgt`` as given (the fit part of
    target-train).
    """
    report: dict = {"mode": mode, "applied": False}
    if mode == "none":
        return None, report
    s = src.where("train") if (src.split == "train").any() else src
    t = tgt.subset(torch.nonzero(tgt.coverage <= RADIOMETRIC_CLEAR_MAX).flatten())
    report.update(clear_patches=len(t), source_patches=len(s))
    if len(t) < RADIOMETRIC_MIN or len(s) < RADIOMETRIC_MIN:
        report["why"] = f"fewer than {RADIOMETRIC_MIN} clear target-train patches"
        return None, report
    ms, mt = _scene_means(s), _scene_means(t)  # (scenes, C): patches of one scene overlap
    report.update(source_scenes=len(ms), clear_scenes=len(mt))
    mu_s, sd_s = _band_moments(s.optical)
    mu_t, sd_t = _band_moments(t.optical)
    sd_t = sd_t.clamp_min(1e-6)
    z = (mt.mean(0) - ms.mean(0)) / (mt.var(0) / len(mt) + ms.var(0) / len(ms)).sqrt().clamp_min(1e-12)
    report["mean_z2"] = round(float((z ** 2).mean()), 3)
    report["effect"] = round(float(((mu_t - mu_s).abs() / sd_s.clamp_min(1e-6)).mean()), 3)
    if mode == "auto" and (report["mean_z2"] <= RADIOMETRIC_Z2 or report["effect"] <= RADIOMETRIC_EFFECT):
        report["why"] = (f"band means agree (mean z^2 {report['mean_z2']}, limit {RADIOMETRIC_Z2}; mean |difference| "
                         f"{report['effect']} sd, limit {RADIOMETRIC_EFFECT})")
        return None, report
    a = (sd_s / sd_t).numpy()
    c = (mu_s - sd_s / sd_t * mu_t).numpy()
    norm = tgt.opt_norm
    folded = Normalizer(norm.bands, (norm.mean - c * norm.std / a).astype(np.float32),
                        (norm.std / a).astype(np.float32), norm.clip)
    report.update(applied=True, gain=[round(float(v), 4) for v in a], offset=[round(float(v), 4) for v in c])
    return folded, report


def _band_moments(x: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band pixel mean and std of ``(N, C, H, W)`` images, accumulated in float64 a chunk at a time."""
    n, c = 0, x.shape[1]
    s1, s2 = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        b = x[i:i + chunk].double()
        s1 += b.sum((0, 2, 3))
        s2 += (b ** 2).sum((0, 2, 3))
        n += b.numel() // c
    mean = s1 / max(n, 1)
    var = (s2 / max(n, 1) - mean ** 2) * n / max(n - 1, 1)
    return mean, var.clamp_min(0).sqrt()


def _scene_means(bank: Bank) -> torch.Tensor:
    """Band means per scene group ``(G, C)`` of ``bank.optical`` (per patch without groups)."""
    m = torch.cat([bank.optical[i:i + 256].double().mean((2, 3)) for i in range(0, len(bank), 256)])
    if bank.groups is None or len(m) < 2:
        return m
    keys, inv = np.unique(bank.groups, return_inverse=True)
    if len(keys) < 2:
        return m
    inv = torch.as_tensor(inv)
    sums = torch.zeros(len(keys), m.shape[1], dtype=m.dtype).index_add_(0, inv, m)
    return sums / torch.bincount(inv, minlength=len(keys)).unsqueeze(1).to(m.dtype)


def pseudo_label(source: nn.Module, tgt: Bank, step1: Step1Config, device: str = "cpu",
                 logits: torch.Tensor | None = None) -> dict:
    """Teacher logits on the target, pseudo-labels, and the indices the filter keeps.

    The logits are f_S's on the cloudy optical unless ``logits`` are given.

    With ``step1.cloud_max < 1`` (cloud-aware step 1) samples above that cloud cover get no hard pseudo-label:
    ``kept`` holds only visible-enough samples, ``clouded`` the others (soft targets for f_O when
    ``step1.clouded == "soft"``).
    """
    u = predict(source, tgt.optical, device=device)["logits"] if logits is None else logits
    fcfg = FilterConfig(step1.policy, step1.tau, step1.min_per_class, step1.frac_per_class, step1.q)
    visible = (tgt.coverage <= step1.cloud_max).numpy()
    vis_idx = np.flatnonzero(visible)
    kept = vis_idx[select(u.numpy()[vis_idx], fcfg)] if len(vis_idx) else vis_idx
    return {"u": u, "pseudo": u.argmax(1), "kept": torch.as_tensor(kept, dtype=torch.long),
            "clouded": torch.as_tensor(np.flatnonzero(~visible), dtype=torch.long)}


def aux_step(key: str, temperature: float, lambda_kd: float):
    """Step-1 loss for an auxiliary on input ``key``: CE to the pseudo-label + lambda * KD_T to the teacher logits.

    Rows whose ``target`` is -1 carry no hard label (a clouded patch with a soft target): they add only the KD
    term, whose teacher row is then all zeros (a uniform distribution). The CE is summed over labelled rows and
    divided by the batch size, which is the plain mean when every row is labelled.
    """
    def step(model, b):
        z = model(b[key])
        t = b["target"]
        kd = kd_rows(z, b["teacher"], temperature).mean() if lambda_kd else z.new_zeros(())
        if bool((t < 0).any()):
            ce = F.cross_entropy(z, t.clamp_min(0), reduction="none")
            ce = (ce * (t >= 0)).sum() / len(z)
        else:
            ce = F.cross_entropy(z, t)
        return ce + lambda_kd * kd, z, {}

    return step


def aux_data(bank: Bank, pl: dict, modality: str, step1: Step1Config) -> dict:
    """The training tensors of an auxiliary: kept pseudo-labelled samples (+ clouded ones with soft targets)."""
    kept = pl["kept"]
    target, teacher = pl["pseudo"][kept], pl["u"][kept]
    if modality == "optical" and step1.clouded == "soft" and len(pl["clouded"]):
        c = pl["clouded"]
        kept = torch.cat([kept, c])
        target = torch.cat([target, torch.full((len(c),), -1, dtype=target.dtype)])
        teacher = torch.cat([teacher, torch.zeros(len(c), teacher.shape[1], dtype=teacher.dtype)])
    x = (bank.optical if modality == "optical" else bank.sar)[kept]
    return {modality: x, "target": target, "teacher": teacher}


def simulated_clouds(bank: Bank, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cloudy versions of ``bank.optical`` (normalised) and their realised cloud cover.

    Clouds are rendered on raw DN by the generator's cloud model, coverage uniform in [0, 1] and a random preset
    per image, drawn from ``rng`` (also the SPL baseline's clouds).
    """
    from esccs.data.clouds import CLOUD_PRESETS, simulate_clouds

    norm = bank.opt_norm
    presets = sorted(CLOUD_PRESETS)
    raw = bank.optical.numpy() * norm.std[:, None, None] + norm.mean[:, None, None]
    images, cover = [], []
    for img in raw:
        res = simulate_clouds(img, float(rng.uniform(0.0, 1.0)), rng, presets[int(rng.integers(len(presets)))],
                              band_names=norm.bands)
        images.append(norm(res.image))
        cover.append(float(res.coverage))
    return torch.from_numpy(np.stack(images)), torch.tensor(cover, dtype=torch.float32)


def source_cloud_data(src: Bank, source: nn.Module, step1: Step1Config, seed: int, device: str = "cpu",
                      split: str = "train") -> dict:
    """[ours] f_O's extra training or validation rows: labelled source images of ``split`` under simulated clouds.

    CE to the source label and KD to f_S's logits on the clear image; rows above ``cloud_max`` get the soft
    (uniform) target instead. The validation rows score f_O against true source labels under clouds, which the
    held-out target pseudo-labels (f_S's, blind to clouds) cannot.
    """
    train = src.where(split) if (src.split == split).any() else (src if split == "train" else src.empty())
    if not len(train):
        return {}
    x, cover = simulated_clouds(train, np.random.default_rng([seed + (0 if split == "train" else 1), 11]))
    teacher = predict(source, train.optical, device=device)["logits"]
    target = train.labels.clone()
    if step1.clouded == "soft":
        hidden = cover > step1.cloud_max
        target[hidden] = -1
        teacher[hidden] = 0.0
    return {"optical": x, "target": target, "teacher": teacher}


def step1_recipe(cfg: TrainConfig) -> dict:
    """The step-1 settings that define a stage (the radiometric correction is in its normaliser, checked apart)."""
    return {f"step1.{k}": v for k, v in dataclasses.asdict(cfg.step1).items() if k != "radiometric"}


def step2_recipe(cfg: TrainConfig, round_: int | None = None) -> dict:
    """The settings that define a step-2 stage: step 1's (its teachers) and step 2's.

    With ``round_`` = r (a stage of ESCCS's relabelling chain), ``step2.round`` = r is recorded, and
    ``step2.rounds`` only for the last round: round r's model is the same whatever the number of rounds after it.
    """
    rec = {**step1_recipe(cfg), **{f"step2.{k}": v for k, v in dataclasses.asdict(cfg.step2).items()}}
    if round_ is not None:
        rec["step2.round"] = round_
        if round_ != cfg.step2.rounds:
            del rec["step2.rounds"]
    return rec


def train_aux(cfg: TrainConfig, tgt: Bank, pl: dict, run: Path, modality: str, progress: bool = True,
              stage: str | None = None, source: nn.Module | None = None, val: tuple[Bank, dict] | None = None,
              init: nn.Module | None = None, extra_rows: dict | None = None,
              extra_val: dict | None = None, recipe: dict | None = None) -> nn.Module:
    """Step 1: an auxiliary model (``optical``: cloudy optical; ``sar``) on the filtered pseudo-labels.

    The optical auxiliary starts from the source model's weights when ``source`` is given and
    ``step1.init_from_source`` is set; the SAR auxiliary starts from scratch (other input), unless ``init`` (a
    trained model of the same kind, e.g. the previous relabelling round's) is given. ``val`` = (held-out bank, its
    pseudo-labels) selects the checkpoint. ``extra_rows`` / ``extra_val`` (same keys) are added to the training /
    validation rows. ``recipe`` (default: :func:`step1_recipe`) is what the stage is reused under; a relabelling
    round's auxiliary passes its round's :func:`step2_recipe` (its labels come from that round's target).
    """
    data = aux_data(tgt, pl, modality, cfg.step1)
    if extra_rows:
        data = {k: torch.cat([v, extra_rows[k]]) for k, v in data.items()}
    step = aux_step(modality, cfg.step1.temperature, cfg.step1.lambda_kd)
    if init is not None:
        init_fn = init_from(optical=init) if modality == "optical" else init_from(sar=init)
    else:
        init_fn = init_from(optical=source) if modality == "optical" and cfg.step1.init_from_source else None
    vdata = aux_data(val[0], val[1], modality, cfg.step1) if val is not None and len(val[0]) else None
    if extra_val:
        vdata = {k: torch.cat([v, extra_val[k]]) for k, v in vdata.items()} if vdata else extra_val
    recipe = step1_recipe(cfg) if recipe is None else recipe
    return run_stage(run, stage or f"aux_{modality}", model_config(cfg, tgt, modality), data, step, cfg.loop("aux"),
                     progress, extra={"kept": int(len(pl["kept"]))}, erase_range=valid_range(tgt), init=init_fn,
                     val=vdata, recipe=recipe)


# ---------------------------------------------------------------------------------------------------------- step 2
def modality_weights(teachers: dict, coverage: torch.Tensor, s2: Step2Config, eps: float = 1e-6) -> tuple:
    """[ours] IRM with one vote per modality, the optical vote scaled by the visible fraction ``1 - cover``.

    ``q_opt = (p^S + p^O) / 2`` (the optical modality's vote), ``q_sar = p^R``; reference label
    ``ybar = argmax(v q_opt + q_sar)`` with ``v = 1 - cover``; contributions ``c_opt = v q_opt[ybar]``,
    ``c_sar = q_sar[ybar]``; teacher weights ``pi^S = pi^O = c_opt^g / 2Z``, ``pi^R = c_sar^g / Z``; ``rho`` and
    ``k`` as docs/method.md, except that the SAR branch is damped only as far as the optical image is visible
    (``k_s <- 1 - v (1 - k_s)``): under full cloud there is nothing for the optical branch to catch up on.
    """
    p = [t.float().softmax(1) for t in (teachers["u"], teachers["a_o"], teachers["a_s"])]
    v = (1 - coverage.float().clamp(0, 1)).unsqueeze(1)
    q_opt, q_sar = (p[0] + p[1]) / 2, p[2]
    ybar = (v * q_opt + q_sar).argmax(1)
    c_opt = (v * q_opt).gather(1, ybar[:, None])[:, 0]
    c_sar = q_sar.gather(1, ybar[:, None])[:, 0]
    g = s2.gamma
    w_opt, w_sar = c_opt.clamp_min(0) ** g, c_sar ** g
    z = (w_opt + w_sar).clamp_min(1e-12)
    pi = torch.stack([w_opt / (2 * z), w_opt / (2 * z), w_sar / z], 1)
    rho = (c_opt + eps) / (c_sar + eps)
    k = balance_from_rho(rho, alpha=s2.alpha, k_min=s2.k_min, form=s2.form)
    k[:, 1] = 1 - v[:, 0] * (1 - k[:, 1])
    k[:, 0] = k[:, 0] * v[:, 0].clamp_min(s2.k_min)  # the fused path barely trains the optical branch on cloud
    return pi, rho, k, ybar


def irm_inputs(teachers: dict, s2: Step2Config, coverage: torch.Tensor | None = None) -> dict:
    """Per-sample IRM quantities from the frozen teachers, computed once: pi (N,3), rho (N,), k (N,2), ybar (N,)."""
    if s2.vote == "modality":
        if coverage is None:
            coverage = torch.zeros(len(teachers["u"]))
        pi, rho, k, ybar = modality_weights(teachers, coverage, s2)
    else:
        pi, rho, k, ybar = irm_weights_reference(teachers["u"], teachers["a_o"], teachers["a_s"], gamma=s2.gamma,
                                                 alpha=s2.alpha, k_min=s2.k_min, reference=s2.reference,
                                                 score=s2.score, form=s2.form)
    if not s2.irm_b:
        k = torch.ones_like(k)
    return {"pi": pi, "rho": rho, "k": k, "ybar": ybar}


#: [ours] teacher calibration: held-out patches at most this clouded carry f_S's pseudo-labels for the fit; fewer
#: than CALIBRATE_MIN of them leave the teachers as they are; temperatures searched on a log grid over this range
CALIBRATE_MAX_COVER = 0.25
CALIBRATE_MIN = 10
CALIBRATE_RANGE = (0.2, 10.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 81) -> float:
    """The temperature T in :data:`CALIBRATE_RANGE` minimising ``CE(logits / T, labels)`` (log grid, ties: lowest)."""
    grid = torch.logspace(np.log10(CALIBRATE_RANGE[0]), np.log10(CALIBRATE_RANGE[1]), steps, dtype=torch.float64)
    z = logits.double()
    nll = torch.stack([F.cross_entropy(z / t, labels) for t in grid])
    return float(grid[int(nll.argmin())])


def calibrate_teachers(held: dict, coverage: torch.Tensor) -> dict:
    """[ours] ``{"a_o": T_O, "a_s": T_R}`` fitted on held-out teacher logits against f_S's argmax (visible patches).

    The labels are step 1's pseudo-labels (``held["u"].argmax(1)``) on held-out patches with cloud cover at most
    :data:`CALIBRATE_MAX_COVER`: no target label is read. Too few such patches: both temperatures 1.
    """
    keep = coverage <= CALIBRATE_MAX_COVER
    if int(keep.sum()) < CALIBRATE_MIN:
        return {"a_o": 1.0, "a_s": 1.0}
    y = held["u"][keep].argmax(1)
    return {k: fit_temperature(held[k][keep], y) for k in ("a_o", "a_s")}


def tempered(teachers: dict, temps: dict) -> dict:
    """The teachers' logits divided by their temperatures (keys without one are kept)."""
    return {k: (v / temps[k] if k in temps else v) for k, v in teachers.items()}


def pooled_logits(teachers: dict, coverage: torch.Tensor) -> torch.Tensor:
    """[ours] Log-linear pool of the modalities: ``v log p^O + log p^R`` with ``v = 1 - cover``.

    The product of the modalities' posteriors is the Bayes fusion when optical and SAR are independent given the
    class; the optical modality's log-posterior counts as far as the image is visible. The optical modality speaks
    through f_O alone: f_S is blind to clouds, and what it knows of the clear scene is in f_O (trained from it).
    """
    v = (1 - coverage.float().clamp(0, 1)).unsqueeze(1)
    return v * teachers["a_o"].float().log_softmax(1) + teachers["a_s"].float().log_softmax(1)


def regulated_kd(z: torch.Tensor, b: dict, temperature: float, beta: float) -> torch.Tensor:
    """``mean_i [sum_m pi_im KD_T(z_i, t_im) + beta CE(z_i, ybar_i)]`` with precomputed ``pi`` and ``ybar``."""
    pi = b["pi"]
    kd = pi[:, 0] * kd_rows(z, b["u"], temperature) + pi[:, 1] * kd_rows(z, b["a_o"], temperature) + \
        pi[:, 2] * kd_rows(z, b["a_s"], temperature)
    return (kd + beta * F.cross_entropy(z, b["target"], reduction="none")).mean()


def target_step(s2: Step2Config):
    """Step-2 loss: IRM-weighted three-teacher KD + consensus CE on the fused logits, plus branch KD.

    ``vote="teacher"`` is docs/method.md's recipe through the fused ``irm_kd`` op (weights recomputed per batch from
    the teachers); ``vote="modality"`` uses the per-sample weights precomputed by :func:`modality_weights`.
    """
    def step(model, b):
        k = b["k"]
        out = model(b["optical"], b["sar"], k=k if s2.irm_apply == "grad" else None)
        if s2.vote == "modality" and s2.fusion == "product":
            dec = (kd_rows(out["logits"], b["pooled"], s2.temperature)
                   + s2.beta * F.cross_entropy(out["logits"], b["target"], reduction="none")).mean()
        elif s2.vote == "modality":
            dec = regulated_kd(out["logits"], b, s2.temperature, s2.beta)
        else:
            dec = irm_kd(out["logits"], b["u"], b["a_o"], b["a_s"], temperature=s2.temperature, gamma=s2.gamma,
                         beta=s2.beta, alpha=s2.alpha, k_min=s2.k_min, reference=s2.reference, score=s2.score,
                         form=s2.form).loss
        weights = k if s2.irm_apply == "loss" else None
        uni = unimodal_kd(out["logits_o"], out["logits_s"], b["a_o"], b["a_s"], temperature=s2.temperature,
                          weights=weights)
        return dec + s2.lambda_u * uni, out["logits"], {}

    return step


def target_data(cfg: TrainConfig, bank: Bank, teachers: dict) -> tuple[dict, dict]:
    """Step-2 tensors of a bank (all samples unless ``step2.filter``) and its IRM quantities."""
    irm = irm_inputs(teachers, cfg.step2, bank.coverage)
    idx = torch.arange(len(bank))
    if cfg.step2.filter:
        s1 = cfg.step1
        fcfg = FilterConfig(s1.policy, s1.tau, s1.min_per_class, s1.frac_per_class, s1.q)
        idx = torch.as_tensor(select(teachers["u"].numpy(), fcfg))
    data = {"optical": bank.optical[idx], "sar": bank.sar[idx], "u": teachers["u"][idx],
            "a_o": teachers["a_o"][idx], "a_s": teachers["a_s"][idx], "k": irm["k"][idx],
            "target": irm["ybar"][idx], "pi": irm["pi"][idx]}
    if cfg.step2.vote == "modality" and cfg.step2.fusion == "product":
        pooled = pooled_logits(teachers, bank.coverage)
        data.update(pooled=pooled[idx], target=pooled.argmax(1)[idx])
    return data, irm


def train_target(cfg: TrainConfig, tgt: Bank, teachers: dict, run: Path, progress: bool = True,
                 stage: str = "target", init_models: tuple | None = None,
                 val: tuple[Bank, dict] | None = None, recipe: dict | None = None) -> nn.Module:
    """Step 2: the dual-branch target from all target-train samples (unfiltered unless ``step2.filter``).

    ``init_models`` = ``(f_O, f_R)``: with ``step2.init_from_teachers`` the two encoders start from theirs.
    ``val`` = (held-out bank, its teacher logits) selects the epoch against the held-out reference labels.
    ``recipe`` (default: :func:`step2_recipe`) is what the stage is reused under.
    """
    data, irm = target_data(cfg, tgt, teachers)
    vdata = target_data(cfg, val[0], val[1])[0] if val is not None and len(val[0]) else None
    init = init_from(*init_models) if init_models and cfg.step2.init_from_teachers else None
    if init is not None and cfg.step2.vote == "modality" and cfg.step2.fusion == "product":
        init = init_from(*init_models, product_head=True)
    recipe = step2_recipe(cfg) if recipe is None else recipe
    return run_stage(run, stage, model_config(cfg, tgt, "dual"), data, target_step(cfg.step2), cfg.loop("target"),
                     progress, extra={"mean_pi": irm["pi"].mean(0).tolist()}, init=init, val=vdata, recipe=recipe)


def teacher_logits(source: nn.Module, aux_o: nn.Module, aux_s: nn.Module, tgt: Bank, device: str = "cpu") -> dict:
    """The three frozen teachers' logits on target samples: u (source), a_o (optical aux), a_s (SAR aux)."""
    return {"u": predict(source, tgt.optical, device=device)["logits"],
            "a_o": predict(aux_o, tgt.optical, device=device)["logits"],
            "a_s": predict(aux_s, tgt.sar, device=device)["logits"]}


def stratum_ids(coverage: torch.Tensor) -> np.ndarray:
    """Cloud stratum names of coverage fractions."""
    from esccs.spec import cloud_stratum

    return np.array([cloud_stratum(min(max(float(c), 0.0), 1.0)) for c in coverage])


__all__ = ["model_config", "run_stage", "checkpoint_path", "predict", "train_source", "pseudo_label", "train_aux",
           "aux_data", "radiometric", "calibrate_teachers", "fit_temperature", "tempered",
           "train_target", "target_data", "teacher_logits", "irm_inputs", "modality_weights",
           "regulated_kd", "target_step", "aux_step", "stratum_ids"]
