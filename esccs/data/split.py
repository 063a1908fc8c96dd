"""Scene-grouped splits: patches of one (season, scene) overlap, so a split never cuts a scene."""

from __future__ import annotations

import numpy as np

from esccs.io.layouts import Sample, group_index


def grouped_split(samples: list[Sample], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split sample indices into (train, val) by scene group, about ``val_fraction`` of the samples in val.

    Deterministic for a seed; at least one group on each side when there are two or more groups.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    groups = group_index(samples)
    keys = sorted(groups, key=str)
    order = np.random.default_rng(seed).permutation(len(keys))
    target = val_fraction * len(samples)
    val: list[int] = []
    for k in order:
        if len(val) >= target:
            break
        if len(val) + len(groups[keys[k]]) < len(samples):  # never move every sample to val
            val += groups[keys[k]]
    val_set = set(val)
    return [i for i in range(len(samples)) if i not in val_set], sorted(val)


def assign_missing_splits(samples: list[Sample], val_fraction: float = 0.2, seed: int = 0,
                          names: tuple[str, str] = ("train", "val")) -> None:
    """Give samples without a split a scene-grouped ``train`` / ``val`` one (in place)."""
    todo = [s for s in samples if s.split is None]
    if not todo:
        return
    train, val = grouped_split(todo, val_fraction, seed)
    for i in train:
        todo[i].split = names[0]
    for i in val:
        todo[i].split = names[1]
