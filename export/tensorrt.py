"""TensorRT engines: precision baked into the ONNX, then one strongly typed build that works on TensorRT 10 and 11.

UNVERIFIED: TensorRT cannot be installed on the machines this was written on; the build and run paths follow the
documented TensorRT 10/11 Python API (``Builder``, ``OnnxParser.parse_from_file``, ``set_memory_pool_limit``,
optimisation profiles on both inputs, ``build_serialized_network``, named-tensor ``execute_async_v3``). TensorRT 11
removed the FP16/INT8 builder flags and calibrators: fp16/bf16 are converted in the ONNX (I/O, softmax and the
modality gate kept fp32) and int8 is symmetric Q/DQ from calibration tiles. The legacy weakly typed flags are used
only when asked for (``weak_typing``) on TensorRT < 11. The engine file is untouched TensorRT bytes; everything
else (versions, GPU, profiles, recipe, source ONNX SHA-256) goes into ``<engine>.json``, checked before loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import esccs
from esccs.errors import ConfigError, DependencyMissingError
from esccs.export.errors import EngineMismatchError, ExportError
from esccs.io.atomic import atomic_path, write_bytes, write_json
from esccs.io.engine_sidecar import check_engine_sidecar as _check_sidecar
from esccs.io.engine_sidecar import read_engine_sidecar, sidecar_path, trt_major

__all__ = ["check_engine_sidecar", "sidecar_path", "trt_major"]  # shared with the runtime via esccs.io

SIDECAR_SCHEMA = 1
HW_COMPAT = {"none": None, "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
COSTS = {
    "version_compatible": "version-compatible engine: embeds a lean runtime, runs on later TensorRT versions, can be "
                          "slower; loading must set runtime.engine_host_code_allowed = True (trusted plans only)",
    "ampere+": "hardware compatibility ampere+: runs on Ampere and newer GPUs, 48 KiB shared memory limit and fewer "
               "tactics; can be slower (especially tf32-heavy models)",
    "same-cc": "hardware compatibility same-cc: runs on GPUs of the same compute capability; cuDNN/cuBLAS tactics "
               "disabled; can be slower",
}
#: op types the fp16 conversion keeps fp32: preprocessing, softmax and the modality gate
FP16_BLOCK = ["Clip", "Sub", "Div", "Where", "IsNaN", "Softmax", "LogSoftmax", "Sigmoid", "ArgMax", "GatherElements"]


def require_tensorrt():
    """Import ``tensorrt`` or raise the one-line install hint (it also needs a CUDA GPU and driver)."""
    try:
        import tensorrt
    except ImportError:
        raise DependencyMissingError("tensorrt", "gpu", "--format trt (also needs a CUDA GPU and driver)") from None
    return tensorrt


def input_shapes(cfg) -> dict[str, tuple[int, int, int]]:
    """Per-input ``(C, H, W)`` of the engine (spatial size fixed at the training patch size)."""
    p = cfg.patch_size
    return {"optical": (cfg.in_chans, p, p), "sar": (cfg.sar_chans, p, p)}


def profile_shapes(shapes: dict[str, tuple[int, ...]], batch_min: int, batch_opt: int,
                   batch_max: int) -> dict[str, dict[str, list[int]]]:
    """One optimisation profile covering *every* input with the same batch range.

    Returns:
        ``{input: {"min": [B, C, H, W], "opt": [...], "max": [...]}}``.
    """
    if not batch_min <= batch_opt <= batch_max:
        raise ConfigError(f"batch range must satisfy min <= opt <= max, got {batch_min} / {batch_opt} / {batch_max}")
    return {name: {k: [b, *chw] for k, b in (("min", batch_min), ("opt", batch_opt), ("max", batch_max))}
            for name, chw in shapes.items()}


def precision_recipe(precision: str, weak_typing: bool, major: int) -> dict[str, Any]:
    """How a precision is reached on this TensorRT major version (the sidecar's ``precision`` block).

    Raises:
        ConfigError: ``weak_typing`` on TensorRT >= 11 (the flags are gone there) or with bf16.
    """
    if weak_typing and major >= 11:
        raise ConfigError(f"weak_typing needs TensorRT < 11 (found {major}): TensorRT 11 removed the FP16/INT8 "
                          "builder flags; leave weak_typing off")
    if weak_typing and precision == "bf16":
        raise ConfigError("weak_typing supports fp32, fp16 and int8 only")
    onnx = {"fp32": "fp32", "fp16": "fp16 (I/O, softmax, gate and preprocessing fp32)",
            "bf16": "bf16 via ModelOpt AutoCast (I/O fp32)", "int8": "int8 symmetric Q/DQ (calibrated)"}[precision]
    flags: list[str] = []
    if weak_typing:
        onnx = "int8 symmetric Q/DQ (calibrated)" if precision == "int8" else "fp32"
        flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[precision]
    return {"precision": precision, "typing": "weak (legacy flags)" if weak_typing else "strong", "onnx": onnx,
            "builder_flags": flags, "tf32": False}


def gpu_info() -> dict[str, Any]:
    """Name and compute capability of CUDA device 0 (through torch)."""
    import torch

    if not torch.cuda.is_available():
        raise ExportError("--format trt needs a CUDA GPU, and none is visible to torch")
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def engine_sidecar(*, trt_version: str, gpu: dict[str, Any], profiles: dict, recipe: dict, onnx_file: str,
                   onnx_sha256: str, checkpoint_sha256: str, version_compatible: bool, hardware_compat: str,
                   workspace_gb: float, metadata: dict[str, str]) -> dict[str, Any]:
    """The JSON written beside an engine (and read by :func:`check_engine_sidecar`)."""
    return {"format": "esccs-tensorrt-engine", "schema": SIDECAR_SCHEMA, "esccs_version": esccs.__version__,
            "tensorrt_version": trt_version, "gpu": gpu, "profiles": [profiles], "precision": recipe,
            "source_onnx": {"file": onnx_file, "sha256": onnx_sha256}, "checkpoint_sha256": checkpoint_sha256,
            "compatibility": {"version_compatible": version_compatible, "hardware": hardware_compat},
            "workspace_gb": workspace_gb, "metadata": metadata}


def check_engine_sidecar(engine_path: str | os.PathLike, trt_version: str | None = None,
                         gpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`esccs.io.engine_sidecar.check_engine_sidecar` with the running TensorRT and GPU as defaults."""
    read_engine_sidecar(engine_path)  # a missing sidecar is reported before TensorRT or a GPU is needed
    return _check_sidecar(engine_path, trt_version or require_tensorrt().__version__, gpu or gpu_info())


def to_fp16_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Convert an fp32 ONNX to fp16 keeping I/O and :data:`FP16_BLOCK` op types fp32.

    Uses ``onnxconverter_common.float16`` when installed, else the copy that ships with onnxruntime.
    """
    import onnx

    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxruntime.transformers.float16 import convert_float_to_float16
        except ImportError:
            raise ExportError("precision fp16 needs an ONNX float16 converter: pip install onnxconverter-common"
                              ) from None
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP16_BLOCK)
    onnx.save(model, str(dst))


def to_bf16_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Convert an fp32 ONNX to bf16 with NVIDIA ModelOpt AutoCast (I/O fp32, softmax and the gate excluded)."""
    import importlib

    import onnx

    try:
        autocast = importlib.import_module("modelopt.onnx.autocast")
    except ImportError:
        raise ExportError("precision bf16 needs NVIDIA ModelOpt: pip install 'nvidia-modelopt[onnx]'") from None
    model = autocast.convert_to_mixed_precision(onnx_path=str(src), low_precision_type="bf16", keep_io_types=True,
                                                op_types_to_exclude=FP16_BLOCK)
    onnx.save(model, str(dst))


def _collecting_logger(trt):
    class Collect(trt.ILogger):
        """A TensorRT logger that keeps errors so a failure reads as one line."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())

    return Collect()


def _configure(trt, builder, config, profiles: dict, o: dict[str, Any], recipe: dict, print_fn) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(o["workspace"] * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 rounds fp32 inputs to 10-bit mantissas: breaks fp32 parity
    for flag in recipe["builder_flags"]:  # weak typing on TensorRT < 11 only (checked in precision_recipe)
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, s in profiles.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    if o["version_compatible"]:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        print_fn and print_fn("  cost: " + COSTS["version_compatible"])
    if HW_COMPAT[o["hardware_compat"]]:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, HW_COMPAT[o["hardware_compat"]])
        print_fn and print_fn("  cost: " + COSTS[o["hardware_compat"]])


def build_engine(onnx_path: Path, profiles: dict, recipe: dict, o: dict[str, Any], cache_path: Path,
                 print_fn=None) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine; the timing cache at ``cache_path`` is read and written.

    Raises:
        ExportError: parse or build failure, with TensorRT's collected error messages in one line.
    """
    trt = require_tensorrt()
    logger = _collecting_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if recipe["typing"] == "strong" and trt_major(trt.__version__) < 11:  # always strongly typed on 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] + logger.errors
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: " + " | ".join(errors)[:600])
    config = builder.create_builder_config()
    _configure(trt, builder, config, profiles, o, recipe, print_fn)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT build failed: " + (" | ".join(logger.errors[-3:]) or "no message")[:600])
    write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def run_engine(plan: bytes, feeds: dict, batch_max: int, host_code: bool = False) -> dict:
    """Run a serialized engine on numpy ``feeds`` with torch CUDA buffers (named-tensor API, a side stream)."""
    import numpy as np
    import torch

    from esccs.export.onnx import OUTPUT_NAMES

    trt = require_tensorrt()
    logger = _collecting_logger(trt)
    runtime = trt.Runtime(logger)
    runtime.engine_host_code_allowed = host_code  # version-compatible plans carry host code
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineMismatchError("TensorRT could not load the engine: " + " | ".join(logger.errors)[:600])
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    n = len(next(iter(feeds.values())))
    parts: dict[str, list] = {name: [] for name in OUTPUT_NAMES}
    for i in range(0, n, batch_max):
        inputs = {k: torch.from_numpy(np.ascontiguousarray(v[i:i + batch_max])).cuda() for k, v in feeds.items()}
        for name, t in inputs.items():
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        outs = {name: torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
                for name in OUTPUT_NAMES}
        for name, t in outs.items():
            context.set_tensor_address(name, t.data_ptr())
        torch.cuda.current_stream().synchronize()  # inputs were copied on the default stream
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed: " + " | ".join(logger.errors)[:600])
        stream.synchronize()
        for name, t in outs.items():
            parts[name].append(t.cpu().numpy())
    return {name: np.concatenate(v) for name, v in parts.items()}


def _precision_onnx(model, cfg, sha: str, o: dict, recipe: dict, ds, dst: Path) -> dict[str, Any]:
    """Write the ONNX the engine is built from (fp32, fp16, bf16 or symmetric int8) to ``dst``."""
    import tempfile

    from esccs.export.onnx import build_metadata, finish_model, write_onnx
    from esccs.export.quantize import quantize_int8
    from esccs.export.tiles import read_tiles

    with tempfile.TemporaryDirectory(prefix="esccs-trt-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx"
        info = write_onnx(model, cfg, fp32, o, sha)
        precision = recipe["onnx"].split()[0]
        if precision == "fp32":
            dst.write_bytes(fp32.read_bytes())
            return info
        if precision == "int8":
            calib = read_tiles(ds, cfg, o["calib_samples"], split="train")
            info["quantization"] = quantize_int8(fp32, dst, calib, o["preprocess"], symmetric=True)
        else:
            (to_fp16_onnx if precision == "fp16" else to_bf16_onnx)(fp32, dst)
        meta = build_metadata(cfg, info, sha, o["preprocess"], precision)
        info.update(finish_model(dst, meta, simplify=False), metadata=meta)
    return info


def export_engine(model, cfg, sha: str, o: dict[str, Any], path: Path, ds, tiles, print_fn) -> tuple:
    """Precision-baked ONNX (kept beside the engine, checked in onnxruntime) -> engine -> parity -> sidecar.

    Returns:
        ``(info, parity, sidecars)`` for :class:`esccs.export.ExportResult`.
    """
    from esccs.export.parity import check_parity, compare, run_torch
    from esccs.models import checkpoint_sha256

    trt = require_tensorrt()
    recipe = precision_recipe(o["precision"], o["weak_typing"], trt_major(trt.__version__))
    gpu = gpu_info()
    profiles = profile_shapes(input_shapes(cfg), o["batch_min"], o["batch_opt"], o["batch_max"])
    onnx_path = path.with_name(f"{path.stem}.{recipe['onnx'].split()[0]}.onnx")
    with atomic_path(onnx_path) as tmp:
        info = _precision_onnx(model, cfg, sha, o, recipe, ds, tmp)
        onnx_precision = recipe["onnx"].split()[0]
        try:
            info["onnx_parity"] = check_parity(tmp, model, tiles, o["preprocess"], onnx_precision)
        except Exception as err:  # noqa: BLE001 - e.g. fp16/bf16 kernels missing in CPU onnxruntime
            info["onnx_parity"] = {"checked": False, "reason": f"{type(err).__name__}: {str(err)[:200]}"}
    cache_path = Path(o["timing_cache"]) if o["timing_cache"] else path.with_name(path.stem + ".timing.cache")
    plan = build_engine(onnx_path, profiles, recipe, o, cache_path, print_fn)
    got = run_engine(plan, tiles.feeds(o["preprocess"]), o["batch_max"], o["version_compatible"])
    parity = {**compare(run_torch(model, tiles), got, o["precision"]), "provider": "TensorRT",
              "tiles": {"source": tiles.source, "count": len(tiles), "ids": tiles.ids[:64]},
              "reference": "torch eval, fp32, CPU", "input": "raw DN / dB" if o["preprocess"] else "normalised"}
    if o["strict"] and not parity["passed"]:
        from esccs.export.errors import ParityError
        from esccs.export.parity import parity_line

        raise ParityError("strict: " + parity_line(parity) + f"; engine not written ({onnx_path} kept)")
    with atomic_path(path) as tmp:
        tmp.write_bytes(plan)
    side = write_json(sidecar_path(path), engine_sidecar(
        trt_version=trt.__version__, gpu=gpu, profiles=profiles, recipe=recipe, onnx_file=onnx_path.name,
        onnx_sha256=checkpoint_sha256(onnx_path), checkpoint_sha256=sha, version_compatible=o["version_compatible"],
        hardware_compat=o["hardware_compat"], workspace_gb=o["workspace"], metadata=info.get("metadata", {})))
    info = {**info, "engine_sidecar": str(side), "source_onnx": str(onnx_path), "timing_cache": str(cache_path)}
    return info, parity, [side, onnx_path, cache_path]
