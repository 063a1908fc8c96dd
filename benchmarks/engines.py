"""Backends under benchmark, behind one small interface: load, stage a host batch, run it with stage laps.

Every engine takes the same RAW tiles (optical DN, SAR dB) and applies the model's own preprocessing:

* ``torch`` (+ ``torch-compile``; ``torch-cudagraphs`` on CUDA): the checkpoint wrapped as ``esccs export`` wraps it,
  with the normalisation in the module (:func:`esccs.export.onnx.build_module`). ``fp16`` / ``bf16`` are autocast
  on CUDA only. Eager fp32 is the reference of every comparison.
* ``onnxruntime`` (fp32, the model ``M``), ``onnxruntime-int8`` (``M``'s ``.int8.onnx`` sibling) and ``tensorrt``
  (``M``'s ``.engine`` / ``.<precision>.engine`` sibling): loaded with :func:`esccs.runtime.load_model`, so the
  report measures what ``esccs infer`` runs. The runtime normalises raw tiles itself when the graph does not (its
  numpy preprocessing is timed as the ``preprocess`` stage).

``run`` laps ``h2d`` / ``compute`` / ``d2h`` on the clock (``preprocess`` and ``compute`` for runtime engines, whose
backends take and return host arrays) and returns the ``probs`` array. :meth:`Engine.runtime_model` gives a runtime
engine's :class:`esccs.runtime.Model`, which the end-to-end measurement hands to :func:`esccs.runtime.run_inference`
(the torch engines have none: ``esccs infer`` does not run them).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from esccs.runtime.model import default_threads
from esccs.spec import INPUT_NAMES

BACKENDS = ("torch", "torch-compile", "torch-cudagraphs", "onnxruntime", "onnxruntime-int8", "tensorrt")
#: precisions each backend can run (requested precisions outside this set are not crossed with the backend)
PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "torch-compile": ("fp32", "fp16", "bf16"),
              "torch-cudagraphs": ("fp32", "fp16", "bf16"), "onnxruntime": ("fp32",),
              "onnxruntime-int8": ("int8",), "tensorrt": ("fp32", "fp16", "int8")}
#: benchmark backend -> the runtime backend that runs its artifact
RUNTIME_BACKENDS = {"onnxruntime": "onnxruntime", "onnxruntime-int8": "onnxruntime", "tensorrt": "tensorrt"}

__all__ = ["BACKENDS", "PRECISIONS", "BackendError", "Engine", "RuntimeEngine", "TorchEngine", "default_threads",
           "engine_path", "int8_sibling", "load_engine", "one_line"]


class BackendError(Exception):
    """A backend that cannot run here; its message is the row's one-line error."""


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 240 characters; a :class:`BackendError` without its type)."""
    text = str(err).strip()
    msg = text.splitlines()[0] if text else ""
    if isinstance(err, BackendError):
        return msg[:240]
    return f"{type(err).__name__}: {msg}"[:240]


class Engine:
    """A loaded backend.

    Attributes:
        backend: backend name (:data:`BACKENDS`).
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        device: ``cpu`` or ``cuda``.
        info: artifact, providers, thread settings, adapter used.
        load_s: seconds to load (checkpoint / session / engine), reported apart from steady state.
        stream: the CUDA stream the engine works on (torch on CUDA), timed with CUDA events; ``None`` = host timing.
    """

    stream: Any = None

    def __init__(self, backend: str, precision: str, device: str) -> None:
        self.backend, self.precision, self.device = backend, precision, device
        self.info: dict[str, Any] = {}
        self.load_s = 0.0

    def stage(self, batch: dict[str, np.ndarray]) -> Any:
        """Host-side preparation of a raw batch (contiguous float32; pinned tensors for torch on CUDA)."""
        return {k: np.ascontiguousarray(v, np.float32) for k, v in batch.items()}

    def run(self, staged: Any, clock: Any) -> np.ndarray:
        """Run one staged batch; lap its stages on ``clock``; return ``probs`` ``(B, K)``."""
        raise NotImplementedError

    def predict_probs(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """``probs`` of a raw batch (the accuracy pass; untimed)."""
        from esccs.benchmarks.timing import CudaClock, HostClock

        clock = CudaClock(self.stream) if self.stream is not None else HostClock()
        probs = self.run(self.stage(batch), clock)
        clock.finish()  # on CUDA: waits for the D2H copy of probs
        return probs

    def runtime_model(self) -> Any:
        """The :class:`esccs.runtime.Model` behind this engine, or ``None`` when the runtime does not run it."""
        return None

    def gpu_memory_mb(self) -> float | None:
        """Peak device memory of this backend (MB) where the backend itself can tell; else ``None`` (NVML)."""
        return None

    def reset_gpu_peak(self) -> None:
        """Start a new device-memory peak window."""

    def close(self) -> None:
        """Free the backend's resources."""


class RuntimeEngine(Engine):
    """An artifact loaded by :func:`esccs.runtime.load_model`: the same ``Model`` that ``esccs infer`` runs.

    Raw tiles in; ``Model.preprocess`` (identity when the graph has the preprocessing baked in) is the ``preprocess``
    stage and the backend call is ``compute`` (the runtime's backends take and return host arrays, so on a GPU their
    transfers are inside ``compute``).
    """

    def __init__(self, backend: str, path: Path, device: str, threads: int) -> None:
        from esccs.runtime import load_model

        super().__init__(backend, "", device)
        t0 = time.perf_counter()
        self.model = load_model(path, backend=RUNTIME_BACKENDS[backend], device=device, threads=threads)
        self.load_s = time.perf_counter() - t0
        rb = self.model.backend
        self.precision = self.model.precision
        self.device = rb.device
        baked = self.model.info.preprocessing_baked
        self.info = {"adapter": "esccs.runtime.load_model (what esccs infer runs)", "artifact": str(path),
                     "artifact_mb": round(path.stat().st_size / 1e6, 2), "runtime_backend": rb.name,
                     "inputs": "raw DN / dB; " + ("preprocessing in the graph" if baked else
                                                  "normalised by the runtime (numpy, timed as preprocess)"),
                     **{f"backend.{k}": v for k, v in (rb.settings or {}).items()}}
        if rb.device == "cuda":
            self.info["transfers"] = "inside compute (the runtime backend takes and returns host arrays)"

    def run(self, staged: Any, clock: Any) -> np.ndarray:
        """``Model.preprocess`` (lap ``preprocess``), then the backend in ``max_batch`` chunks (lap ``compute``).

        The same two steps as ``Model.predict``, timed apart.
        """
        optical, sar = self.model.preprocess(staged["optical"], staged["sar"])
        clock.lap("preprocess")
        backend = self.model.backend
        step = backend.max_batch or len(optical)
        parts = [backend.run(optical[i:i + step], sar[i:i + step])["probs"] for i in range(0, len(optical), step)]
        clock.lap("compute")
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def predict_probs(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """``Model.predict(...)["probs"]``: the runtime's public call."""
        return np.asarray(self.model.predict(batch["optical"], batch["sar"])["probs"])

    def runtime_model(self) -> Any:
        """The loaded :class:`esccs.runtime.Model` itself."""
        return self.model

    def close(self) -> None:
        """Release the runtime backend."""
        self.model.close()


class TorchEngine(Engine):
    """The checkpoint in PyTorch: eager, ``torch.compile`` or CUDA graphs (compile ``reduce-overhead``)."""

    def __init__(self, backend: str, checkpoint: Path | None, precision: str, device: str, threads: int) -> None:
        import torch

        super().__init__(backend, precision, device)
        if checkpoint is None:
            raise BackendError("no checkpoint: pass --checkpoint (the .safetensors the ONNX was exported from)")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("--device cuda: no CUDA GPU is visible to torch")
        if precision in ("fp16", "bf16") and device != "cuda":
            raise BackendError(f"{precision} autocast runs on CUDA only (this run is on CPU)")
        if backend == "torch-cudagraphs" and device != "cuda":
            raise BackendError("CUDA graphs need --device cuda")
        if precision not in PRECISIONS[backend]:
            raise BackendError(f"{backend} runs {', '.join(PRECISIONS[backend])}, not {precision}")
        if device == "cpu":
            torch.set_num_threads(threads)
        self.torch = torch
        t0 = time.perf_counter()
        self.module, baked = self._build(checkpoint, backend)
        self.module = self.module.to(device)
        self.load_s = time.perf_counter() - t0
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.stream = torch.cuda.Stream() if device == "cuda" else None
        self.info = {"adapter": "benchmarks torch engine (export wrapper, as esccs export traces it)",
                     "artifact": str(checkpoint), "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
                     "autocast": str(self.dtype).replace("torch.", "") if self.dtype else None,
                     "inputs": "raw DN / dB; " + ("normalisation in the module" if baked else
                                                  "checkpoint has no normalisation: fed as read"),
                     "mode": {"torch": "eager", "torch-compile": "torch.compile (default mode)",
                              "torch-cudagraphs": "torch.compile(mode='reduce-overhead')"}[backend]}
        self._dev: dict[tuple, Any] = {}

    def _build(self, checkpoint: Path, backend: str) -> tuple[Any, bool]:
        import torch

        from esccs.export.onnx import build_module
        from esccs.models import load_checkpoint

        model, cfg, _ = load_checkpoint(checkpoint)
        if cfg.family != "dual":
            raise BackendError(f"{checkpoint} is a {cfg.name} classifier, not the dual-branch model M was exported "
                               "from")
        norm = cfg.normalization or {}
        baked = all(k in norm for k in INPUT_NAMES)
        module = build_module(model.eval(), cfg, preprocess=baked).eval()
        if backend == "torch-compile":
            module = torch.compile(module, dynamic=False)
        elif backend == "torch-cudagraphs":
            module = torch.compile(module, mode="reduce-overhead", dynamic=False)
        return module, baked

    def stage(self, batch: dict[str, np.ndarray]) -> Any:
        """Host tensors (pinned on CUDA, so copies are asynchronous)."""
        out = {k: self.torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in batch.items()}
        return {k: v.pin_memory() for k, v in out.items()} if self.device == "cuda" else out

    def _forward(self, optical: Any, sar: Any) -> Any:
        torch = self.torch
        if self.device == "cpu":
            return self.module(optical, sar)
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None):
            return self.module(optical, sar)

    def run(self, staged: Any, clock: Any) -> np.ndarray:
        """Forward under ``inference_mode`` (and autocast); on CUDA, H2D and D2H on the working stream."""
        torch = self.torch
        if self.device == "cpu":
            with torch.inference_mode():
                probs = self._forward(staged["optical"], staged["sar"])[1].numpy()
            clock.lap("compute")
            return probs
        with torch.cuda.stream(self.stream), torch.inference_mode():
            dev = self._buffers(staged)
            dev["optical"].copy_(staged["optical"], non_blocking=True)
            dev["sar"].copy_(staged["sar"], non_blocking=True)
            clock.lap("h2d")
            probs = self._forward(dev["optical"], dev["sar"])[1]
            clock.lap("compute")
            if "probs" not in dev:
                dev["probs"] = torch.empty(tuple(probs.shape), dtype=torch.float32, pin_memory=True)
            dev["probs"].copy_(probs.float(), non_blocking=True)
            clock.lap("d2h")
        clock.wait()
        return dev["probs"].numpy().copy()

    def _buffers(self, staged: dict) -> dict:
        """Device input buffers and a pinned host output buffer per batch shape (stable addresses for graphs)."""
        key = tuple(staged["optical"].shape) + tuple(staged["sar"].shape)
        if key not in self._dev:
            self._dev[key] = {k: self.torch.empty_like(v, device="cuda") for k, v in staged.items()}
        return self._dev[key]

    def gpu_memory_mb(self) -> float | None:
        """``torch.cuda.max_memory_allocated`` since the last reset (MB)."""
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.device == "cuda" else None

    def reset_gpu_peak(self) -> None:
        """Reset torch's allocator peak."""
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def close(self) -> None:
        """Drop the module and the device buffers."""
        self.module, self._dev = None, {}
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


def _stem(model: Path) -> str:
    return model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.stem


def int8_sibling(model: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (the INT8 export's suffix)."""
    return model.with_name(_stem(model) + ".int8.onnx")


def engine_path(model: Path, precision: str) -> Path:
    """The TensorRT engine for ``precision``: ``model.engine`` (fp32) or ``model.<precision>.engine``."""
    return model.with_name(_stem(model) + (".engine" if precision == "fp32" else f".{precision}.engine"))


def load_engine(backend: str, precision: str, *, model: Path, checkpoint: Path | None, int8_model: Path | None,
                device: str, threads: int) -> Engine:
    """Load one backend at one precision.

    Raises:
        BackendError: the backend cannot run here (missing package, artifact or GPU; unsupported precision).
        EsccsError: the runtime refused the artifact (its one-line reason).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if precision not in PRECISIONS[backend]:
        raise BackendError(f"{backend} runs {', '.join(PRECISIONS[backend])}, not {precision}")
    if backend.startswith("torch"):
        return TorchEngine(backend, checkpoint, precision, device, threads)
    if backend == "onnxruntime":
        path = model
    elif backend == "onnxruntime-int8":
        path = int8_model or int8_sibling(model)
        if not path.is_file():
            raise BackendError(f"INT8 model not found: {path} (esccs export CKPT --format onnx-int8 --data DIR)")
    else:
        if device != "cuda":
            raise BackendError("tensorrt runs on a CUDA GPU only (this run is --device cpu)")
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendError("tensorrt is not installed (pip install 'esccs[gpu]')")
        path = engine_path(model, precision)
        if not path.is_file():
            raise BackendError(f"TensorRT engine not found: {path} (esccs export CKPT --format trt --precision "
                               f"{precision} --out {path.name})")
    eng = RuntimeEngine(backend, path, device, threads)
    if eng.precision != precision:
        eng.close()
        raise BackendError(f"{path.name} is {eng.precision}, not {precision} (its metadata says so)")
    return eng
