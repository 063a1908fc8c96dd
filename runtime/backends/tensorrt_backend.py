"""TensorRT engines through the named-tensor API, with cuda-python buffers (no torch, no pycuda).

Written against the documented TensorRT 10/11 Python API (``deserialize_cuda_engine``, ``num_io_tensors``,
``get_tensor_name/mode/dtype``, ``get_tensor_profile_shape``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3`` on a non-default stream) and the cuda-python runtime bindings (``cudaMalloc``,
``cudaMallocHost``, ``cudaMemcpyAsync``, stream capture into CUDA graphs). **Unverified here**: TensorRT cannot be
installed on our machines, so this module has only been checked for its pure parts (bucket choice, sidecar check).

How a batch runs: the engine's sidecar is checked *before* deserialising (TensorRT version, GPU); inputs are copied
into pinned host buffers, then H2D on the backend's own stream into one of two device input sets (double-buffered:
the next batch's copy may be enqueued while the previous one computes), the engine runs as a CUDA graph captured per
batch bucket (powers of two up to the profile's max; a partial batch is padded to its bucket), and outputs come back
D2H into pinned buffers. trtexec's recipe for graphs: one plain enqueue before capture; fall back to plain enqueue
when capture fails.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from esccs.errors import DependencyMissingError, EngineMismatchError
from esccs.io.engine_sidecar import check_engine_sidecar, read_engine_sidecar
from esccs.runtime.model import BackendUnavailableError, ModelError, ModelInfo
from esccs.spec import INPUT_NAMES, OUTPUT_NAMES


def import_tensorrt(purpose: str = "the tensorrt backend (also needs a CUDA GPU)"):
    """Import ``tensorrt`` or raise the one-line install hint naming ``purpose``."""
    try:
        import tensorrt
    except ImportError:
        raise DependencyMissingError("tensorrt", "gpu", purpose) from None
    return tensorrt


def collecting_logger(trt):
    """A ``tensorrt.ILogger`` that keeps error messages (``.errors``) for a one-line failure report.

    The one logger of esccs: the engine build in :mod:`esccs.export.tensorrt` and this backend both use it.
    """

    class Collect(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: D102 - TensorRT callback
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())

    return Collect()


def buckets(max_batch: int) -> list[int]:
    """Batch sizes a CUDA graph is captured for: powers of two below ``max_batch``, and ``max_batch`` itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


def bucket_for(n: int, sizes: list[int]) -> int:
    """The smallest bucket that holds ``n`` rows."""
    for b in sizes:
        if b >= n:
            return b
    raise ValueError(f"batch of {n} exceeds the engine's largest profile batch {sizes[-1]}")


def _cudart():
    """cuda-python's runtime bindings (``cuda.bindings.runtime`` in 12.6+/13, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise DependencyMissingError("cuda-python", "gpu", "TensorRT inference without torch") from None
    return cudart


def _check(result: tuple) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on an error code."""
    err, *values = result
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


def gpu_info(cudart=None) -> dict[str, str]:
    """``{"name", "compute_capability"}`` of CUDA device 0, from cuda-python (the one copy: export uses it too)."""
    cudart = cudart or _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


class _Buffer:
    """A pinned host array and its device twin."""

    def __init__(self, cudart, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.cudart, self.shape, self.dtype = cudart, shape, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.host_ptr = _check(cudart.cudaMallocHost(self.nbytes))
        ctype = np.ctypeslib.as_ctypes_type(self.dtype)
        self.host = np.ctypeslib.as_array(ctypes.cast(self.host_ptr, ctypes.POINTER(ctype)), shape)
        self.device = _check(cudart.cudaMalloc(self.nbytes))

    def h2d(self, stream, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.cudart.cudaMemcpyAsync(self.device, self.host_ptr, nbytes, kind, stream))

    def d2h(self, stream, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.cudart.cudaMemcpyAsync(self.host_ptr, self.device, nbytes, kind, stream))

    def free(self) -> None:
        self.cudart.cudaFree(self.device)
        self.cudart.cudaFreeHost(self.host_ptr)


class TensorRTBackend:
    """A deserialised engine with one execution context, two input buffer sets and one CUDA graph per bucket."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path, cuda_graphs: bool = True, host_code: bool = False) -> None:
        trt = import_tensorrt()
        self.trt, self.cudart = trt, _cudart()
        self.sidecar = check_engine_sidecar(path, trt.__version__, gpu_info(self.cudart))
        logger = collecting_logger(trt)
        runtime = trt.Runtime(logger)
        runtime.engine_host_code_allowed = bool(host_code or self.sidecar["compatibility"].get("version_compatible"))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"{path}: TensorRT could not load the engine: {' | '.join(logger.errors)[:400]}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted(INPUT_NAMES + OUTPUT_NAMES):
            raise ModelError(path, f"not an esccs dual-modality engine (tensors {names})")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking))
        shapes = {n: self.engine.get_tensor_profile_shape(n, 0) for n in INPUT_NAMES}  # (min, opt, max)
        self.max_batch = int(shapes["optical"][2][0])
        self.sizes = buckets(self.max_batch)
        dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.inputs = [{n: _Buffer(self.cudart, tuple(shapes[n][2]), dtypes[n]) for n in INPUT_NAMES}
                       for _ in range(2)]  # double-buffered
        for n in INPUT_NAMES:
            self.context.set_input_shape(n, tuple(shapes[n][2]))
        k = {n: int(self.context.get_tensor_shape(n)[1]) for n in OUTPUT_NAMES}
        self.outputs = {n: _Buffer(self.cudart, (self.max_batch, k[n]), dtypes[n]) for n in OUTPUT_NAMES}
        self.graphs: dict[tuple[int, int], Any] = {}
        self.use_graphs, self.slot = cuda_graphs, 0
        self.settings = {"tensorrt": trt.__version__, "max_batch": self.max_batch, "buckets": self.sizes,
                         "cuda_graphs": cuda_graphs, "gpu": self.sidecar["gpu"]}

    def inputs_shape(self, name: str) -> tuple[int, ...]:
        """The max-batch shape of input ``name``."""
        return self.inputs[0][name].shape

    def _bind(self, rows: int, slot: int) -> None:
        for n in INPUT_NAMES:
            self.context.set_input_shape(n, (rows, *self.inputs[slot][n].shape[1:]))
            self.context.set_tensor_address(n, self.inputs[slot][n].device)
        for n in OUTPUT_NAMES:
            self.context.set_tensor_address(n, self.outputs[n].device)

    def _enqueue(self, rows: int, slot: int) -> None:
        cudart = self.cudart
        key = (rows, slot)
        if not self.use_graphs:
            self._bind(rows, slot)
            if not self.context.execute_async_v3(int(self.stream)):
                raise BackendUnavailableError("TensorRT execute_async_v3 failed")
            return
        if key not in self.graphs:
            self._bind(rows, slot)
            self.context.execute_async_v3(int(self.stream))  # trtexec: one plain enqueue before capture
            _check(cudart.cudaStreamSynchronize(self.stream))
            try:
                _check(cudart.cudaStreamBeginCapture(
                    self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
                self.context.execute_async_v3(int(self.stream))
                graph = _check(cudart.cudaStreamEndCapture(self.stream))
                self.graphs[key] = _check(cudart.cudaGraphInstantiate(graph, 0))
            except BackendUnavailableError:
                self.use_graphs = False  # capture not permitted for this engine: plain enqueue from now on
                self.settings["cuda_graphs"] = "capture failed; plain enqueue"
                return self._enqueue(rows, slot)
        _check(cudart.cudaGraphLaunch(self.graphs[key], self.stream))

    def run(self, optical: np.ndarray, sar: np.ndarray) -> dict[str, np.ndarray]:
        """One batch (padded to its bucket); see :class:`esccs.runtime.model.Backend`."""
        n = len(optical)
        rows = bucket_for(n, self.sizes)
        slot, self.slot = self.slot, 1 - self.slot
        for name, arr in (("optical", optical), ("sar", sar)):
            buf = self.inputs[slot][name]
            view = buf.host[:rows]
            view[:n] = arr
            if rows > n:
                view[n:] = 0
            buf.h2d(self.stream, view.nbytes)
        self._enqueue(rows, slot)
        for buf in self.outputs.values():
            buf.d2h(self.stream, rows * buf.shape[1] * buf.dtype.itemsize)
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        return {name: buf.host[:n].astype(np.float32, copy=True) for name, buf in self.outputs.items()}

    def close(self) -> None:
        """Free buffers, graphs and the stream."""
        for slot in self.inputs:
            for buf in slot.values():
                buf.free()
        for buf in self.outputs.values():
            buf.free()
        for g in self.graphs.values():
            self.cudart.cudaGraphExecDestroy(g)
        self.cudart.cudaStreamDestroy(self.stream)
        self.inputs, self.outputs, self.graphs = [], {}, {}


def load(path: Path, device: str = "auto", threads: int | None = None, **options: Any
         ) -> tuple[ModelInfo, TensorRTBackend]:
    """Check the sidecar, deserialise the engine; the sidecar's ONNX metadata becomes the :class:`ModelInfo`."""
    if device == "cpu":
        raise BackendUnavailableError("the tensorrt backend runs on a CUDA GPU only (use --device cuda or auto)")
    unknown = set(options) - {"cuda_graphs", "host_code"}
    if unknown:
        raise BackendUnavailableError(f"the tensorrt backend takes no option {sorted(unknown)[0]!r}")
    info = ModelInfo.from_metadata(path, read_engine_sidecar(path).get("metadata") or {})
    return info, TensorRTBackend(path, bool(options.get("cuda_graphs", True)), bool(options.get("host_code", False)))
