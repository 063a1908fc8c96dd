"""The JSON sidecar beside a TensorRT engine: built, written, read and checked here only (torch-free).

TensorRT plans are tied to the TensorRT version and the GPU that built them, and standard TensorRT has no header-only
validity check, so ``esccs export --format trt`` writes ``<engine>.json`` (TensorRT version, GPU name and compute
capability, compatibility levels, profiles, precision recipe, source ONNX, the artifact metadata) and every loader
reads it first. The format tag, schema version and keys are :mod:`esccs.spec`'s ``ENGINE_SIDECAR_*``; export and the
runtime share this module.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import esccs
from esccs.errors import DataError, EngineMismatchError
from esccs.io.atomic import atomic_path, write_json
from esccs.spec import ENGINE_SIDECAR_FORMAT, ENGINE_SIDECAR_KEYS, ENGINE_SIDECAR_SCHEMA, ENGINE_SIDECAR_SUFFIX


def sidecar_path(engine: str | os.PathLike) -> Path:
    """``<engine>.json`` (``m.engine`` -> ``m.engine.json``; ``m.json`` is the checkpoint's config)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ENGINE_SIDECAR_SUFFIX)


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``"10.13.0.35"`` -> 10)."""
    return int(str(version).split(".")[0])


def _cc(text: str) -> tuple[int, int]:
    major, minor = str(text).split(".")
    return int(major), int(minor)


def build_engine_sidecar(*, trt_version: str, gpu: dict[str, Any], profiles: dict, recipe: dict, onnx_file: str,
                         onnx_sha256: str, checkpoint_sha256: str, version_compatible: bool, hardware_compat: str,
                         workspace_gb: float, metadata: dict[str, str]) -> dict[str, Any]:
    """The sidecar dict (keys: :data:`esccs.spec.ENGINE_SIDECAR_KEYS`).

    Args:
        trt_version: ``tensorrt.__version__`` of the build.
        gpu: ``{"name", "compute_capability"}`` of the building GPU.
        profiles: the optimisation profile, ``{input: {"min", "opt", "max"}}``.
        recipe: how the precision was reached (typing, ONNX precision, builder flags).
        onnx_file: the ONNX the engine was built from (kept beside it).
        onnx_sha256: its SHA-256.
        checkpoint_sha256: SHA-256 of the checkpoint's weights.
        version_compatible: whether the plan runs on later TensorRT versions.
        hardware_compat: ``none``, ``ampere+`` or ``same-cc``.
        workspace_gb: the builder workspace limit.
        metadata: the artifact metadata (:data:`esccs.spec.METADATA_KEYS`), as in the source ONNX.
    """
    return {"format": ENGINE_SIDECAR_FORMAT, "schema": ENGINE_SIDECAR_SCHEMA, "esccs_version": esccs.__version__,
            "tensorrt_version": trt_version, "gpu": gpu, "profiles": [profiles], "precision": recipe,
            "source_onnx": {"file": onnx_file, "sha256": onnx_sha256}, "checkpoint_sha256": checkpoint_sha256,
            "compatibility": {"version_compatible": version_compatible, "hardware": hardware_compat},
            "workspace_gb": workspace_gb, "metadata": metadata}


@contextlib.contextmanager
def staged_engine(engine_path: str | os.PathLike, plan: bytes, sidecar: dict[str, Any]) -> Iterator[Path]:
    """Write ``plan`` and its sidecar under temporary names beside ``engine_path`` and yield the temporary engine.

    The temporary engine is a complete, loadable artifact (its sidecar beside it), so it can be checked by the
    runtime before it is published. When the block succeeds, the sidecar and then the engine are renamed into place;
    when it raises, both are deleted and nothing is left half-written.
    """
    final = Path(engine_path)
    with atomic_path(final) as tmp:
        tmp.write_bytes(plan)
        side = sidecar_path(tmp)
        try:
            write_json(side, sidecar)
            yield tmp
            os.replace(side, sidecar_path(final))
        finally:
            side.unlink(missing_ok=True)


def read_engine_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``<engine>.json``: format tag, schema version, every key.

    Raises:
        DataError: the sidecar is missing, not JSON, not an esccs engine sidecar, or of a newer schema.
    """
    side = sidecar_path(engine_path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise DataError(side, "engine sidecar is missing (rebuild with esccs export --format trt)") from None
    except (OSError, ValueError) as err:
        raise DataError(side, f"not an esccs engine sidecar ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != ENGINE_SIDECAR_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(side, f"not an esccs engine sidecar (format {got!r}, expected {ENGINE_SIDECAR_FORMAT!r})")
    if not isinstance(meta.get("schema"), int) or meta["schema"] > ENGINE_SIDECAR_SCHEMA:
        raise DataError(side, f"engine sidecar schema {meta.get('schema')!r} is newer than this esccs reads "
                              f"({ENGINE_SIDECAR_SCHEMA}); upgrade esccs or rebuild the engine")
    missing = [k for k in ENGINE_SIDECAR_KEYS if k not in meta]
    if missing:
        raise DataError(side, f"not an esccs engine sidecar ({', '.join(missing)} missing)")
    try:
        _cc(meta["gpu"]["compute_capability"]), meta["gpu"]["name"], meta["compatibility"]["hardware"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(side, f"malformed esccs engine sidecar ({type(err).__name__}: {err})") from None
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
