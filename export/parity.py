"""Parity of an exported graph against PyTorch: per-output error statistics, top-1 agreement, a verdict.

Statistics follow Polygraphy's comparator so the numbers mean the same: an element passes when it is within
``atol`` *or* within ``rtol`` of the reference magnitude (it fails only when it exceeds both); max, mean, median
and p99 absolute errors are reported per output. The reference is always the eval-mode PyTorch model on
*normalised* inputs, so a graph with baked preprocessing (fed raw DN / dB) is checked end to end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from esccs.export.onnx import OUTPUT_NAMES
from esccs.export.tiles import Tiles

#: precision -> pass criteria (the fp32 goal of the export issue; reduced precisions by top-1 agreement)
GOALS: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_logit": 1e-4, "top1_agreement": 1.0},
    "fp16": {"top1_agreement": 0.995},
    "bf16": {"top1_agreement": 0.99},
    "int8": {"top1_agreement": 0.97},
}
ATOL = RTOL = 1e-5


def ort_session(path: str | os.PathLike, threads: int = 0):
    """A CPU onnxruntime session (``threads=0``: onnxruntime's default, one per physical core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_ort(session, feeds: dict[str, np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    """Run ``session`` over ``feeds`` in chunks of ``batch``; outputs by name."""
    n = len(next(iter(feeds.values())))
    parts = [session.run(list(OUTPUT_NAMES), {k: v[i:i + batch] for k, v in feeds.items()})
             for i in range(0, n, batch)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(OUTPUT_NAMES)}


def run_torch(model, tiles: Tiles, batch: int = 64) -> dict[str, np.ndarray]:
    """The eval-mode PyTorch reference on normalised tiles: ``ExportWrapper(model)`` outputs by name."""
    import torch

    from esccs.models import ExportWrapper

    wrapper = ExportWrapper(model.eval()).eval()
    x = tiles.normalized
    outs = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            outs.append([t.numpy() for t in wrapper(torch.from_numpy(x["optical"][i:i + batch]),
                                                    torch.from_numpy(x["sar"][i:i + batch]))])
    return {name: np.concatenate([o[j] for o in outs]) for j, name in enumerate(OUTPUT_NAMES)}


def error_stats(ref: np.ndarray, got: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> dict[str, float]:
    """Polygraphy-style statistics of ``|got - ref|``."""
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    ok = (diff <= atol) | (diff <= rtol * np.abs(ref))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "median_abs": float(np.median(diff)),
            "p99_abs": float(np.quantile(diff, 0.99)), "elementwise_pass": float(ok.mean()),
            "nan": int(np.isnan(got).sum())}


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], precision: str = "fp32") -> dict[str, Any]:
    """Compare outputs by name; add top-1 agreement and the verdict against :data:`GOALS`."""
    per = {name: error_stats(ref[name], got[name]) for name in OUTPUT_NAMES}
    top1 = float((ref["logits"].argmax(1) == got["logits"].argmax(1)).mean())
    goal = GOALS[precision]
    failures = []
    if per["logits"]["max_abs"] > goal.get("max_abs_logit", np.inf) or per["logits"]["nan"]:
        failures.append(f"max |d logit| {per['logits']['max_abs']:.2e} > {goal.get('max_abs_logit', 0):.0e}")
    if top1 < goal["top1_agreement"]:
        failures.append(f"top-1 agreement {top1:.2%} < {goal['top1_agreement']:.1%}")
    return {"precision": precision, "goal": goal, "passed": not failures, "failures": failures,
            "max_abs_logit_diff": per["logits"]["max_abs"], "max_abs_prob_diff": per["probs"]["max_abs"],
            "max_abs_modality_weight_diff": per["modality_weights"]["max_abs"], "top1_agreement": top1,
            "tolerances": {"atol": ATOL, "rtol": RTOL}, "outputs": per}


def check_parity(onnx_path: str | os.PathLike, model, tiles: Tiles, preprocessed: bool,
                 precision: str = "fp32", batches: tuple[int, ...] | None = None) -> dict[str, Any]:
    """PyTorch vs onnxruntime (CPUExecutionProvider) on ``tiles``.

    Args:
        onnx_path: the exported graph.
        model: the eval-mode DualBranchNet it came from.
        tiles: the fixed parity batch (raw and normalised).
        preprocessed: whether the graph has baked preprocessing (then it is fed raw tiles).
        precision: picks the goal (``fp32``: max |d logit| <= 1e-4 and 100 % top-1).
        batches: run the graph at these batch sizes too (dynamic batch), default: the whole batch at once.

    Returns:
        The report of :func:`compare` plus ``tiles`` (source, count, ids), ``batch_sizes`` and ``provider``.
    """
    ref = run_torch(model, tiles)
    session = ort_session(onnx_path)
    feeds = tiles.feeds(preprocessed)
    sizes = batches or (len(tiles),)
    runs = [compare(ref, run_ort(session, feeds, batch=b), precision) for b in sizes]
    worst = max(runs, key=lambda r: (not r["passed"], r["max_abs_logit_diff"]))
    return {**worst, "tiles": {"source": tiles.source, "count": len(tiles), "ids": tiles.ids[:64]},
            "batch_sizes": list(sizes), "provider": "CPUExecutionProvider", "reference": "torch eval, fp32, CPU",
            "input": "raw DN / dB (baked preprocessing)" if preprocessed else "normalised"}


def parity_line(report: dict[str, Any]) -> str:
    """One printed line: verdict, max |d logit|, top-1 agreement, modality-weight and prob differences."""
    mark = "PASS" if report["passed"] else "FAIL"
    line = (f"parity {mark} ({report['precision']}, {report['tiles']['count']} tiles from "
            f"{report['tiles']['source']}): max |d logit| {report['max_abs_logit_diff']:.2e}, top-1 agreement "
            f"{report['top1_agreement']:.2%}, max |d modality weight| {report['max_abs_modality_weight_diff']:.2e}, "
            f"max |d prob| {report['max_abs_prob_diff']:.2e}")
    return line + ("" if report["passed"] else " -- " + "; ".join(report["failures"]))


def parity_path(artifact: str | os.PathLike) -> Path:
    """``<artifact minus its last suffix>.parity.json`` (``m.onnx`` -> ``m.parity.json``)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + ".parity.json")
