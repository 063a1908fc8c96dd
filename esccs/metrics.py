"""Classification metrics in numpy (torch-free): OA, Cohen's kappa, F1, confusion matrix, per cloud stratum.

Shared by ``esccs eval``, the runtime and the benchmarks, so every number in every report is computed one way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from esccs.spec import CLOUD_STRATA

#: Finer cloud bins reported beside the paper's three strata.
COVERAGE_BINS: tuple[tuple[str, float, float], ...] = (
    ("0-5%", 0.0, 0.05), ("5-30%", 0.05, 0.30), ("30-60%", 0.30, 0.60), ("60-95%", 0.60, 0.95),
    (">95%", 0.95, 1.0 + 1e-9),
)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 confusion matrix, rows = truth, columns = prediction."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def scores(cm: np.ndarray) -> dict:
    """OA, Cohen's kappa, macro F1 and per-class F1 / precision / recall of a confusion matrix.

    Classes absent from both truth and prediction get F1 = NaN and are left out of the macro mean.
    """
    cm = cm.astype(np.float64)
    n = cm.sum()
    if n == 0:
        return {"n": 0, "oa": float("nan"), "kappa": float("nan"), "macro_f1": float("nan"), "f1": [],
                "precision": [], "recall": []}
    tp = np.diag(cm)
    pred, true = cm.sum(0), cm.sum(1)
    oa = tp.sum() / n
    pe = (pred * true).sum() / n ** 2
    kappa = (oa - pe) / (1 - pe) if pe < 1 else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(pred + true > 0, 2 * tp / (pred + true), np.nan)
    present = ~np.isnan(f1)
    return {"n": int(n), "oa": float(oa), "kappa": float(kappa),
            "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "f1": [None if np.isnan(v) else float(v) for v in f1], "precision": precision.tolist(),
            "recall": recall.tolist()}


def evaluate(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int,
             coverage: Sequence[float] | None = None) -> dict:
    """All scores, overall and per cloud stratum (clear / partial / complete) and per finer coverage bin."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    cm = confusion(y_true, y_pred, n_classes)
    out = {"overall": {**scores(cm), "confusion": cm.tolist()}}
    if coverage is not None:
        cov = np.asarray(coverage, np.float64)
        for key, table in (("strata", CLOUD_STRATA), ("bins", COVERAGE_BINS)):
            out[key] = {}
            for name, lo, hi in table:
                m = (cov >= lo) & (cov < hi)
                if m.any():
                    c = confusion(y_true[m], y_pred[m], n_classes)
                    out[key][name] = {**scores(c), "confusion": c.tolist()}
    return out
