"""Data sets held in memory as normalised tensors: read the GeoTIFFs once, train many models on them.

On a CPU the readers would dominate a small model's step; a bank reads every sample once (threads: GDAL releases
the GIL) and then serves batches by indexing. Target labels ride along for evaluation only: the training code of
the transfer methods never reads ``labels`` of a target bank (``labels_eval_only`` is set for that part).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from esccs.data import open_dataset
from esccs.data.transforms import Normalizer
from esccs.errors import DataError
from esccs.spec import S1_BANDS


@dataclass
class Bank:
    """Samples of one part as tensors; ``optical`` is the part's optical (clear for source, cloudy for target)."""

    ids: list[str]
    optical: torch.Tensor  # (N, C, H, W) normalised
    sar: torch.Tensor  # (N, 2, H, W) normalised
    labels: torch.Tensor  # (N,) int64, -1 where unlabelled
    coverage: torch.Tensor  # (N,) cloud fraction (0 for the source)
    split: np.ndarray  # (N,) split names
    classes: tuple[str, ...]
    opt_norm: Normalizer
    sar_norm: Normalizer
    clear: torch.Tensor | None = None  # (N, C, H, W) clear optical of the target (evaluation / SPL only)
    labels_eval_only: bool = False
    meta: dict = field(default_factory=dict)
    groups: np.ndarray | None = None  # (N,) scene-group keys (patches of one scene overlap: split by group)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx) -> Bank:
        """A bank of the samples at ``idx`` (tensor, array or list of ints)."""
        idx = torch.as_tensor(np.asarray(idx, np.int64))
        take = (lambda t: None if t is None else t[idx])  # noqa: E731 - a local one-liner reads best here
        return replace(self, ids=[self.ids[i] for i in idx.tolist()], optical=take(self.optical),
                       sar=take(self.sar), labels=take(self.labels), coverage=take(self.coverage),
                       split=self.split[idx.numpy()], clear=take(self.clear),
                       groups=None if self.groups is None else self.groups[idx.numpy()])

    def empty(self) -> Bank:
        """A bank with no samples and this bank's shapes, classes and normalisers (reads no labels)."""
        return Bank([], self.optical[:0], self.sar[:0], torch.zeros(0, dtype=torch.long), self.coverage[:0],
                    self.split[:0], self.classes, self.opt_norm, self.sar_norm)

    def renormalized(self, opt_norm: Normalizer) -> Bank:
        """The bank with its optical images (and clear ones) normalised by ``opt_norm`` instead of ``self.opt_norm``.

        Exact for normalisers with the same bands and clip range: ``y' = (y s + m - m') / s'``.
        """
        old = self.opt_norm
        if tuple(opt_norm.bands) != tuple(old.bands) or tuple(opt_norm.clip) != tuple(old.clip):
            raise DataError(self.meta.get("root", "bank"), f"cannot renormalise bands {list(old.bands)} "
                            f"(clip {list(old.clip)}) with a normaliser of {list(opt_norm.bands)} "
                            f"(clip {list(opt_norm.clip)})")
        scale = torch.from_numpy(old.std / opt_norm.std).view(1, -1, 1, 1)
        shift = torch.from_numpy((old.mean - opt_norm.mean) / opt_norm.std).view(1, -1, 1, 1)
        remap = (lambda t: None if t is None else (t * scale + shift).float())  # noqa: E731
        return replace(self, optical=remap(self.optical), clear=remap(self.clear), opt_norm=opt_norm)

    def where(self, split: str) -> Bank:
        """The samples of one split."""
        return self.subset(np.flatnonzero(self.split == split))


def load_bank(root: str | Path, part: str | None, bands, *, with_clear: bool = False, workers: int = 4,
              progress: bool = True) -> Bank:
    """Read a part of a data set into a :class:`Bank` (optical normalised by band name, SAR by VV/VH)."""
    ds = open_dataset(root, part=part, bands=bands)
    if ds.skipped:
        print(f"warning: {len(ds.skipped)} files skipped in {ds.root} (esccs data info --check lists them)")
    clear_ds = open_dataset(root, part=part, bands=bands, optical="s2") if with_clear else None
    opt_norm, sar_norm = Normalizer.for_bands(bands), Normalizer.for_bands(S1_BANDS)

    def read(i: int):
        s = ds.read(i)
        if "sar" not in s:
            raise DataError(ds.samples[i].paths[ds.optical], "no SAR partner")
        c = clear_ds.read(i)["optical"] if clear_ds is not None else None
        return s, c

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers) as pool:
        rows = list(tqdm(pool.map(read, range(len(ds))), total=len(ds), desc=f"read {Path(ds.root).name}",
                         disable=None if progress else True, unit="sample", leave=False))  # None: off when piped
    opt = torch.from_numpy(np.stack([opt_norm(s["optical"]) for s, _ in rows]))
    sar = torch.from_numpy(np.stack([sar_norm(s["sar"]) for s, _ in rows]))
    labels = torch.tensor([int(s.get("label", -1)) if np.ndim(s.get("label", -1)) == 0 else -1 for s, _ in rows])
    cov = torch.tensor([float(s.get("coverage", 0.0)) for s, _ in rows], dtype=torch.float32)
    clear = torch.from_numpy(np.stack([opt_norm(c) for _, c in rows])) if with_clear else None
    groups = np.array(["/".join(map(str, s.group)) if s.group else s.id for s in ds.samples])
    return Bank([s["id"] for s, _ in rows], opt, sar, labels, cov, np.array([s["split"] or "train" for s, _ in rows]),
                tuple(ds.classes), opt_norm, sar_norm, clear, bool(ds.card.get("labels_eval_only", False)),
                {"root": str(ds.root), "layout": ds.layout, "optical": ds.optical}, groups)


def holdout(bank: Bank, fraction: float, seed: int = 0) -> tuple[Bank, Bank]:
    """Split a bank into (fit, held-out) by scene group, about ``fraction`` of the samples held out.

    Deterministic for a seed; labels are carried as they are (a target-train bank has none).
    """
    if fraction <= 0 or len(bank) < 2:
        return bank, bank.subset([])
    groups = bank.groups if bank.groups is not None else np.array(bank.ids)
    keys = sorted(set(groups.tolist()))
    order = np.random.default_rng(seed).permutation(len(keys))
    held: list[int] = []
    for k in order:
        if len(held) >= fraction * len(bank):
            break
        members = np.flatnonzero(groups == keys[k]).tolist()
        if len(held) + len(members) < len(bank):
            held += members
    held_set = set(held)
    return bank.subset([i for i in range(len(bank)) if i not in held_set]), bank.subset(sorted(held))
