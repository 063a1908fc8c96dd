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


# ----------------------------------------------------------------------------------- data-parallel scaling (torchrun)
GOAL_DDP_EFFICIENCY = 0.8


def ddp_worker(out: Path, arch: str, width: int, size: int, batch: int, samples: int, epochs: int) -> None:
    """One torchrun rank of :func:`bench_ddp`: the real Trainer (augmentation, DDP, per-epoch seeding), random data.

    Rank 0 leaves the run's ``log.csv`` in ``out`` (samples/s over every rank, per epoch).
    """
    from esccs.train import distributed as ddp
    from esccs.train.config import LoopConfig
    from esccs.train.loop import Trainer

    ddp.init("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 10, size, size, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    torch.manual_seed(0)
    model = create_model(arch, width=width, patch_size=size, in_chans=10, n_classes=10)

    def step(m, b):
        z = m(b["optical"])
        return F.cross_entropy(z, b["target"]), z, {}

    cfg = LoopConfig(epochs=epochs, batch_size=batch, select="last")
    Trainer(model, {"optical": x, "target": y}, step, cfg, Path(out), "bench", progress=False).fit()
    ddp.shutdown()


def bench_ddp(nprocs: tuple[int, ...] = (1, 2), arch: str = "resnet10", width: int = 16, size: int = 32,
              batch: int = 64, samples: int = 512, epochs: int = 3, rounds: int = 2) -> dict:
    """Samples/s of the training loop with 1, 2, ... torchrun processes (one thread each) and scaling efficiency.

    Each run is ``python -m torch.distributed.run --standalone --nproc_per_node N -m esccs.benchmarks.train``;
    the figure of a run is the median samples/s of its epochs after the first (start-up and warm-up left out),
    the runs alternate over ``nprocs`` for ``rounds`` rounds, and the median run per N is reported. Efficiency of
    N processes = samples/s(N) / (N x samples/s(1)); same global batch, so the same SGD steps.
    """
    import os
    import subprocess
    import sys
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load = [round(os.getloadavg()[0], 2)]
    runs: dict[int, list[float]] = {n: [] for n in nprocs}
    with tempfile.TemporaryDirectory(prefix="esccs-ddp-bench-") as tmp:
        for r in range(rounds):
            for n in nprocs:
                out = Path(tmp) / f"r{r}_n{n}"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
                       "esccs.benchmarks.train", str(out), arch, str(width), str(size), str(batch), str(samples),
                       str(epochs)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd[2:])} failed: {proc.stderr.strip().splitlines()[-1:]}")
                with open(out / "log.csv", newline="") as f:
                    sps = [float(row["samples_per_s"]) for row in csv.DictReader(f)][1:]
                runs[n].append(statistics.median(sps))
    load.append(round(os.getloadavg()[0], 2))
    sps = {n: statistics.median(v) for n, v in runs.items()}
    base = sps.get(1)
    rows = [{"nproc": n, "samples_per_s": round(sps[n], 1), "runs": [round(v, 1) for v in runs[n]],
             "efficiency": round(sps[n] / (n * base), 3) if base else None} for n in nprocs]
    eff = [r["efficiency"] for r in rows if r["nproc"] > 1 and r["efficiency"] is not None]
    return {"arch": arch, "width": width, "size": size, "global_batch": batch, "samples": samples, "epochs": epochs,
            "rounds": rounds, "threads_per_process": 1, "backend": "gloo", "cores": os.cpu_count(),
            "load_average_1min": load, "shared": load[0] > 0.5, "rows": rows,  # busy before it started
            "goal": f"scaling efficiency >= {GOAL_DDP_EFFICIENCY} on 2 CPU processes",
            "meets_goal": bool(eff) and min(eff) >= GOAL_DDP_EFFICIENCY}


def format_ddp(result: dict) -> str:
    """Markdown table of :func:`bench_ddp`."""
    lines = [f"Data-parallel training (torchrun, {result['backend']}, {result['threads_per_process']} thread per "
             f"process; {result['arch']} width {result['width']}, {result['size']} px, global batch "
             f"{result['global_batch']}, {result['samples']} samples x {result['epochs']} epochs, first epoch left "
             f"out; {result['rounds']} alternating rounds, median):", "",
             "| processes | samples/s | runs | scaling efficiency |", "|---|---|---|---|"]
    lines += [f"| {r['nproc']} | {r['samples_per_s']} | {', '.join(map(str, r['runs']))} | {r['efficiency']} |"
              for r in result["rows"]]
    lines += ["", f"goal: {result['goal']}: {'met' if result['meets_goal'] else 'not met'}"]
    if result.get("load_average_1min"):
        lines += ["", f"1-minute load average before / after: {' / '.join(map(str, result['load_average_1min']))} "
                      f"on {result['cores']} cores" + ("; the machine was shared with other jobs, so the efficiency is "
                                                      "a lower bound" if result.get("shared") else "")]
    if result.get("command"):
        lines += ["", f"`{result['command']}`"]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines)


if __name__ == "__main__":  # a rank of bench_ddp (started by torchrun)
    import sys

    o, a, w, s, b, n, e = sys.argv[1:8]
    ddp_worker(Path(o), a, int(w), int(s), int(b), int(n), int(e))
