"""Thin torch wrappers over the torch-free readers: normalised tensors in the sample-dict convention.

``TorchSceneDataset(ds)[i]`` returns ``{"optical": (C, H, W) float32, "sar": (2, H, W) float32, "label": int64,
"cloud_mask": (H, W) uint8, "coverage": float32, "index": int64}`` with band-name normalisation applied, so it
plugs into a plain ``DataLoader``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from esccs.data.dataset import SceneDataset
from esccs.data.transforms import Normalizer
from esccs.spec import S1_BANDS


class TorchSceneDataset(Dataset):
    """A :class:`SceneDataset` (or a subset of its indices) as normalised tensors.

    Args:
        ds: the reader.
        indices: which samples (default: all).
        optical_norm: normaliser for the optical bands (default: official statistics of ``ds.bands``).
        sar_norm: normaliser for VV, VH (default: official statistics).
        augment: random flips and 90-degree rotations (same for every modality of a sample).
        seed: seed of the augmentation stream.
    """

    def __init__(self, ds: SceneDataset, indices=None, optical_norm: Normalizer | None = None,
                 sar_norm: Normalizer | None = None, augment: bool = False, seed: int = 0) -> None:
        self.ds = ds
        self.indices = list(range(len(ds))) if indices is None else list(indices)
        self.optical_norm = optical_norm or Normalizer.for_bands(ds.bands)
        self.sar_norm = sar_norm or Normalizer.for_bands(S1_BANDS)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i = self.indices[k]
        s = self.ds.read(i)
        opt = self.optical_norm(s["optical"])
        sar = self.sar_norm(s["sar"]) if "sar" in s else np.zeros((2, *opt.shape[1:]), np.float32)
        mask = s.get("cloud_mask", np.zeros(opt.shape[1:], np.uint8))
        if self.augment:
            rng = np.random.default_rng([self.seed, i, torch.initial_seed() % (2 ** 32)])
            rot, flip = int(rng.integers(4)), bool(rng.integers(2))
            opt, sar, mask = (_aug(a, rot, flip) for a in (opt, sar, mask))
        label = s.get("label", -1)
        return {"optical": torch.from_numpy(np.ascontiguousarray(opt)),
                "sar": torch.from_numpy(np.ascontiguousarray(sar)),
                "cloud_mask": torch.from_numpy(np.ascontiguousarray(mask)),
                "label": torch.as_tensor(label, dtype=torch.float32 if np.ndim(label) else torch.int64),
                "coverage": torch.tensor(float(s.get("coverage", 0.0))), "index": torch.tensor(i)}


def _aug(a: np.ndarray, rot: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, rot, axes=(-2, -1))
    return a[..., ::-1] if flip else a
