"""Training speed: samples/s of each stage's step, and the cost of step 2 (IRM + KD) over a plain dual step.

The issue's goal: a step-2 training step (dual model with grad_scale, irm_kd, unimodal_kd) costs at most 1.15x a
plain dual-branch step (same model, cross-entropy only), measured side by side in one run: the two are timed in
alternating rounds so drifts of the machine hit both alike. Also reads a run folder's ``log.csv`` files to report
the samples/s each stage actually achieved.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from esccs.benchmarks.ops import time_ms
from esccs.models import create_model
from esccs.ops import irm_kd, unimodal_kd

GOAL_STEP2_RATIO = 1.15


def _steps(arch: str, width: int, size: int, batch: int, device: str, n_classes: int = 10) -> dict[str, Callable]:
    """One optimiser step per stage kind on random data: source/aux classifier, plain dual, ESCCS step 2."""
    g = torch.Generator().manual_seed(0)
    opt_x = torch.randn(batch, 10, size, size, generator=g).to(device)
    sar_x = torch.randn(batch, 2, size, size, generator=g).to(device)
    y = torch.randint(0, n_classes, (batch,), generator=g).to(device)
    u, a_o, a_s = (torch.randn(batch, n_classes, generator=g).to(device) for _ in range(3))
    k = torch.rand(batch, 2, generator=g).to(device)
    cls = create_model(arch, width=width, patch_size=size, in_chans=10, n_classes=n_classes).to(device).train()
    dual = create_model(f"dual_{arch}", width=width, patch_size=size, n_classes=n_classes).to(device).train()
    opts = {m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (cls, dual)}

    def step(model, loss_fn):
        def run():
            opts[model].zero_grad(set_to_none=True)
            loss_fn().backward()
            opts[model].step()
        return run

    def step2():
        out = dual(opt_x, sar_x, k=k)
        return irm_kd(out["logits"], u, a_o, a_s).loss + 0.5 * unimodal_kd(out["logits_o"], out["logits_s"], a_o, a_s)

    return {
        "classifier (source / aux)": step(cls, lambda: F.cross_entropy(cls(opt_x), y)),
        "dual, plain CE": step(dual, lambda: F.cross_entropy(dual(opt_x, sar_x)["logits"], y)),
        "dual, ESCCS step 2": step(dual, step2),
    }


def bench_train(arch: str = "resnet10", width: int = 16, size: int = 32, batch: int = 64, device: str | None = None,
                rounds: int = 5, min_time: float = 1.0) -> dict:
    """Time each step kind in ``rounds`` alternating rounds; report ms/step, samples/s and the step-2 ratio."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = _steps(arch, width, size, batch, device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, run in steps.items():
            times[name] += time_ms(run, device, min_time=min_time / rounds, warmup=1 if times[name] else 3)
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        rows.append({"step": name, "ms_median": round(med, 2), "ms_p10": round(_q(t, 0.1), 2),
                     "ms_p90": round(_q(t, 0.9), 2), "samples_per_s": round(batch / med * 1e3, 1), "n": len(t)})
    by = {r["step"]: r for r in rows}
    ratio = by["dual, ESCCS step 2"]["ms_median"] / by["dual, plain CE"]["ms_median"]
    return {"device": device, "arch": arch, "width": width, "size": size, "batch": batch,
            "threads": torch.get_num_threads(), "rows": rows, "step2_over_plain": round(ratio, 3),
            "goal": f"step 2 <= {GOAL_STEP2_RATIO}x a plain dual step", "meets_goal": ratio <= GOAL_STEP2_RATIO}


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def stage_speeds(run: str | Path) -> list[dict]:
    """Samples/s each stage of a run achieved (median over its epochs, from ``RUN/*/log.csv``)."""
    out = []
    for log in sorted(Path(run).glob("**/log.csv")):
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            sps = [float(r["samples_per_s"]) for r in rows]
            out.append({"stage": str(log.parent.relative_to(run)), "epochs": len(rows),
                        "samples_per_s": round(statistics.median(sps), 1)})
    return out


def format_train(result: dict, stages: list[dict] | None = None) -> str:
    """Markdown tables of :func:`bench_train` (and :func:`stage_speeds`)."""
    lines = [f"Training steps on {result['device']} ({result['arch']} width {result['width']}, {result['size']} px, "
             f"batch {result['batch']}, {result['threads']} threads), alternating rounds:", "",
             "| step | ms median | p10 | p90 | samples/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['ms_median']} | {r['ms_p10']} | {r['ms_p90']} | {r['samples_per_s']} |"
              for r in result["rows"]]
    lines += ["", f"step 2 / plain dual = {result['step2_over_plain']} ({result['goal']}: "
                  f"{'met' if result['meets_goal'] else 'not met'})"]
    if stages:
        lines += ["", "| stage (from the run's logs) | epochs | samples/s |", "|---|---|---|"]
        lines += [f"| {s['stage']} | {s['epochs']} | {s['samples_per_s']} |" for s in stages]
    return "\n".join(lines)
