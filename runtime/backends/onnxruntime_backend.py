"""onnxruntime: the CPU execution provider everywhere, the CUDA EP when onnxruntime-gpu is installed.

CPU sessions run with ``intra_op_num_threads`` = the core budget given (``esccs infer`` passes cores minus busy reader
threads) and thread spinning off: spinning workers steal the cores the GeoTIFF readers need (onnxruntime#13808). On
CUDA, inputs are bound with IOBinding from host arrays (one H2D copy per input) and outputs copied back once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from esccs._deps import lazy_import
from esccs.runtime.model import BackendUnavailableError, ModelError, ModelInfo, default_threads
from esccs.spec import INPUT_NAMES, OUTPUT_NAMES

GPU_HINT = "pip uninstall -y onnxruntime && pip install 'esccs[gpu]' (onnxruntime-gpu)"


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers in priority order for ``device`` (``auto`` takes CUDA when it is available).

    Raises:
        BackendUnavailableError: ``cuda`` asked for but this onnxruntime has no CUDA EP.
    """
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise BackendUnavailableError(f"onnxruntime here has no CUDA execution provider ({', '.join(available)}): "
                                      f"{GPU_HINT}")
    if device == "cuda" or (device == "auto" and has_cuda):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """An ``InferenceSession`` over an esccs ONNX file (inputs ``optical``, ``sar``; three outputs)."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None, spinning: bool = False) -> None:
        ort = lazy_import("onnxruntime", "ONNX inference")
        providers = providers_for(device, ort.get_available_providers())
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or default_threads())
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(os.fspath(path), so, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidGraph classes
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(path, f"onnxruntime cannot load it ({msg[:200]})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ModelError(path, f"not an esccs dual-modality model (inputs {inputs}, outputs {outputs}; expected "
                                   f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)})")
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.max_batch = None
        self.settings = {"providers": self.session.get_providers(), "intra_op_threads": so.intra_op_num_threads,
                         "spinning": spinning, "onnxruntime": ort.__version__}
        self._io = self.session.io_binding() if self.device == "cuda" else None

    def metadata(self) -> dict[str, str]:
        """The model's ``metadata_props`` as onnxruntime reads them (no ``onnx`` package needed)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, optical: np.ndarray, sar: np.ndarray) -> dict[str, np.ndarray]:
        """One batch; see :class:`esccs.runtime.model.Backend`."""
        feeds = {"optical": np.ascontiguousarray(optical, np.float32), "sar": np.ascontiguousarray(sar, np.float32)}
        if self._io is None:
            return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))
        io = self._io
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, arr in feeds.items():
            io.bind_cpu_input(name, arr)
        for name in OUTPUT_NAMES:
            io.bind_output(name, "cuda")
        self.session.run_with_iobinding(io)
        return dict(zip(OUTPUT_NAMES, io.copy_outputs_to_cpu()))

    def close(self) -> None:
        """Drop the session."""
        self.session = None


def load(path: Path, device: str = "auto", threads: int | None = None, **options: Any
         ) -> tuple[ModelInfo, OnnxRuntimeBackend]:
    """Open ``path``; its ``metadata_props`` become the :class:`ModelInfo` (refused without them)."""
    unknown = set(options) - {"spinning"}
    if unknown:
        raise BackendUnavailableError(f"the onnxruntime backend takes no option {sorted(unknown)[0]!r}")
    backend = OnnxRuntimeBackend(path, device, threads, bool(options.get("spinning", False)))
    return ModelInfo.from_metadata(path, backend.metadata()), backend
