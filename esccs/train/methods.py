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

from esccs.ops import kd_rows
from esccs.train import distributed as ddp
from esccs.train import stages as st
from esccs.train.bank import Bank
from esccs.train.config import Step1Config, TrainConfig
from esccs.train.filters import FilterConfig, select


@dataclass
class Predictor:
    """How a trained method classifies a bank: ``fn(bank) -> {"logits": (N, K), ...diagnostics}``."""

    name: str
    fn: Callable[[Bank], dict]
    checkpoint: Path | None = None
    kind: str = "optical"  # optical | sar | dual | pipeline
    info: dict = field(default_factory=dict)
    irm: tuple | None = None  # (config, f_O, f_R) of an ESCCS-family model: the IRM diagnostics on the test split
    oracle: bool = False  # trained WITH target labels: an upper bound, never a method
    prepare: Callable[[Bank], Bank] | None = None  # what ``fn`` does to a bank first (the IRM diagnostics need it)


#: [ours] stage-folder suffix of the step-1 models trained on radiometrically corrected target banks
RADIOMETRIC_SUFFIX = "_rad"


@dataclass
class Context:
    """What every recipe of one run shares: config, run folder, data, and the shared stages (trained lazily).

    ``tgt`` is the part of target-train the models fit, ``tval`` its scene-grouped held-out part (labels hidden
    in both) that selects target-stage checkpoints against the stage's own pseudo-labels / teachers.
    """

    cfg: TrainConfig
    run: Path
    src: Bank
    tgt: Bank  # target train split (fit part): cloudy optical + SAR, labels held back
    progress: bool = True
    cache: dict = field(default_factory=dict)
    tval: Bank | None = None  # held-out part of target-train, labels held back
    fixed: Callable[[Bank], Bank] | None = None  # set on a radiometrically corrected context: the map it applied

    def __post_init__(self) -> None:
        if self.tval is None:
            self.tval = self.tgt.empty()

    @property
    def device(self) -> str:
        """Training device."""
        return self.cfg.device

    def checkpoint(self, stage: str) -> Path:
        """``RUN/<stage>/model.safetensors``."""
        return st.checkpoint_path(self.run, stage)

    def source(self):
        """Step 0 (cached)."""
        if "source" not in self.cache:
            self.cache["source"] = st.train_source(self.cfg, self.src, self.run, self.progress)
        return self.cache["source"]

    def source_logits(self, bank: str = "tgt"):
        """f_S's logits on the fit (``tgt``) or held-out (``tval``) part of target-train (cached)."""
        key = f"u:{bank}"
        if key not in self.cache:
            self.cache[key] = st.predict(self.source(), getattr(self, bank).optical, device=self.device)["logits"]
        return self.cache[key]

    def pseudo(self, step1: Step1Config | None = None, bank: str = "tgt") -> dict:
        """Step 1's filtered pseudo-labels from f_S on a part of target-train (no auxiliary is trained)."""
        return st.pseudo_label(None, getattr(self, bank), step1 or self.cfg.step1, self.device,
                               logits=self.source_logits(bank))

    def source_clouds(self, step1: Step1Config, stage: str, split: str = "train") -> dict | None:
        """f_O's extra rows from labelled source images under simulated clouds (``step1.source_clouds``)."""
        if not step1.source_clouds or self.checkpoint(stage).exists():
            return None
        return st.source_cloud_data(self.src, self.source(), step1, self.cfg.seed, self.device, split) or None

    def step1(self, step1: Step1Config | None = None, suffix: str = "") -> dict:
        """Pseudo-labels and both auxiliaries for a step-1 config (cached per stage suffix); filter report later.

        ``suffix`` names the stage folders of a variant (``aux_optical<suffix>``); the run's own config has none.
        """
        s1 = step1 or self.cfg.step1
        ctx, fix = self.radiometric(s1)
        if ctx is not self:
            return ctx.step1(s1, suffix)
        suffix += RADIOMETRIC_SUFFIX if fix is not None else ""
        key = f"step1:{suffix}"
        if key not in self.cache:
            pl, vpl = self.pseudo(s1, "tgt"), self.pseudo(s1, "tval")
            cfg = dataclasses.replace(self.cfg, step1=s1)
            aux_o = st.train_aux(cfg, self.tgt, pl, self.run, "optical", self.progress, f"aux_optical{suffix}",
                                 source=self.source(), val=(self.tval, vpl),
                                 extra_rows=self.source_clouds(s1, f"aux_optical{suffix}"),
                                 extra_val=self.source_clouds(s1, f"aux_optical{suffix}", "val"))
            spl, svpl = pl, vpl
            if s1.sar_teacher == "optical":  # [ours] f_O, not f_S, labels the visible patches for f_R
                spl, svpl = (st.pseudo_label(None, b, s1, self.device,
                                             logits=st.predict(aux_o, b.optical, device=self.device)["logits"])
                             for b in (self.tgt, self.tval))
            self.cache[key] = {
                "pl": pl, "pl_sar": spl, "step1": s1, "aux_o": aux_o, "fix": fix, "suffix": suffix,
                "aux_s": st.train_aux(cfg, self.tgt, spl, self.run, "sar", self.progress, f"aux_sar{suffix}",
                                      val=(self.tval, svpl)),
            }
        return self.cache[key]

    def radiometric(self, step1: Step1Config | None = None) -> tuple[Context, Callable[[Bank], Bank] | None]:
        """[ours] The context with radiometrically normalised target banks, and the map that does it to a bank.

        ``step1.radiometric`` decides (this context and None when no correction applies). The corrected
        context shares the run folder and f_S but has its own cache (f_S's logits change with the input); its
        step-1 stage folders carry :data:`RADIOMETRIC_SUFFIX`; its report lands in ``step1.json``.
        """
        if self.fixed is not None:
            return self, self.fixed
        s1 = step1 or self.cfg.step1
        key = f"radiometric:{s1.radiometric}"
        if key not in self.cache:
            norm, report = st.radiometric(self.src, self.tgt, s1.radiometric)
            if norm is None:
                self.cache[key] = (self, None, report)
            else:
                def fix(b: Bank, norm=norm) -> Bank:
                    return b.renormalized(norm)

                ctx = Context(self.cfg, self.run, self.src, fix(self.tgt), self.progress,
                              {"source": self.source()}, fix(self.tval), fixed=fix)
                self.cache[key] = (ctx, fix, report)
                if self.progress and ddp.is_main():
                    print(f"radiometric normalisation of the target optical ({s1.radiometric}): mean z^2 "
                          f"{report['mean_z2']} over {report['clear_patches']} clear patches", flush=True)
        ctx, fix, _ = self.cache[key]
        return ctx, fix

    def teachers(self, suffix: str = "", bank: str = "tgt", step1: Step1Config | None = None) -> dict:
        """The three teachers' logits on the fit (``tgt``) or held-out (``tval``) part of target-train (cached)."""
        ctx, _ = self.radiometric(step1)
        if ctx is not self:
            return ctx.teachers(suffix, bank, step1)
        key = f"teachers:{suffix}:{bank}"
        if key not in self.cache:
            s1 = self.step1(step1, suffix)
            b = getattr(self, bank)
            self.cache[key] = {"u": self.source_logits(bank),
                               "a_o": st.predict(s1["aux_o"], b.optical, device=self.device)["logits"],
                               "a_s": st.predict(s1["aux_s"], b.sar, device=self.device)["logits"]}
        return self.cache[key]


def classifier_predictor(name: str, model, kind: str, ckpt: Path | None, device: str = "cpu") -> Predictor:
    """A predictor for a single-input classifier (``optical`` or ``sar`` input)."""
    return Predictor(name, lambda b: st.predict(model, b.optical if kind == "optical" else b.sar, device=device),
                     ckpt, kind)


def dual_predictor(name: str, model, ckpt: Path | None, device: str = "cpu") -> Predictor:
    """A predictor for a dual-branch target model (logits plus z^o, z^s and modality weights)."""
    return Predictor(name, lambda b: st.predict(model, b.optical, b.sar, device=device), ckpt, "dual")


# ------------------------------------------------------------------------------------------------------ ESCCS family
#: docs/method.md's recipe: every option of ours off (the ``esccs-paper`` row); the config's other values are kept
PAPER_STEP1 = {"cloud_max": 1.0, "clouded": "hard", "source_clouds": False, "sar_teacher": "source",
               "radiometric": "none"}
PAPER_STEP2 = {"vote": "teacher", "rounds": 0, "calibrate": False}


def esccs(ctx: Context, stage: str = "target", step1: dict | None = None, suffix: str = "", **step2) -> Predictor:
    """ESCCS: source -> filtered step 1 (two auxiliaries) -> IRM-regulated three-teacher step 2 [-> relabelling].

    ``step1`` / ``step2`` override the run's config (an ablation or the paper preset); ``suffix`` names the step-1
    stage folders of a step-1 variant. With ``step2.rounds = R > 0`` the step-2 model of round r is
    ``<stage>_round<r>`` and the last one is ``<stage>``.
    """
    s1 = dataclasses.replace(ctx.cfg.step1, **(step1 or {}))
    cfg = dataclasses.replace(ctx.cfg, step1=s1, step2=dataclasses.replace(ctx.cfg.step2, **step2))
    ctx, fix = ctx.radiometric(s1)
    aux = ctx.step1(s1, suffix)
    teachers, vteachers = ctx.teachers(suffix, "tgt", s1), ctx.teachers(suffix, "tval", s1)
    rounds = cfg.step2.rounds
    temps = []

    def calibrated(teachers: dict, vteachers: dict) -> tuple[dict, dict]:
        if not cfg.step2.calibrate:
            return teachers, vteachers
        t = st.calibrate_teachers(vteachers, ctx.tval.coverage)
        temps.append({k: round(v, 3) for k, v in t.items()})
        return st.tempered(teachers, t), st.tempered(vteachers, t)

    name = stage if rounds == 0 else f"{stage}_round0"
    teachers, vteachers = calibrated(teachers, vteachers)
    model = st.train_target(cfg, ctx.tgt, teachers, ctx.run, ctx.progress, name,
                            init_models=(aux["aux_o"], aux["aux_s"]), val=(ctx.tval, vteachers),
                            recipe=st.step2_recipe(cfg, 0))
    aux_o, aux_s = aux["aux_o"], aux["aux_s"]
    for r in range(1, rounds + 1):
        aux_o, aux_s, teachers, vteachers = relabel_round(ctx, cfg, model, aux_o, aux_s, f"{stage}_r{r}",
                                                          st.step2_recipe(cfg, r))
        teachers, vteachers = calibrated(teachers, vteachers)
        name = stage if r == rounds else f"{stage}_round{r}"
        model = st.train_target(cfg, ctx.tgt, teachers, ctx.run, ctx.progress, name,
                                init_models=(aux_o, aux_s), val=(ctx.tval, vteachers),
                                recipe=st.step2_recipe(cfg, r))
    pred = dual_predictor(stage, model, ctx.checkpoint(stage), ctx.device)
    _corrected(pred, fix)  # the target's optical input goes through the corrected normaliser, as the checkpoint says
    pred.info = {"rounds": rounds, "vote": cfg.step2.vote, "cloud_max": s1.cloud_max, "clouded": s1.clouded,
                 "radiometric": fix is not None, "temperatures": temps}
    pred.irm = (cfg, aux_o, aux_s)
    return pred


def agreement_labels(z_t: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, coverage: torch.Tensor,
                     s1: Step1Config) -> dict:
    """[ours] Relabelling-round pseudo-labels: the target's argmax where it agrees with an auxiliary.

    Cross-modal agreement is the filter: sample i is kept when ``argmax z_T`` equals ``argmax a_o`` or
    ``argmax a_s`` (f_O counts only where the cloud cover is at most ``cloud_max``); ``clouded`` lists the samples
    above ``cloud_max`` (soft targets for f_O, as in step 1).
    """
    y = z_t.argmax(1)
    visible = coverage <= s1.cloud_max
    agree = ((a_o.argmax(1) == y) & visible) | (a_s.argmax(1) == y)
    return {"u": z_t, "pseudo": y, "kept": torch.nonzero(agree & visible).flatten(),
            "kept_sar": torch.nonzero(agree).flatten(), "clouded": torch.nonzero(~visible).flatten()}


def relabel_round(ctx: Context, cfg: TrainConfig, target, aux_o, aux_s, prefix: str, recipe: dict | None = None):
    """[ours] One cross-modal relabelling round; returns the new f_O, f_R and their logits on both parts.

    f_T relabels target-train; f_O and f_R retrain on the agreed labels, each from its previous weights, with KD to
    f_T's logits. ``recipe`` is the round's (the retrained auxiliaries are reused only under it).
    """
    out = {}
    for bank in ("tgt", "tval"):
        b = getattr(ctx, bank)
        z_t = st.predict(target, b.optical, b.sar, device=ctx.device)["logits"]
        a_o = st.predict(aux_o, b.optical, device=ctx.device)["logits"]
        a_s = st.predict(aux_s, b.sar, device=ctx.device)["logits"]
        out[bank] = agreement_labels(z_t, a_o, a_s, b.coverage, cfg.step1)
    sar_pl = {k: {**v, "kept": v["kept_sar"]} for k, v in out.items()}
    new_o = aux_o
    if cfg.step2.relabel == "both":
        new_o = st.train_aux(cfg, ctx.tgt, out["tgt"], ctx.run, "optical", ctx.progress, f"{prefix}_aux_optical",
                             val=(ctx.tval, out["tval"]), init=aux_o, recipe=recipe)
    new_s = st.train_aux(cfg, ctx.tgt, sar_pl["tgt"], ctx.run, "sar", ctx.progress, f"{prefix}_aux_sar",
                         val=(ctx.tval, sar_pl["tval"]), init=aux_s, recipe=recipe)
    teachers = {}
    for bank in ("tgt", "tval"):
        b = getattr(ctx, bank)
        teachers[bank] = {"u": ctx.source_logits(bank),
                          "a_o": st.predict(new_o, b.optical, device=ctx.device)["logits"],
                          "a_s": st.predict(new_s, b.sar, device=ctx.device)["logits"]}
    return new_o, new_s, teachers["tgt"], teachers["tval"]


def esccs_paper(ctx: Context) -> Predictor:
    """docs/method.md's recipe as specified (three equal votes, no cloud-aware step 1, no relabelling rounds)."""
    return esccs(ctx, stage="paper/target", step1=PAPER_STEP1, suffix="_paper", **PAPER_STEP2)


ABLATIONS: dict[str, dict] = {
    "no-irm": {"gamma": 0.0, "irm_b": False},  # uniform teacher weights, no gradient balancing
    "irm-a": {"irm_b": False},  # teacher weights only
    "irm-b": {"gamma": 0.0},  # gradient balancing only
    "no-filter": {"step1": {"policy": "none"}},  # step-1 pseudo-labels unfiltered
    "maxprob-filter": {"step1": {"policy": "maxprob"}},  # docs/method.md's confidence threshold (tau) + class floor
    "step2-filter": {"filter": True},  # filter step 2 too (the paper says worse)
    "source-ref": {"reference": "source", "vote": "teacher"},  # reference label from the source model only
    # our design beyond the paper, one option off at a time
    "no-cloud-step1": {"step1": {"cloud_max": 1.0, "clouded": "hard"}},  # clouded patches keep f_S's hard labels
    "no-source-clouds": {"step1": {"source_clouds": False}},  # f_O learns from target pseudo-labels only
    "hard-clouded": {"step1": {"clouded": "hard"}},  # clouded patches dropped from f_O, no soft target
    "teacher-vote": {"vote": "teacher"},  # docs/method.md's three equal votes in the consensus and IRM-A
    "no-rounds": {"rounds": 0},  # no cross-modal relabelling round
    "one-round": {"rounds": 1},  # one relabelling round instead of step2.rounds (3)
    "relabel-both": {"relabel": "both"},  # the relabelling round retrains f_O too
    "mixture": {"fusion": "mixture"},  # three IRM-weighted KD terms instead of the pooled teacher
    "no-radiometric": {"step1": {"radiometric": "none"}},  # no relative radiometric normalisation of the target
    "no-calibration": {"calibrate": False},  # f_O and f_R enter step 2 with their own confidence
}


def ablation(ctx: Context, name: str) -> Predictor:
    """An ESCCS ablation from :data:`ABLATIONS`, or ``single-step`` (f_S -> f_T directly, no auxiliaries)."""
    if name == "single-step":
        return single_step(ctx)
    opts = dict(ABLATIONS[name])
    step1 = opts.pop("step1", None)
    suffix = ""
    changed = {k for k, v in (step1 or {}).items() if getattr(ctx.cfg.step1, k) != v}
    changed.discard("radiometric")  # corrected step-1 stages carry RADIOMETRIC_SUFFIX: no folder of their own needed
    if changed:
        suffix = "_" + name
    return esccs(ctx, stage=f"ablation_{name}", step1=step1, suffix=suffix, **opts)


def single_step(ctx: Context) -> Predictor:
    """f_S -> f_T in one step: the source is the only teacher (no auxiliaries, no IRM)."""
    cfg = dataclasses.replace(ctx.cfg, step2=dataclasses.replace(ctx.cfg.step2, gamma=0.0, irm_b=False,
                                                                 vote="teacher"))
    u, uv = ctx.source_logits("tgt"), ctx.source_logits("tval")
    # no relabelling chain; step 1's settings matter only through step2.filter
    recipe = {k: v for k, v in st.step2_recipe(cfg).items()
              if k != "step2.rounds" and (cfg.step2.filter or not k.startswith("step1."))}
    model = st.train_target(cfg, ctx.tgt, {"u": u, "a_o": u, "a_s": u}, ctx.run, ctx.progress,
                            "ablation_single-step", init_models=(ctx.source(), None),
                            val=(ctx.tval, {"u": uv, "a_o": uv, "a_s": uv}), recipe=recipe)
    return dual_predictor("ablation_single-step", model, ctx.checkpoint("ablation_single-step"), ctx.device)


# ---------------------------------------------------------------------------------------------- simple baselines
def _corrected(pred: Predictor, fix: Callable[[Bank], Bank] | None) -> Predictor:
    """``pred`` reading banks through the radiometric correction ``fix`` (unchanged when None)."""
    if fix is not None:
        pred.fn, pred.prepare = (lambda b, f=pred.fn: f(fix(b))), fix
    return pred


def optical_only(ctx: Context) -> Predictor:
    """The step-1 cloudy-optical auxiliary f_O alone."""
    s1 = ctx.step1()
    return _corrected(classifier_predictor("aux_optical", s1["aux_o"], "optical",
                                           ctx.checkpoint("aux_optical" + s1["suffix"]), ctx.device), s1["fix"])


def sar_only(ctx: Context) -> Predictor:
    """The step-1 SAR auxiliary f_R alone."""
    s1 = ctx.step1()
    return classifier_predictor("aux_sar", s1["aux_s"], "sar", ctx.checkpoint("aux_sar" + s1["suffix"]), ctx.device)


def source_only(ctx: Context) -> Predictor:
    """The source model applied to cloudy optical (no transfer): the floor every method must beat."""
    return classifier_predictor("source", ctx.source(), "optical", ctx.checkpoint("source"), ctx.device)


def pseudo_data(ctx: Context, bank: str, keys=("optical",), kept: bool = False) -> dict:
    """f_S's pseudo-labels (+ its logits as KD teacher) on a part of target-train, optionally step-1 filtered."""
    b, u = getattr(ctx, bank), ctx.source_logits(bank)
    idx = torch.arange(len(b))
    if kept:
        s1 = ctx.cfg.step1
        idx = torch.as_tensor(select(u.numpy(), FilterConfig(s1.policy, s1.tau, s1.min_per_class,
                                                             s1.frac_per_class, s1.q)), dtype=torch.long)
    return {**{k: getattr(b, k)[idx] for k in keys}, "target": u.argmax(1)[idx], "teacher": u[idx]}


def kd_s(ctx: Context) -> Predictor:
    """KD-S: optical student on cloudy optical, CE(argmax u) + KD_T(z, u), no filter."""
    step = st.aux_step("optical", ctx.cfg.step1.temperature, 1.0)
    model = st.run_stage(ctx.run, "kd-s", st.model_config(ctx.cfg, ctx.tgt, "optical"), pseudo_data(ctx, "tgt"),
                         step, ctx.cfg.loop("aux"), ctx.progress, erase_range=st.valid_range(ctx.tgt),
                         init=st.init_from(optical=ctx.source()), val=pseudo_data(ctx, "tval"))
    return classifier_predictor("kd-s", model, "optical", ctx.checkpoint("kd-s"), ctx.device)


def dual_pseudo_step(temperature: float):
    """CE to the pseudo-label + KD_T to the source logits on the fused logits of a dual model."""
    def step(model, b):
        z = model(b["optical"], b["sar"])["logits"]
        return F.cross_entropy(z, b["target"]) + kd_rows(z, b["teacher"], temperature).mean(), z, {}

    return step


def tlf(ctx: Context) -> Predictor:
    """TLF: dual-branch concatenation fusion, CE(pseudo-label) + KD from f_S on all samples, no imbalance handling."""
    keys = ("optical", "sar")
    model = st.run_stage(ctx.run, "tlf", st.model_config(ctx.cfg, ctx.tgt, "dual"), pseudo_data(ctx, "tgt", keys),
                         dual_pseudo_step(ctx.cfg.step1.temperature), ctx.cfg.loop("target"), ctx.progress,
                         init=st.init_from(optical=ctx.source()), val=pseudo_data(ctx, "tval", keys))
    return dual_predictor("tlf", model, ctx.checkpoint("tlf"), ctx.device)


def tlf_late(ctx: Context) -> Predictor:
    """TLF-late: decision fusion, the mean of the two auxiliaries' softmax outputs."""
    s1 = ctx.step1()

    def fn(b: Bank) -> dict:
        po = st.predict(s1["aux_o"], (s1["fix"] or (lambda x: x))(b).optical, device=ctx.device)["logits"].softmax(1)
        ps = st.predict(s1["aux_s"], b.sar, device=ctx.device)["logits"].softmax(1)
        return {"logits": torch.log((po + ps) / 2 + 1e-12)}

    return Predictor("tlf-late", fn, None, "pipeline",
                     {"components": ["aux_optical" + s1["suffix"], "aux_sar" + s1["suffix"]]})


def kdhn(ctx: Context, rounds: int = 2) -> Predictor:
    """KDHN: the dual-input target trained straight from f_S with filtered pseudo-labels + KD, recursive rounds."""
    s1 = ctx.cfg.step1
    fcfg = FilterConfig(s1.policy, s1.tau, s1.min_per_class, s1.frac_per_class, s1.q)
    teacher = {"tgt": ctx.source_logits("tgt"), "tval": ctx.source_logits("tval")}
    model = None

    def data(bank: str) -> dict:
        b, t = getattr(ctx, bank), teacher[bank]
        kept = torch.as_tensor(select(t.numpy(), fcfg), dtype=torch.long)
        return {"optical": b.optical[kept], "sar": b.sar[kept], "target": t.argmax(1)[kept], "teacher": t[kept]}

    for r in range(rounds):
        stage = f"kdhn_r{r + 1}"
        model = st.run_stage(ctx.run, stage, st.model_config(ctx.cfg, ctx.tgt, "dual"), data("tgt"),
                             dual_pseudo_step(s1.temperature), ctx.cfg.loop("target"), ctx.progress,
                             init=st.init_from(optical=ctx.source()), val=data("tval"))
        teacher = {k: st.predict(model, getattr(ctx, k).optical, getattr(ctx, k).sar, device=ctx.device)["logits"]
                   for k in ("tgt", "tval")}  # recursive relabelling
    return dual_predictor("kdhn", model, ctx.checkpoint(f"kdhn_r{rounds}"), ctx.device)


# --------------------------------------------------------------------------------------- oracles (upper bounds)
def _oracle(kind: str):
    """A model of ``kind`` (``dual``, ``optical``, ``sar``) trained on target-train WITH its labels.

    An upper bound for the table, never a method: the same architecture and schedule as the target stages
    (optical encoder from f_S, as the transfer methods), CE to the true labels, the epoch selected on the
    held-out part of target-train against its true labels. Marked ``oracle`` in the results and the table.
    """
    def recipe(ctx: Context) -> Predictor:
        def data(bank: str) -> dict:
            b = getattr(ctx, bank)
            y = b.meta["eval_labels"]
            keys = ("optical", "sar") if kind == "dual" else (kind,)
            return {**{k: getattr(b, k) for k in keys}, "target": y}

        def step(model, b):
            z = model(b["optical"], b["sar"])["logits"] if kind == "dual" else model(b[kind])
            return F.cross_entropy(z, b["target"]), z, {}

        stage = f"oracle-{kind}"
        init = st.init_from(optical=ctx.source()) if kind in ("dual", "optical") else None
        loop = ctx.cfg.loop("target" if kind == "dual" else "aux")
        model = st.run_stage(ctx.run, stage, st.model_config(ctx.cfg, ctx.tgt, kind), data("tgt"), step, loop,
                             ctx.progress, extra={"oracle": True}, init=init,
                             erase_range=st.valid_range(ctx.tgt) if kind == "optical" else None, val=data("tval"))
        pred = (dual_predictor(stage, model, ctx.checkpoint(stage), ctx.device) if kind == "dual" else
                classifier_predictor(stage, model, kind, ctx.checkpoint(stage), ctx.device))
        pred.oracle = True
        return pred

    return recipe


def _baseline(module: str, fn: str) -> Callable[[Context], Predictor]:
    def run(ctx: Context) -> Predictor:
        import importlib

        return getattr(importlib.import_module(f"esccs.train.baselines.{module}"), fn)(ctx)

    return run


#: method name -> recipe. ``esccs train --method all`` runs every one of these.
METHODS: dict[str, Callable[[Context], Predictor]] = {
    "esccs": esccs, "esccs-paper": esccs_paper, "source-only": source_only, "optical-only": optical_only,
    "sar-only": sar_only,
    "kd-s": kd_s, "tlf": tlf, "tlf-late": tlf_late, "kdhn": kdhn,
    "spl": _baseline("spl", "spl"), "ttl": _baseline("ttl", "ttl"), "cycit": _baseline("cycit", "cycit"),
    "gdl": _baseline("gdl", "gdl"),
    "oracle-dual": _oracle("dual"), "oracle-optical": _oracle("optical"), "oracle-sar": _oracle("sar"),
}
#: rows trained with target labels (upper bounds, marked as such in the table)
ORACLES: tuple[str, ...] = ("oracle-dual", "oracle-optical", "oracle-sar")
ABLATION_NAMES: tuple[str, ...] = (*ABLATIONS, "single-step")


def _expand(value: str, names, what: str) -> list[str]:
    from esccs.errors import ConfigError

    value = ",".join(value) if isinstance(value, (list, tuple)) else str(value or "")
    items = list(names) if value == "all" else [m.strip() for m in value.split(",") if m.strip()]
    for m in items:
        if m not in names:
            import difflib

            hint = difflib.get_close_matches(m, list(names), n=1, cutoff=0.0)
            raise ConfigError(f"{what}: unknown value {m!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; expected one of {', '.join(names)}, a comma list, or 'all'")
    return items


def resolve_methods(method: str, ablation_opt: str) -> tuple[list[str], list[str]]:
    """Expand ``method`` / ``ablation`` (comma lists or ``all``); unknown names raise ConfigError with a hint."""
    return _expand(method, tuple(METHODS), "method"), _expand(ablation_opt, ABLATION_NAMES, "ablation")
