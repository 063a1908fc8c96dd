"""``esccs train``: run the stages a method needs, evaluate on the target test split, save everything in RUN/.

RUN/ holds ``config.yaml`` (resolved), one folder per stage (checkpoint, CSV log, resumable state), ``step1.json``
(filter yield and pseudo-label precision), and ``results/<method>.json`` (scores by cloud stratum + diagnostics).
Stages whose checkpoints exist are skipped, so a second call finishes an interrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from esccs.data.transforms import Normalizer
from esccs.errors import ConfigError
from esccs.io.atomic import write_json
from esccs.train import distributed as ddp
from esccs.train import stages as st
from esccs.train.bank import Bank, holdout, load_bank
from esccs.train.config import TrainConfig, save_config
from esccs.train.evaluate import evaluate_outputs, summary_line
from esccs.train.methods import METHODS, RADIOMETRIC_SUFFIX, Context, Predictor, ablation


def load_banks(cfg: TrainConfig, progress: bool = True) -> tuple[Bank, Bank, Bank]:
    """Source bank, target train bank (labels hidden) and target test bank (labels for evaluation)."""
    src = load_bank(cfg.data, "source", cfg.bands, progress=progress)
    tgt = load_bank(cfg.data, "target", cfg.bands, with_clear=True, progress=progress)
    test_split = "test" if (tgt.split == "test").any() else "val"
    train, test = tgt.where("train"), tgt.where(test_split)
    if len(test) == 0 or len(train) == 0:
        raise ConfigError(f"{cfg.data}: the target part needs train and {test_split} scenes")
    return src, hide_labels(train), test


def hide_labels(bank: Bank) -> Bank:
    """The bank with its labels replaced by -1: the transfer never sees target labels.

    The true ones ride in ``meta["eval_labels"]``, read only by the filter reports and the oracle rows.
    """
    bank = dataclasses.replace(bank, meta={**bank.meta, "eval_labels": bank.labels.clone()})
    bank.labels = bank.labels.new_full(bank.labels.shape, -1)
    return bank


def split_target_train(cfg: TrainConfig, train: Bank) -> tuple[Bank, Bank]:
    """(fit, held-out) parts of target-train, scene-grouped; each keeps its own held-back labels."""
    fit, held = holdout(train, cfg.val_fraction, seed=cfg.seed)
    pos = {i: k for k, i in enumerate(train.ids)}
    for part in (fit, held):
        part.meta = {**train.meta, "eval_labels": train.meta["eval_labels"][[pos[i] for i in part.ids]]}
    return fit, held


def train(cfg: TrainConfig, methods: list[str], ablations: list[str] = (), progress: bool = True,
          banks: tuple[Bank, Bank, Bank] | None = None) -> dict[str, dict]:
    """Train and evaluate ``methods`` and ``ablations`` into ``cfg.out``; returns ``{name: results}``.

    The saved ``RUN/config.yaml`` is the configuration that ran, with ``method`` / ``ablation`` set to the lists
    run here. Each ``RUN/results/<name>.json`` holds the scores and the per-sample test predictions (``pred``, in
    the order of ``ids``), which the table's paired intervals use.
    """
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, method=",".join(methods), ablation=",".join(ablations))
    ddp.on_main(save_config, cfg, run / "config.yaml")  # under torchrun rank 0 writes every file, then a barrier
    src, tgt, test = banks or load_banks(cfg, progress)
    fit, held = split_target_train(cfg, tgt)
    ctx = Context(cfg, run, src, fit, progress, tval=held)
    results: dict[str, dict] = {}
    jobs = [(m, METHODS[m]) for m in methods] + [(f"ablation:{a}", lambda c, a=a: ablation(c, a)) for a in ablations]
    for name, recipe in jobs:
        t0 = time.perf_counter()
        pred: Predictor = recipe(ctx)
        irm_test = None
        if pred.irm is not None:
            pcfg, aux_o, aux_s = pred.irm
            seen = pred.prepare(test) if pred.prepare is not None else test  # the teachers' own input
            irm_test = st.irm_inputs(st.teacher_logits(ctx.source(), aux_o, aux_s, seen, cfg.device), pcfg.step2,
                                     test.coverage)
        out = pred.fn(test)
        res = evaluate_outputs(out, test, irm_test if pred.kind == "dual" else None)
        res.update(method=name, seed=cfg.seed, data=data_card(cfg.data), coverage=test.coverage.tolist(),
                   seconds=round(time.perf_counter() - t0, 1), kind=pred.kind, oracle=pred.oracle,
                   checkpoint=str(pred.checkpoint) if pred.checkpoint else None, info=pred.info,
                   ids=list(test.ids), labels=test.labels.tolist(),
                   pred=out["logits"].argmax(1).tolist(), stages=stage_summaries(run))
        ddp.on_main(write_json, run / "results" / f"{name.replace(':', '_')}.json", res)
        results[name] = res
        if ddp.is_main():
            print(summary_line(name + (" [oracle]" if pred.oracle else ""), res), flush=True)
    ddp.on_main(_write_step1, ctx, run)
    return results


def data_card(root: str | Path) -> dict:
    """What identifies the data set in the table: its path, generator seed and shift option (synthetic data)."""
    card = Path(root) / "dataset.json"
    try:
        gen = json.loads(card.read_text()).get("generator", {}) or {}
    except (OSError, ValueError, AttributeError):
        gen = {}
    return {"root": str(root), "seed": gen.get("seed"), "shift": gen.get("shift") or "none"}


def stage_summaries(run: Path) -> dict:
    """``{stage: {steps, epochs, selected_epoch, ...}}`` of every finished stage of a run (from model.json)."""
    out = {}
    for p in sorted(Path(run).rglob("model.json")):
        try:
            extra = json.loads(p.read_text()).get("extra", {})
        except (OSError, ValueError):
            continue
        if "selected_epoch" in extra:
            out[str(p.parent.relative_to(run))] = {k: extra.get(k) for k in ("steps", "epochs", "selected_epoch",
                                                                               "select", "val_acc")}
    return out


def _write_step1(ctx: Context, run: Path) -> None:
    """Filter yield and pseudo-label precision (against held-back labels) of every step-1 policy used."""
    reports = {}
    items = list(ctx.cache.items())
    for key, (actx, _, report) in [(k, v) for k, v in items if k.startswith("radiometric:")]:
        reports[key] = report  # [ours] the radiometric normalisation's decision and map
        if actx is not ctx:
            items += [(k, v) for k, v in actx.cache.items() if k.startswith("step1:")]
    for key, value in items:
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

    A dual model is fed cloudy optical + SAR, an optical classifier the cloudy optical, a SAR classifier the SAR;
    the optical input goes through the checkpoint's own normaliser (a radiometrically corrected model's included).
    The result also holds the per-sample predictions (``ids``, ``pred``).
    When the checkpoint sits in a run folder with the step-1 teachers, the IRM weights per stratum are added.
    """
    from esccs.models import load_checkpoint

    ckpt = Path(ckpt)
    model, mcfg, _ = load_checkpoint(ckpt)
    bands = tuple(mcfg.optical_bands or TrainConfig().bands)
    test = load_bank(data, "target", bands, progress=progress)
    test = test.where("test") if (test.split == "test").any() else test
    reads_optical = mcfg.family == "dual" or mcfg.modality == "optical"
    if reads_optical and isinstance(mcfg.normalization, dict) and "optical" in mcfg.normalization:
        # the checkpoint's own optical normaliser (e.g. a radiometrically corrected target model's)
        test = test.renormalized(Normalizer.from_dict(mcfg.normalization["optical"]))
    if mcfg.family == "dual":
        out = st.predict(model, test.optical, test.sar)
    else:
        out = st.predict(model, test.optical if mcfg.modality == "optical" else test.sar)
    irm = None
    run = ckpt.parent.parent
    corrected = reads_optical and test.opt_norm.to_dict() != Normalizer.for_bands(bands).to_dict()
    sfx = RADIOMETRIC_SUFFIX if corrected else ""  # a radiometrically corrected run's step-1 teachers
    teachers = [run / n / "model.safetensors" for n in ("source", f"aux_optical{sfx}", f"aux_sar{sfx}")]
    if mcfg.family == "dual" and all(p.exists() for p in teachers):
        from esccs.train.config import load_config

        cfg = load_config(run / "config.yaml") if (run / "config.yaml").exists() else TrainConfig()
        models = [load_checkpoint(p)[0] for p in teachers]
        irm = st.irm_inputs(st.teacher_logits(*models, test), cfg.step2, test.coverage)
    res = evaluate_outputs(out, test, irm)
    res.update(method=ckpt.parent.name, checkpoint=str(ckpt), kind=mcfg.family, ids=list(test.ids),
               pred=out["logits"].argmax(1).tolist())
    return res
