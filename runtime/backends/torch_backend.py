"""The optional torch backend: a training checkpoint (``.safetensors``) run as it was exported.

The only runtime module allowed to import torch, and only when this backend is asked for. Preprocessing is the
runtime's (numpy, from the checkpoint's normalisation), so the same raw tiles feed every backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from esccs._deps import lazy_import
from esccs.runtime.model import BackendUnavailableError, ModelError, ModelInfo, default_threads
from esccs.spec import ARTIFACT_SCHEMA_VERSION, INPUT_NAMES, OUTPUT_NAMES


class TorchBackend:
    """``ExportWrapper(DualBranchNet)`` in eval mode under ``inference_mode``."""

    name = "torch"

    def __init__(self, wrapper, device: str, threads: int | None) -> None:
        self.torch = lazy_import("torch", "the torch backend")
        self.module, self.device, self.max_batch = wrapper, device, None
        if device == "cpu":
            self.torch.set_num_threads(int(threads or default_threads()))
        self.settings = {"torch": self.torch.__version__, "threads": self.torch.get_num_threads()}

    def run(self, optical: np.ndarray, sar: np.ndarray) -> dict[str, np.ndarray]:
        """One batch; see :class:`esccs.runtime.model.Backend`."""
        torch = self.torch
        with torch.inference_mode():
            o = torch.from_numpy(np.ascontiguousarray(optical, np.float32)).to(self.device)
            s = torch.from_numpy(np.ascontiguousarray(sar, np.float32)).to(self.device)
            return {n: t.float().cpu().numpy() for n, t in zip(OUTPUT_NAMES, self.module(o, s))}

    def close(self) -> None:
        """Drop the module."""
        self.module = None


def checkpoint_metadata(cfg: Any) -> dict[str, Any]:
    """The ONNX-style metadata of a checkpoint's resolved config (preprocessing done by the runtime)."""
    chans = dict(zip(INPUT_NAMES, (cfg.in_chans, cfg.sar_chans)))
    return {"esccs_schema_version": ARTIFACT_SCHEMA_VERSION, "classes": list(cfg.classes or []),
            "optical_bands": list(cfg.optical_bands or []), "sar_bands": list(cfg.sar_bands or []),
            "patch_size": cfg.patch_size, "preprocessing_baked": False, "normalization": cfg.normalization,
            "precision": "fp32", "model_config": json.dumps(cfg.to_dict()),
            "inputs": {name: ["batch", c, "height", "width"] for name, c in chans.items()}}


def load(path: Path, device: str = "auto", threads: int | None = None, **options: Any
         ) -> tuple[ModelInfo, TorchBackend]:
    """Rebuild the checkpoint's dual-branch model (refused for a single-modality classifier)."""
    if options:
        raise BackendUnavailableError(f"the torch backend takes no option {sorted(options)[0]!r}")
    # OpenMP workers that spin-wait steal the reader threads' cores (100x slower inside the pipeline on 2 cores);
    # passive waiting only takes effect when set before torch first loads its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch = lazy_import("torch", "the torch backend")
    from esccs.models import ExportWrapper, load_checkpoint

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda: torch sees no CUDA GPU")
    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    model, cfg, _ = load_checkpoint(path, map_location=dev)
    if cfg.family != "dual":
        raise ModelError(path, f"{cfg.name} is a single-modality classifier; the runtime runs dual-branch models")
    meta = checkpoint_metadata(cfg)
    if not meta["normalization"]:
        raise ModelError(path, "checkpoint has no normalisation statistics; the runtime cannot feed it raw tiles")
    return ModelInfo.from_metadata(path, meta), TorchBackend(ExportWrapper(model).eval(), dev, threads)
