"""The issue's performance goals, judged from one report: met / not met / not measured, each with why.

CPU: onnxruntime fp32 >= 1.6x torch eager at batch 32; onnxruntime INT8 >= 2.5x torch eager with <= 1 point OA loss;
``esccs infer`` end to end >= 0.85x backend-only on 2 cores. GPU: best runnable backend >= 4x torch eager fp32 at
batch 64; fused ops >= 2x eager and >= 70 % of HBM bandwidth (``esccs benchmark ops``). All speedups are
backend-only throughput ratios measured side by side in the same run.
"""

from __future__ import annotations

from typing import Any

GOAL_ORT_FP32, GOAL_ORT_INT8, GOAL_OA_LOSS, GOAL_E2E, GOAL_GPU = 1.6, 2.5, 0.01, 0.85, 4.0
GOAL_BATCH_CPU, GOAL_BATCH_GPU = 32, 64
#: the goals are judged only on runs that time each row at least this long (the command's default ``--min-time``);
#: a shorter run (``make demo``'s 0.3 s) shows its figures with the status "not judged"
GOAL_MIN_TIME = 1.0


def _row(rows: list[dict], backend: str, precision: str, batch: int) -> dict | None:
    for r in rows:
        if (r["backend"], r["precision"], r["batch"]) == (backend, precision, batch):
            return r
    return None


def _context_note(report: dict[str, Any], *rows: dict | None) -> str:
    """Machine load and instability, which explain many a missed goal on a shared 2-core box."""
    env = report.get("environment", {})
    load, cores = env.get("load_average_1_5_15"), env.get("threads", {}).get("affinity_cores")
    notes = []
    if load and cores and load[0] > 0.75 * cores:
        notes.append(f"load average {load[0]} on {cores} cores during the run (other jobs share the CPU)")
    unstable = [f"{r['backend']} {r['precision']}" for r in rows if r and r.get("unstable")]
    if unstable:
        notes.append(f"unstable timings (CoV > 2.5 %): {', '.join(unstable)}")
    return "; ".join(notes)


def _speedup_goal(report: dict, name: str, backend: str, precision: str, goal: float, batch: int) -> dict:
    rows = report["rows"]
    ref, r = _row(rows, "torch", "fp32", batch), _row(rows, backend, precision, batch)
    out: dict[str, Any] = {"goal": name, "target": goal, "value": None}
    missing = [f"{b} {p}" for b, p, x in (("torch", "fp32", ref), (backend, precision, r))
               if x is None or x["status"] != "ok"]
    if missing:
        return {**out, "status": "not measured", "why": f"no batch-{batch} row for {', '.join(missing)} in this run"}
    v = r["throughput"] / ref["throughput"]
    why = (f"{r['throughput']:.1f} vs {ref['throughput']:.1f} tiles/s (p50 {r['latency_ms']['p50']:.2f} vs "
           f"{ref['latency_ms']['p50']:.2f} ms per batch of {batch})")
    note = _context_note(report, ref, r)
    return {**out, "value": round(v, 3), "status": "met" if v >= goal else "not met",
            "why": why + (f"; {note}" if note else "")}


def _int8_goal(report: dict) -> dict:
    g = _speedup_goal(report, f"onnxruntime INT8 >= {GOAL_ORT_INT8}x torch eager (batch {GOAL_BATCH_CPU}) with "
                      "<= 1 point OA loss", "onnxruntime-int8", "int8", GOAL_ORT_INT8, GOAL_BATCH_CPU)
    ref = _row(report["rows"], "torch", "fp32", GOAL_BATCH_CPU)
    r = _row(report["rows"], "onnxruntime-int8", "int8", GOAL_BATCH_CPU)
    if g["status"] == "not measured" or ref.get("oa") is None or r.get("oa") is None:
        return g
    loss = ref["oa"] - r["oa"]
    g["oa_loss_points"] = round(100 * loss, 2)
    g["why"] += f"; OA {100 * r['oa']:.2f} % vs {100 * ref['oa']:.2f} % ({100 * loss:.2f} points lost)"
    if loss > GOAL_OA_LOSS:
        g["status"] = "not met"
    return g


def _e2e_goal(report: dict) -> dict:
    """``esccs infer``'s pipeline vs its backend alone: onnxruntime fp32 at batch 32 (else its largest e2e batch)."""
    goal = f"esccs infer end to end >= {GOAL_E2E}x backend-only on 2 cores (onnxruntime fp32)"
    out: dict[str, Any] = {"goal": goal, "target": GOAL_E2E, "value": None}
    cands = [r for r in report["rows"] if (r["backend"], r["precision"]) == ("onnxruntime", "fp32")
             and r["status"] == "ok" and (r.get("e2e") or {}).get("status") == "ok"]
    if not cands:
        return {**out, "status": "not measured", "why": "no onnxruntime fp32 row with an end-to-end measurement"}
    r = next((c for c in cands if c["batch"] == GOAL_BATCH_CPU), max(cands, key=lambda c: c["batch"]))
    e = r["e2e"]
    v = e["ratio_to_backend_only"]
    cores = report.get("environment", {}).get("threads", {}).get("affinity_cores")
    why = (f"batch {r['batch']}: {e['tiles_per_second']:.1f} tiles/s through run_inference ({e['readers']} reader "
           f"thread(s)) vs {r['throughput']:.1f} tiles/s backend-only, on {cores} cores")
    read_ms = ((report.get("data") or {}).get("read_cost") or {}).get("read_ms_per_tile")
    if read_ms:
        why += (f"; one reader thread alone reads {1e3 / read_ms:.0f} tiles/s ({read_ms:.2f} ms per tile), the "
                f"ceiling of a {e['readers']}-reader pipeline is about {e['readers'] * 1e3 / read_ms:.0f} tiles/s")
    note = _context_note(report, r)
    return {**out, "value": round(v, 3), "status": "met" if v >= GOAL_E2E else "not met",
            "why": why + (f"; {note}" if note else "")}


def _gpu_goals(report: dict) -> list[dict]:
    names = (f"GPU: best runnable backend >= {GOAL_GPU}x torch eager fp32 at batch {GOAL_BATCH_GPU}",
             "GPU: fused ops >= 2x eager and >= 70 % of HBM bandwidth (esccs benchmark ops)")
    if report["config"].get("device") != "cuda":
        return [{"goal": n, "status": "not measured", "value": None, "why": "no GPU in this run"} for n in names]
    rows = report["rows"]
    ref = _row(rows, "torch", "fp32", GOAL_BATCH_GPU)
    best = max((r for r in rows if r["batch"] == GOAL_BATCH_GPU and r["status"] == "ok"),
               key=lambda r: r["throughput"], default=None)
    if ref is None or ref["status"] != "ok" or best is None:
        g = {"goal": names[0], "status": "not measured", "value": None,
             "why": f"no torch fp32 row at batch {GOAL_BATCH_GPU} (add {GOAL_BATCH_GPU} to --batch-sizes)"}
    else:
        v = best["throughput"] / ref["throughput"]
        g = {"goal": names[0], "target": GOAL_GPU, "value": round(v, 3), "status": "met" if v >= GOAL_GPU
             else "not met", "why": f"best: {best['backend']} {best['precision']} {best['throughput']:.0f} vs "
                                    f"{ref['throughput']:.0f} tiles/s"}
    return [g, {"goal": names[1], "status": "not measured", "value": None,
                "why": "measured by `esccs benchmark ops`, not by this command"}]


def evaluate_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal with ``status`` (met / not met / not measured...), ``value``, ``target`` and ``why``."""
    cpu = [] if report["config"].get("device") == "cuda" else [
        _speedup_goal(report, f"onnxruntime fp32 >= {GOAL_ORT_FP32}x torch eager (batch {GOAL_BATCH_CPU})",
                      "onnxruntime", "fp32", GOAL_ORT_FP32, GOAL_BATCH_CPU),
        _int8_goal(report), _e2e_goal(report)]
    goals = cpu + _gpu_goals(report)
    min_time = report["config"].get("min_time")
    if min_time is not None and min_time < GOAL_MIN_TIME:
        short = (f"short run (--min-time {min_time:g} s < {GOAL_MIN_TIME:g} s): figure shown, goal judged only on a "
                 "full run (`esccs benchmark` at its defaults)")
        goals = [g if g["status"] == "not measured" else {**g, "status": "not judged", "verdict_if_judged": g["status"],
                 "why": f"{short}; {g['why']}"} for g in goals]
    return goals
