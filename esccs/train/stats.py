"""Paired comparisons for the accuracy table: bootstrap confidence intervals of accuracy differences.

Two methods evaluated on the same test patches of the same run (data set, training seed) give paired 0/1
correctness vectors. Within each run the test patches are resampled with replacement (the same draw for both
methods, so the pairing is kept); the runs' mean differences are averaged with equal weight (one run = one data
seed and training seed). The 2.5 and 97.5 percentiles of that average over the bootstrap draws are the 95 % interval.
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean accuracy difference ``a - b`` over runs and its bootstrap interval.

    Args:
        pairs: one ``(correct_a, correct_b)`` pair per run, equal-length 0/1 (or bool) vectors over that run's test
            patches (a run's patches may be a stratum's subset; an empty run is skipped).
        n_boot: bootstrap draws.
        seed: seed of the draws (deterministic).
        level: coverage of the interval.

    Returns:
        ``{"diff", "lo", "hi", "runs", "n"}``: the observed mean difference, the interval, the number of runs and of
        paired patches; NaNs when there is nothing to compare.
    """
    pairs = [(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in pairs if len(a)]
    for a, b in pairs:
        if a.shape != b.shape:
            raise ValueError(f"paired vectors differ in length: {a.shape} vs {b.shape}")
    if not pairs:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "runs": 0, "n": 0}
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    for a, b in pairs:
        d = a - b
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))
        boot += d[idx].mean(1)
    boot /= len(pairs)
    obs = float(np.mean([(a - b).mean() for a, b in pairs]))
    tail = (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return {"diff": obs, "lo": float(lo), "hi": float(hi), "runs": len(pairs), "n": int(sum(len(a) for a, _ in pairs))}
