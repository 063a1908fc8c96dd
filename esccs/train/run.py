"""``esccs train``: run the stages a method needs, evaluate on the target test split, save everything in RUN/.

RUN/ holds ``config.yaml`` (resolved), one folder per stage (checkpoint, CSV log, resumable state), ``step1.json``
(filter yield and pseudo-label precision), and ``results/<method>.json`` (scores by cloud stratum + diagnostics).
Stages whose checkpoints exist are skipped, so a second call finishes an interrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from esccs.errors import ConfigError
from esccs.io.atomic import write_json
from esccs.train import stages as st
from esccs.train.bank import Bank, load_bank
from esccs.train.config import TrainConfig, save_config
from esccs.train.evaluate import evaluate_outputs, summary_line
from esccs.train.methods import ABLATION_NAMES, METHODS, Context, Predictor, ablation

#: ``--method all`` = every method; ablations run with ``--ablation all`` (the accuracy table runs both).
ALL = tuple(METHODS)


def resolve_methods(method: str, ablation_opt: str) -> tuple[list[str], list[str]]:
    """Expand ``--method`` / ``--ablation`` (comma lists or ``all``) and reject unknown names."""
    methods = list(ALL) if method == "all" else [m for m in method.split(",") if m]
    abls = list(ABLATION_NAMES) if ablation_opt == "all" else [a for a in ablation_opt.split(",") if a]
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; expected one of {', '.join(METHODS)} or 'all'")
    for a in abls:
        if a not in ABLATION_NAMES:
            raise ConfigError(f"unknown ablation {a!r}; expected one of {', '.join(ABLATION_NAMES)} or 'all'")
    return methods, abls


def load_banks(cfg: TrainConfig, progress: bool = True) -> tuple[Bank, Bank, Bank]:
    """Source bank, target train bank (labels hidden) and target test bank (labels for evaluation)."""
    src = load_bank(cfg.data, "source", cfg.bands, progress=progress)
    tgt = load_bank(cfg.data, "target", cfg.bands, with_clear=True, progress=progress)
    test_split = "test" if (tgt.split == "test").any() else "val"
    train, test = tgt.where("train"), tgt.where(test_split)
    if len(test) == 0 or len(train) == 0:
        raise ConfigError(f"{cfg.data}: the target part needs train and {test_split} scenes")
    train.meta["eval_labels"] = train.labels.clone()  # held back: filter-precision reports only
    train.labels = train.labels.new_full(train.labels.shape, -1)  # the transfer never sees target labels
    return src, train, test


def train(cfg: TrainConfig, methods: list[str], ablations: list[str] = (), progress: bool = True,
          banks: tuple[Bank, Bank, Bank] | None = None) -> dict[str, dict]:
    """Train and evaluate ``methods`` and ``ablations`` into ``cfg.out``; returns ``{name: results}``."""
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    src, tgt, test = banks or load_banks(cfg, progress)
    ctx = Context(cfg, run, src, tgt, progress)
    results: dict[str, dict] = {}
    jobs = [(m, METHODS[m]) for m in methods] + [(f"ablation:{a}", lambda c, a=a: ablation(c, a)) for a in ablations]
    irm_test = None
    for name, recipe in jobs:
        t0 = time.perf_counter()
        pred: Predictor = recipe(ctx)
        if irm_test is None and pred.kind == "dual":
            irm_test = st.irm_inputs(st.teacher_logits(ctx.source(), ctx.step1()["aux_o"], ctx.step1()["aux_s"],
                                                       test, cfg.device), cfg.step2)
        res = evaluate_outputs(pred.fn(test), test, irm_test if pred.kind == "dual" else None)
        res.update(method=name, seed=cfg.seed, seconds=round(time.perf_counter() - t0, 1), kind=pred.kind,
                   checkpoint=str(pred.checkpoint) if pred.checkpoint else None, info=pred.info)
        write_json(run / "results" / f"{name.replace(':', '_')}.json", res)
        results[name] = res
        print(summary_line(name, res), flush=True)
    _write_step1(ctx, run)
    return results


def _write_step1(ctx: Context, run: Path) -> None:
    """Filter yield and pseudo-label precision (against held-back labels) of every step-1 policy used."""
    reports = {}
    for key, value in ctx.cache.items():
        if key.startswith("step1:"):
            pl = value["pl"]
            from esccs.train.filters import filter_report

            reports[key.split(":", 1)[1]] = filter_report(pl["u"].numpy(), pl["kept"].numpy(),
                                                          ctx.tgt.meta["eval_labels"].numpy(), ctx.tgt.classes,
                                                          st.stratum_ids(ctx.tgt.coverage))
    if reports:
        write_json(run / "step1.json", reports)


def load_results(run: str | Path) -> dict[str, dict]:
    """``{method: results}`` of a run folder."""
    folder = Path(run) / "results"
    return {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def evaluate_checkpoint(ckpt: str | Path, data: str | Path, progress: bool = True) -> dict:
    """Evaluate one checkpoint on the target test split of ``data`` (scores by stratum + diagnostics).

    A dual model is fed cloudy optical + SAR, an optical classifier the cloudy optical, a SAR classifier the SAR.
    When the checkpoint sits in a run folder with the step-1 teachers, the IRM weights per stratum are added.
    """
    from esccs.models import load_checkpoint

    ckpt = Path(ckpt)
    model, mcfg, _ = load_checkpoint(ckpt)
    bands = tuple(mcfg.optical_bands or TrainConfig().bands)
    test = load_bank(data, "target", bands, progress=progress)
    test = test.where("test") if (test.split == "test").any() else test
    if mcfg.family == "dual":
        out = st.predict(model, test.optical, test.sar)
    else:
        out = st.predict(model, test.optical if mcfg.modality == "optical" else test.sar)
    irm = None
    run = ckpt.parent.parent
    teachers = [run / n / "model.safetensors" for n in ("source", "aux_optical", "aux_sar")]
    if mcfg.family == "dual" and all(p.exists() for p in teachers):
        from esccs.train.config import load_config

        cfg = load_config(run / "config.yaml") if (run / "config.yaml").exists() else TrainConfig()
        models = [load_checkpoint(p)[0] for p in teachers]
        irm = st.irm_inputs(st.teacher_logits(*models, test), cfg.step2)
    res = evaluate_outputs(out, test, irm)
    res.update(method=ckpt.parent.name, checkpoint=str(ckpt), kind=mcfg.family)
    return res
