"""Step-1 pseudo-label filters on the source model's logits (numpy; pluggable policies).

KDHN's exact rule is not public; the default (docs/method.md) keeps a sample when its max softmax probability is at
least ``tau`` and gives every predicted class a floor of ``n_min = max(min_per_class, frac_per_class * predicted
count)`` most-confident samples, so rare classes are not starved. Other policies rank by entropy or by the top-1 /
top-2 logit margin; ``classwise_topq`` keeps the top ``q`` fraction of each predicted class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("maxprob", "entropy", "margin", "classwise_topq", "none")


@dataclass(frozen=True)
class FilterConfig:
    """How step 1 selects reliable pseudo-labels."""

    policy: str = "maxprob"
    tau: float = 0.9  # maxprob: min confidence; entropy: max normalised entropy is 1 - tau; margin: min logit gap
    min_per_class: int = 20
    frac_per_class: float = 0.05
    q: float = 0.5  # classwise_topq

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown filter policy {self.policy!r}; expected one of {', '.join(POLICIES)}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits in float64."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def reliability(logits: np.ndarray, policy: str) -> np.ndarray:
    """Per-sample reliability score ``(N,)`` (higher = more reliable) under a policy."""
    p = softmax(logits)
    if policy in ("maxprob", "classwise_topq", "none"):
        return p.max(1)
    if policy == "entropy":
        k = p.shape[1]
        h = -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)
        return 1.0 - h / np.log(k) if k > 1 else np.ones(len(p))
    if policy == "margin":
        top2 = np.sort(np.asarray(logits, np.float64), 1)[:, -2:] if logits.shape[1] > 1 else None
        return top2[:, 1] - top2[:, 0] if top2 is not None else np.full(len(p), np.inf)
    raise ValueError(f"unknown filter policy {policy!r}")


def select(logits: np.ndarray, cfg: FilterConfig = FilterConfig()) -> np.ndarray:
    """Indices of the kept samples (sorted), given source logits ``(N, K)``."""
    logits = np.asarray(logits)
    n = len(logits)
    if cfg.policy == "none" or n == 0:
        return np.arange(n)
    pred = logits.argmax(1)
    score = reliability(logits, cfg.policy)
    if cfg.policy == "classwise_topq":
        keep = np.zeros(n, bool)
    else:
        keep = score >= cfg.tau
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        if cfg.policy == "classwise_topq":
            floor = int(np.ceil(cfg.q * len(members)))
        else:
            floor = min(len(members), max(cfg.min_per_class, int(np.ceil(cfg.frac_per_class * len(members)))))
        if keep[members].sum() < floor:
            order = members[np.argsort(-score[members], kind="stable")]
            keep[order[:floor]] = True
    return np.flatnonzero(keep)


def filter_report(logits: np.ndarray, kept: np.ndarray, y_true: np.ndarray | None, classes, strata=None) -> dict:
    """Yield and pseudo-label precision (against held-back labels, evaluation only) per class and per stratum."""
    pred = np.asarray(logits).argmax(1)
    n = len(pred)
    mask = np.zeros(n, bool)
    mask[kept] = True
    out: dict = {"samples": n, "kept": int(mask.sum()), "yield": float(mask.mean()) if n else 0.0}
    if y_true is not None:
        y = np.asarray(y_true)
        out["precision_kept"] = float((pred[mask] == y[mask]).mean()) if mask.any() else float("nan")
        out["precision_all"] = float((pred == y).mean()) if n else float("nan")
    per_class = {}
    for c, name in enumerate(classes):
        m = pred == c
        entry = {"predicted": int(m.sum()), "kept": int((m & mask).sum())}
        if y_true is not None and (m & mask).any():
            entry["precision"] = float((y[m & mask] == c).mean())
        per_class[name] = entry
    out["per_class"] = per_class
    if strata is not None:
        s = np.asarray(strata)
        out["per_stratum"] = {str(k): {"samples": int((s == k).sum()), "kept": int((mask & (s == k)).sum()),
                                       **({"precision": float((pred[mask & (s == k)] == y[mask & (s == k)]).mean())}
                                          if y_true is not None and (mask & (s == k)).any() else {})}
                              for k in np.unique(s)}
    return out
