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

from esccs.errors import ConfigError
from esccs.export.errors import ExportError
from esccs.export.job import Built
from esccs.io.atomic import atomic_path, write_bytes
from esccs.io.engine_sidecar import build_engine_sidecar, sidecar_path, staged_engine, trt_major
from esccs.spec import INPUT_NAMES

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
    from esccs.runtime.backends.tensorrt_backend import import_tensorrt

    return import_tensorrt("--format trt (also needs a CUDA GPU and driver)")


def input_shapes(cfg) -> dict[str, tuple[int, int, int]]:
    """Per-input ``(C, H, W)`` of the engine (spatial size fixed at the training patch size)."""
    p = cfg.patch_size
    return dict(zip(INPUT_NAMES, ((cfg.in_chans, p, p), (cfg.sar_chans, p, p))))


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
    from esccs.runtime.backends.tensorrt_backend import collecting_logger

    trt = require_tensorrt()
    logger = collecting_logger(trt)
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


def _precision_onnx(job, recipe: dict, dst: Path) -> dict[str, Any]:
    """Write the ONNX the engine is built from (fp32, fp16, bf16 or symmetric int8) to ``dst``."""
    import json
    import tempfile

    from esccs.export.onnx import build_metadata, finish_model, write_onnx
    from esccs.export.quantize import quantize_int8

    o = job.options
    with tempfile.TemporaryDirectory(prefix="esccs-trt-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx"
        info = write_onnx(job.model, job.cfg, fp32, o, job.sha)
        precision = recipe["onnx"].split()[0]
        if precision == "fp32":
            dst.write_bytes(fp32.read_bytes())
            return info
        meta = build_metadata(job.cfg, info, job.sha, o["preprocess"], precision)
        if precision == "int8":
            info["quantization"] = quantize_int8(fp32, dst, job.calibration(), o["preprocess"], symmetric=True)
            meta["quantization"] = json.dumps(info["quantization"])
        else:
            (to_fp16_onnx if precision == "fp16" else to_bf16_onnx)(fp32, dst)
        info.update(finish_model(dst, meta, simplify=False), metadata=meta)
    return info


def engine_metadata(info: dict[str, Any], o: dict[str, Any], cfg) -> dict[str, str]:
    """The engine's artifact metadata: its ONNX's, with the engine's precision and fixed input shapes.

    A weakly typed fp16 engine is built from an fp32 ONNX, and the profile fixes height and width at the patch size
    even when the ONNX was dynamic; the runtime reads both from here.
    """
    import json

    inputs = {name: ["batch", *chw] for name, chw in input_shapes(cfg).items()}
    return {**info["metadata"], "precision": o["precision"], "inputs": json.dumps(inputs)}


def export_engine(job) -> Built:
    """The ``trt`` format's builder: precision-baked ONNX (kept beside the engine) -> engine -> check -> sidecar.

    The engine is checked by the runtime's own :class:`~esccs.runtime.backends.tensorrt_backend.TensorRTBackend`
    (:func:`esccs.runtime.load_model` on the staged engine and its sidecar): fp32 against PyTorch on the parity
    batch, a reduced precision on the evaluation tiles (:data:`esccs.export.parity.GOALS`). Only then are the engine
    and its sidecar renamed into place.
    """
    from esccs.export.parity import check_artifact, reduced
    from esccs.models import checkpoint_sha256
    from esccs.runtime.backends.tensorrt_backend import gpu_info

    o, path, model = job.options, job.path, job.model
    trt = require_tensorrt()
    recipe = precision_recipe(o["precision"], o["weak_typing"], trt_major(trt.__version__))
    gpu = gpu_info()
    profiles = profile_shapes(input_shapes(job.cfg), o["batch_min"], o["batch_opt"], o["batch_max"])
    onnx_precision = recipe["onnx"].split()[0]
    judged = job.evaluation() if reduced(o["precision"]) else job.tiles
    onnx_path = path.with_name(f"{path.stem}.{onnx_precision}.onnx")
    with atomic_path(onnx_path) as tmp:
        info = _precision_onnx(job, recipe, tmp)
        try:
            info["onnx_parity"] = check_artifact(tmp, model, job.evaluation() if reduced(onnx_precision) else
                                                 job.tiles, onnx_precision)
        except Exception as err:  # noqa: BLE001 - e.g. fp16/bf16 kernels missing in CPU onnxruntime
            info["onnx_parity"] = {"checked": False, "reason": f"{type(err).__name__}: {str(err)[:200]}"}
    cache_path = Path(o["timing_cache"]) if o["timing_cache"] else path.with_name(path.stem + ".timing.cache")
    plan = build_engine(onnx_path, profiles, recipe, o, cache_path, job.print_fn)
    sidecar = build_engine_sidecar(
        trt_version=trt.__version__, gpu=gpu, profiles=profiles, recipe=recipe, onnx_file=onnx_path.name,
        onnx_sha256=checkpoint_sha256(onnx_path), checkpoint_sha256=job.sha, version_compatible=o["version_compatible"],
        hardware_compat=o["hardware_compat"], workspace_gb=o["workspace"], metadata=engine_metadata(info, o, job.cfg))
    with staged_engine(path, plan, sidecar) as staged:
        parity = check_artifact(staged, model, judged, o["precision"], backend="tensorrt", device="cuda",
                                host_code=o["version_compatible"])
        job.strict(parity, f"engine not written ({onnx_path} kept)")
    side = sidecar_path(path)
    info = {**info, "engine_sidecar": str(side), "source_onnx": str(onnx_path), "timing_cache": str(cache_path)}
    return Built(info, parity, sidecars=[side, onnx_path, cache_path])
