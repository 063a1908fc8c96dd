"""Recipes: ESCCS, its ablations and the baselines, each a short composition of the stages.

A recipe takes a :class:`Context` (config, run folder, banks, cached shared stages) and returns a :class:`Predictor`
that maps a bank to logits (plus diagnostics for dual models). Shared stages (source model, step-1 pseudo-labels,
auxiliaries, teacher logits) are trained once per run folder and reused by every recipe that needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from esccs.train import stages as st
from esccs.train.bank import Bank
from esccs.train.config import TrainConfig
from esccs.train.filters import FilterConfig, select


@dataclass
class Predictor:
    """How a trained method classifies a bank: ``fn(bank) -> {"logits": (N, K), ...diagnostics}``."""

    name: str
    fn: Callable[[Bank], dict]
    checkpoint: Path | None = None
    kind: str = "optical"  # optical | sar | dual | pipeline
    info: dict = field(default_factory=dict)


@dataclass
class Context:
    """What every recipe of one run shares: config, run folder, data, and the shared stages (trained lazily)."""

    cfg: TrainConfig
    run: Path
    src: Bank
    tgt: Bank  # target train split: cloudy optical + SAR, labels held back
    progress: bool = True
    cache: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        """Training device."""
        return self.cfg.device

    def source(self):
        """Step 0 (cached)."""
        if "source" not in self.cache:
            self.cache["source"] = st.train_source(self.cfg, self.src, self.run, self.progress)
        return self.cache["source"]

    def step1(self, policy: str | None = None) -> dict:
        """Pseudo-labels and both auxiliaries (cached per filter policy); writes the filter report."""
        policy = policy or self.cfg.step1.policy
        key = f"step1:{policy}"
        if key not in self.cache:
            s1 = dataclasses.replace(self.cfg.step1, policy=policy)
            pl = st.pseudo_label(self.source(), self.tgt, s1, self.device)
            suffix = "" if policy == self.cfg.step1.policy else f"_{policy}"
            cfg = dataclasses.replace(self.cfg, step1=s1)
            self.cache[key] = {
                "pl": pl,
                "aux_o": st.train_aux(cfg, self.tgt, pl, self.run, "optical", self.progress, f"aux_optical{suffix}",
                                      source=self.source()),
                "aux_s": st.train_aux(cfg, self.tgt, pl, self.run, "sar", self.progress, f"aux_sar{suffix}"),
            }
        return self.cache[key]

    def teachers(self, policy: str | None = None) -> dict:
        """The three teachers' logits on the target train split (cached)."""
        key = f"teachers:{policy or self.cfg.step1.policy}"
        if key not in self.cache:
            s1 = self.step1(policy)
            self.cache[key] = st.teacher_logits(self.source(), s1["aux_o"], s1["aux_s"], self.tgt, self.device)
        return self.cache[key]


def classifier_predictor(name: str, model, kind: str, ckpt: Path | None, device: str = "cpu") -> Predictor:
    """A predictor for a single-input classifier (``optical`` or ``sar`` input)."""
    return Predictor(name, lambda b: st.predict(model, b.optical if kind == "optical" else b.sar, device=device),
                     ckpt, kind)


def dual_predictor(name: str, model, ckpt: Path | None, device: str = "cpu") -> Predictor:
    """A predictor for a dual-branch target model (logits plus z^o, z^s and modality weights)."""
    return Predictor(name, lambda b: st.predict(model, b.optical, b.sar, device=device), ckpt, "dual")


# ------------------------------------------------------------------------------------------------------ ESCCS family
def esccs(ctx: Context, stage: str = "target", policy: str | None = None, **step2) -> Predictor:
    """ESCCS: source -> filtered step 1 (two auxiliaries) -> IRM-regulated three-teacher step 2."""
    cfg = dataclasses.replace(ctx.cfg, step2=dataclasses.replace(ctx.cfg.step2, **step2))
    s1 = ctx.step1(policy)
    model = st.train_target(cfg, ctx.tgt, ctx.teachers(policy), ctx.run, ctx.progress, stage,
                            init_models=(s1["aux_o"], s1["aux_s"]))
    return dual_predictor(stage, model, ctx.run / stage / "model.safetensors", ctx.device)


ABLATIONS: dict[str, dict] = {
    "no-irm": {"gamma": 0.0, "irm_b": False},  # uniform teacher weights, no gradient balancing
    "irm-a": {"irm_b": False},  # teacher weights only
    "irm-b": {"gamma": 0.0},  # gradient balancing only
    "no-filter": {"policy": "none"},  # step-1 pseudo-labels unfiltered
    "maxprob-filter": {"policy": "maxprob"},  # method.md's confidence threshold (tau) + class floor
    "step2-filter": {"filter": True},  # filter step 2 too (the paper says worse)
    "source-ref": {"reference": "source"},  # reference label from the source model only
}


def ablation(ctx: Context, name: str) -> Predictor:
    """An ESCCS ablation from :data:`ABLATIONS`, or ``single-step`` (f_S -> f_T directly, no auxiliaries)."""
    if name == "single-step":
        return single_step(ctx)
    opts = dict(ABLATIONS[name])
    return esccs(ctx, stage=f"ablation_{name}", **opts)


def single_step(ctx: Context) -> Predictor:
    """f_S -> f_T in one step: the source is the only teacher (no auxiliaries, no IRM)."""
    u = st.predict(ctx.source(), ctx.tgt.optical, device=ctx.device)["logits"]
    cfg = dataclasses.replace(ctx.cfg, step2=dataclasses.replace(ctx.cfg.step2, gamma=0.0, irm_b=False))
    model = st.train_target(cfg, ctx.tgt, {"u": u, "a_o": u, "a_s": u}, ctx.run, ctx.progress, "ablation_single-step",
                            init_models=(ctx.source(), None))
    return dual_predictor("ablation_single-step", model, ctx.run / "ablation_single-step" / "model.safetensors",
                          ctx.device)


# ---------------------------------------------------------------------------------------------- simple baselines
def optical_only(ctx: Context) -> Predictor:
    """The step-1 cloudy-optical auxiliary f_O alone."""
    return classifier_predictor("aux_optical", ctx.step1()["aux_o"], "optical",
                                ctx.run / "aux_optical" / "model.safetensors", ctx.device)


def sar_only(ctx: Context) -> Predictor:
    """The step-1 SAR auxiliary f_R alone."""
    return classifier_predictor("aux_sar", ctx.step1()["aux_s"], "sar", ctx.run / "aux_sar" / "model.safetensors",
                                ctx.device)


def source_only(ctx: Context) -> Predictor:
    """The source model applied to cloudy optical (no transfer): the floor every method must beat."""
    return classifier_predictor("source", ctx.source(), "optical", ctx.run / "source" / "model.safetensors",
                                ctx.device)


def kd_s(ctx: Context) -> Predictor:
    """KD-S: optical student on cloudy optical, CE(argmax u) + KD_T(z, u), no filter."""
    u = st.predict(ctx.source(), ctx.tgt.optical, device=ctx.device)["logits"]
    data = {"optical": ctx.tgt.optical, "target": u.argmax(1), "teacher": u}
    step = st.aux_step("optical", ctx.cfg.step1.temperature, 1.0)
    model = st.run_stage(ctx.run, "kd-s", st.model_config(ctx.cfg, ctx.tgt, "optical"), data, step,
                         ctx.cfg.loop("aux"), ctx.progress, erase_range=st.valid_range(ctx.tgt),
                         init=st.init_from(optical=ctx.source()))
    return classifier_predictor("kd-s", model, "optical", ctx.run / "kd-s" / "model.safetensors", ctx.device)


def dual_pseudo_step(temperature: float):
    """CE to the pseudo-label + KD_T to the source logits on the fused logits of a dual model."""
    from esccs.ops.unimodal_kd.reference import kd_rows

    def step(model, b):
        z = model(b["optical"], b["sar"])["logits"]
        return F.cross_entropy(z, b["target"]) + kd_rows(z, b["teacher"], temperature).mean(), z, {}

    return step


def tlf(ctx: Context) -> Predictor:
    """TLF: dual-branch concatenation fusion, CE(pseudo-label) + KD from f_S on all samples, no imbalance handling."""
    u = st.predict(ctx.source(), ctx.tgt.optical, device=ctx.device)["logits"]
    data = {"optical": ctx.tgt.optical, "sar": ctx.tgt.sar, "target": u.argmax(1), "teacher": u}
    model = st.run_stage(ctx.run, "tlf", st.model_config(ctx.cfg, ctx.tgt, "dual"), data,
                         dual_pseudo_step(ctx.cfg.step1.temperature), ctx.cfg.loop("target"), ctx.progress,
                         init=st.init_from(optical=ctx.source()))
    return dual_predictor("tlf", model, ctx.run / "tlf" / "model.safetensors", ctx.device)


def tlf_late(ctx: Context) -> Predictor:
    """TLF-late: decision fusion, the mean of the two auxiliaries' softmax outputs."""
    s1 = ctx.step1()

    def fn(b: Bank) -> dict:
        po = st.predict(s1["aux_o"], b.optical, device=ctx.device)["logits"].softmax(1)
        ps = st.predict(s1["aux_s"], b.sar, device=ctx.device)["logits"].softmax(1)
        return {"logits": torch.log((po + ps) / 2 + 1e-12)}

    return Predictor("tlf-late", fn, None, "pipeline", {"components": ["aux_optical", "aux_sar"]})


def kdhn(ctx: Context, rounds: int = 2) -> Predictor:
    """KDHN: the dual-input target trained straight from f_S with filtered pseudo-labels + KD, recursive rounds."""
    teacher = st.predict(ctx.source(), ctx.tgt.optical, device=ctx.device)["logits"]
    s1 = ctx.cfg.step1
    fcfg = FilterConfig(s1.policy, s1.tau, s1.min_per_class, s1.frac_per_class)
    model = None
    for r in range(rounds):
        kept = torch.as_tensor(select(teacher.numpy(), fcfg))
        data = {"optical": ctx.tgt.optical[kept], "sar": ctx.tgt.sar[kept], "target": teacher.argmax(1)[kept],
                "teacher": teacher[kept]}
        stage = f"kdhn_r{r + 1}"
        model = st.run_stage(ctx.run, stage, st.model_config(ctx.cfg, ctx.tgt, "dual"), data,
                             dual_pseudo_step(s1.temperature), ctx.cfg.loop("target"), ctx.progress,
                             init=st.init_from(optical=ctx.source()))
        teacher = st.predict(model, ctx.tgt.optical, ctx.tgt.sar, device=ctx.device)["logits"]  # recursive relabel
    return dual_predictor("kdhn", model, ctx.run / f"kdhn_r{rounds}" / "model.safetensors", ctx.device)


def _baseline(module: str, fn: str) -> Callable[[Context], Predictor]:
    def run(ctx: Context) -> Predictor:
        import importlib

        return getattr(importlib.import_module(f"esccs.train.baselines.{module}"), fn)(ctx)

    return run


#: method name -> recipe. ``esccs train --method all`` runs every one of these.
METHODS: dict[str, Callable[[Context], Predictor]] = {
    "esccs": esccs, "source-only": source_only, "optical-only": optical_only, "sar-only": sar_only,
    "kd-s": kd_s, "tlf": tlf, "tlf-late": tlf_late, "kdhn": kdhn,
    "spl": _baseline("spl", "spl"), "ttl": _baseline("ttl", "ttl"), "cycit": _baseline("cycit", "cycit"),
    "gdl": _baseline("gdl", "gdl"),
}
ABLATION_NAMES: tuple[str, ...] = (*ABLATIONS, "single-step")
