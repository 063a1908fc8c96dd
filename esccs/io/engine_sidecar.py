"""The JSON sidecar beside a TensorRT engine, and the check made *before* deserialising one (torch-free).

TensorRT plans are tied to the TensorRT version and the GPU that built them, and standard TensorRT has no header-only
validity check, so ``esccs export --format trt`` writes ``<engine>.json`` (TensorRT version, GPU name and compute
capability, compatibility levels, profiles, precision recipe, the ONNX metadata) and every loader reads it first.
Export and the runtime share this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from esccs.errors import DataError, EngineMismatchError

SIDECAR_FORMAT = "esccs-tensorrt-engine"


def sidecar_path(engine: str | os.PathLike) -> Path:
    """``<engine>.json`` (``m.engine`` -> ``m.engine.json``; ``m.json`` is the checkpoint's config)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``"10.13.0.35"`` -> 10)."""
    return int(str(version).split(".")[0])


def _cc(text: str) -> tuple[int, int]:
    major, minor = str(text).split(".")
    return int(major), int(minor)


def read_engine_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Read and minimally validate ``<engine>.json``.

    Raises:
        DataError: the sidecar is missing, not JSON, or not an esccs engine sidecar.
    """
    side = sidecar_path(engine_path)
    try:
        meta = json.loads(side.read_text())
        meta["tensorrt_version"], meta["gpu"]["compute_capability"], meta["compatibility"]["hardware"]  # noqa: B018
    except FileNotFoundError:
        raise DataError(side, "engine sidecar is missing (rebuild with esccs export --format trt)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(side, f"not an esccs engine sidecar ({type(err).__name__}: {err})") from None
    return meta


def check_engine_sidecar(engine_path: str | os.PathLike, trt_version: str, gpu: dict[str, Any]) -> dict[str, Any]:
    """Check an engine's sidecar against the running TensorRT and GPU, *before* deserialising it.

    Args:
        engine_path: the ``.engine`` file.
        trt_version: the running TensorRT version (``tensorrt.__version__``).
        gpu: ``{"name", "compute_capability"}`` of the running GPU.

    Returns:
        The sidecar dict.

    Raises:
        DataError: the sidecar is missing or unreadable.
        EngineMismatchError: built with another TensorRT version or for another GPU (one line saying which).
    """
    meta = read_engine_sidecar(engine_path)
    built_trt, built_gpu, compat = meta["tensorrt_version"], meta["gpu"], meta["compatibility"]
    rebuild = f"rebuild it on this machine: esccs export CKPT --format trt --out {engine_path}"
    if compat.get("version_compatible"):
        if trt_major(trt_version) < trt_major(built_trt):
            raise EngineMismatchError(f"{engine_path}: built with TensorRT {built_trt}, this is {trt_version} "
                                      f"(version-compatible engines run only on the same or later major); {rebuild}")
    elif trt_version != built_trt:
        raise EngineMismatchError(f"{engine_path}: built with TensorRT {built_trt}, this is {trt_version}; {rebuild}")
    cc, built_cc = _cc(gpu["compute_capability"]), _cc(built_gpu["compute_capability"])
    level = compat["hardware"]
    ok = {"none": gpu["name"] == built_gpu["name"] and cc == built_cc, "same-cc": cc == built_cc,
          "ampere+": cc >= (8, 0)}.get(level, False)
    if not ok:
        raise EngineMismatchError(f"{engine_path}: built for {built_gpu['name']} (compute "
                                  f"{built_gpu['compute_capability']}, hardware compatibility {level}), this GPU is "
                                  f"{gpu['name']} (compute {gpu['compute_capability']}); {rebuild}")
    return meta
