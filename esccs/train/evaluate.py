"""Evaluate a method on the labelled target test split: scores and the imbalance diagnostics of docs/method.md.

Scores come overall, per cloud stratum and per finer coverage bin; the diagnostics are the accuracy of z^o and z^s
alone, the mean modality weights, and the mean IRM teacher weights pi and balancing coefficients k.
"""

from __future__ import annotations

import numpy as np

from esccs.metrics import COVERAGE_BINS, evaluate
from esccs.spec import CLOUD_STRATA
from esccs.train.bank import Bank


def _by_stratum(values: np.ndarray, coverage: np.ndarray, reduce) -> dict:
    out = {}
    for table in (CLOUD_STRATA, COVERAGE_BINS):
        for name, lo, hi in table:
            m = (coverage >= lo) & (coverage < hi)
            if m.any():
                out[name] = reduce(values[m])
    m = np.ones(len(coverage), bool)
    out["all"] = reduce(values[m])
    return out


def diagnostics(out: dict, bank: Bank, irm: dict | None = None) -> dict:
    """Imbalance diagnostics per stratum from a dual model's outputs (and the IRM quantities when given)."""
    cov = bank.coverage.numpy().astype(np.float64)
    y = bank.labels.numpy()
    diag: dict = {}
    if "logits_o" in out:
        for key in ("logits_o", "logits_s"):
            hit = (out[key].argmax(1).numpy() == y).astype(np.float64)
            diag[f"acc_{key[-1]}"] = _by_stratum(hit, cov, lambda v: float(v.mean()))
        diag["w_o"] = _by_stratum(out["w_o"].numpy(), cov, lambda v: float(v.mean()))
    if irm is not None:
        diag["pi"] = _by_stratum(irm["pi"].numpy(), cov, lambda v: [float(x) for x in v.mean(0)])
        diag["k"] = _by_stratum(irm["k"].numpy(), cov, lambda v: [float(x) for x in v.mean(0)])
        diag["rho_median"] = _by_stratum(irm["rho"].numpy(), cov, lambda v: float(np.median(v)))
    return diag


def evaluate_outputs(out: dict, bank: Bank, irm: dict | None = None) -> dict:
    """Scores of ``out["logits"]`` against the bank's (evaluation-only) labels, plus diagnostics."""
    if (bank.labels < 0).any():
        raise ValueError("evaluation needs labels for every test sample")
    pred = out["logits"].argmax(1).numpy()
    res = evaluate(bank.labels.numpy(), pred, len(bank.classes), bank.coverage.numpy())
    res["classes"] = list(bank.classes)
    res["diagnostics"] = diagnostics(out, bank, irm)
    return res


def summary_line(name: str, res: dict) -> str:
    """One line per method: OA and macro F1 overall and per stratum."""
    parts = [f"{name:22s} OA {100 * res['overall']['oa']:5.1f}  F1 {100 * res['overall']['macro_f1']:5.1f}"]
    for s in ("clear", "partial", "complete"):
        if s in res.get("strata", {}):
            parts.append(f"{s} {100 * res['strata'][s]['oa']:5.1f}")
    return "  ".join(parts)
