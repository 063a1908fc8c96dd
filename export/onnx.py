"""PyTorch -> ONNX: dynamo exporter (legacy as a tested fallback), optional baked preprocessing, metadata, checks.

Graph contract (names, shapes and metadata keys: :mod:`esccs.spec`, ``INPUT_NAMES`` ... ``METADATA_KEYS``): inputs
``optical`` ``(B, C_o, H, W)`` and ``sar`` ``(B, C_s, H, W)`` sharing one batch symbol (and height/width when the
spatial size is dynamic); outputs ``logits`` ``(B, K)``, ``probs`` ``(B, K)`` and ``modality_weights`` ``(B, 2)`` =
``[w_optical, w_sar]``. Weights are embedded (one file). The model runs in eval
mode; fused Triton ops take their reference path by themselves while an export is running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import esccs
from esccs.export.errors import ExportError
from esccs.export.job import Built
from esccs.io.atomic import atomic_path
from esccs.spec import ARTIFACT_SCHEMA_VERSION, INPUT_NAMES, METADATA_KEYS, MODALITY_WEIGHTS_ORDER, OUTPUT_NAMES

DEFAULT_OPSET = {"dynamo": 18, "legacy": 17}  # 18: the dynamo op library's floor; both <= 20 for ORT static INT8
MAX_BATCH = 4096


def build_module(model, cfg, preprocess: bool):
    """The module to export: ``ExportWrapper(model)``, behind per-input preprocessing when ``preprocess``.

    Raises:
        ExportError: ``preprocess`` on a checkpoint without normalisation statistics.
    """
    import torch
    from torch import nn

    from esccs.models import ExportWrapper

    class Preprocess(nn.Module):
        """NaN -> low clip value, clip, ``(x - mean) / std`` per band: :class:`~esccs.data.transforms.Normalizer`."""

        def __init__(self, norm: dict) -> None:
            super().__init__()
            bands = norm["bands"]
            self.lo, self.hi = (float(v) for v in norm["clip"])
            self.register_buffer("mean", torch.tensor([norm["stats"][b][0] for b in bands]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor([norm["stats"][b][1] for b in bands]).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.masked_fill(torch.isnan(x), self.lo).clamp(self.lo, self.hi)  # clamp also maps +-inf
            return (x - self.mean) / self.std

    class Preprocessed(nn.Module):
        """Raw DN / dB in, the wrapped model's three outputs out."""

        def __init__(self, inner: nn.Module, norm: dict) -> None:
            super().__init__()
            self.inner, self.pre_o, self.pre_s = inner, Preprocess(norm["optical"]), Preprocess(norm["sar"])
            self.train(inner.training)  # exporters restore the mode they found: keep it eval

        def forward(self, optical: torch.Tensor, sar: torch.Tensor):
            return self.inner(self.pre_o(optical), self.pre_s(sar))

    model.eval()
    wrapper = ExportWrapper(model).eval()
    if not preprocess:
        return wrapper
    norm = cfg.normalization or {}
    if not all(k in norm for k in INPUT_NAMES):
        raise ExportError("preprocess=True needs optical and SAR normalisation statistics in the checkpoint config; "
                          "export with preprocess=False (--no-preprocess) instead")
    return Preprocessed(wrapper, norm).eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter (torchvision notes, deprecation and shape-rename warnings)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _example(cfg, batch: int = 2):
    import torch

    g = torch.Generator().manual_seed(0)
    p = cfg.patch_size
    return (torch.randn(batch, cfg.in_chans, p, p, generator=g), torch.randn(batch, cfg.sar_chans, p, p, generator=g))


def _export_dynamo(module, cfg, path: Path, opset: int, spatial: bool) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dims: dict[int, Any] = {0: batch}
    if spatial:
        dims.update({2: torch.export.Dim("height", min=16, max=8192), 3: torch.export.Dim("width", min=16, max=8192)})
    with _quiet(), torch.no_grad():
        torch.onnx.export(module, _example(cfg), str(path), dynamo=True, external_data=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), verbose=False,
                          dynamic_shapes={name: dict(dims) for name in INPUT_NAMES})


def _export_legacy(module, cfg, path: Path, opset: int, spatial: bool) -> None:
    import torch

    axes = {0: "batch", **({2: "height", 3: "width"} if spatial else {})}
    dynamic_axes = {**{name: axes for name in INPUT_NAMES}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with _quiet(), torch.no_grad():
        torch.onnx.export(module, _example(cfg), str(path), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _try_spatial(fn, module, cfg, path: Path, opset: int, spatial: bool) -> tuple[bool, str | None]:
    """Export with dynamic height/width if asked; if only that fails, export with the fixed patch size."""
    if spatial:
        try:
            fn(module, cfg, path, opset, True)
            return True, None
        except Exception as err:  # noqa: BLE001 - any exporter failure: retry with a fixed size, recorded
            note = f"dynamic spatial size failed, fixed at {cfg.patch_size} px ({_first_line(err)})"
            fn(module, cfg, path, opset, False)
            return False, note
    fn(module, cfg, path, opset, False)
    return False, None


def export_graph(module, cfg, path: Path, *, exporter: str, explicit_exporter: bool, opset: int | None,
                 dynamic_spatial: bool) -> dict[str, Any]:
    """Write the raw ONNX graph of ``module`` to ``path``.

    The dynamo exporter falls back to the legacy one (with a warning, recorded) when it fails, unless the caller
    asked for dynamo explicitly: then the failure is an error.

    Returns:
        ``{"exporter", "opset", "dynamic_spatial", "notes"}``.

    Raises:
        ExportError: both exporters failed, or the explicitly chosen one failed.
    """
    notes: list[str] = []
    used = exporter
    try:
        fn = _export_dynamo if exporter == "dynamo" else _export_legacy
        op = opset or DEFAULT_OPSET[exporter]
        spatial, note = _try_spatial(fn, module, cfg, path, op, dynamic_spatial)
    except Exception as err:  # noqa: BLE001 - exporter internals raise anything
        if exporter == "legacy" or explicit_exporter:
            raise ExportError(f"{exporter} ONNX export failed: {_first_line(err)}") from None
        msg = f"dynamo ONNX export failed ({_first_line(err)}); falling back to the legacy exporter"
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)
        used, op = "legacy", min(opset or DEFAULT_OPSET["legacy"], 20)
        try:
            spatial, note = _try_spatial(_export_legacy, module, cfg, path, op, dynamic_spatial)
        except Exception as err2:  # noqa: BLE001
            raise ExportError(f"ONNX export failed with both exporters: {_first_line(err2)}") from None
    if note:
        notes.append(note)
    return {"exporter": used, "opset": op, "dynamic_spatial": spatial, "notes": notes}


def build_metadata(cfg, info: dict[str, Any], checkpoint_sha256: str, preprocess: bool,
                   precision: str = "fp32") -> dict[str, str]:
    """The ``metadata_props`` of an esccs ONNX file: :data:`esccs.spec.METADATA_KEYS` (strings; lists, dicts as JSON).

    Raises:
        ExportError: the entries drifted from :data:`esccs.spec.METADATA_KEYS` (a bug caught before anything ships).
    """
    spatial = ["height", "width"] if info["dynamic_spatial"] else [cfg.patch_size, cfg.patch_size]
    k, chans = cfg.n_classes, dict(zip(INPUT_NAMES, (cfg.in_chans, cfg.sar_chans)))
    meta = {
        "esccs_schema_version": str(ARTIFACT_SCHEMA_VERSION),
        "esccs_version": esccs.__version__,
        "checkpoint_sha256": checkpoint_sha256,
        "classes": json.dumps(list(cfg.classes or [])),
        "optical_bands": json.dumps(list(cfg.optical_bands or [])),
        "sar_bands": json.dumps(list(cfg.sar_bands or [])),
        "normalization": json.dumps(cfg.normalization),
        "preprocessing_baked": json.dumps(bool(preprocess)),
        "input_units": json.dumps({"optical": "raw DN", "sar": "dB"} if preprocess else "normalised"),
        "patch_size": str(cfg.patch_size),
        "model_config": json.dumps(cfg.to_dict()),
        "inputs": json.dumps({name: ["batch", c, *spatial] for name, c in chans.items()}),
        "outputs": json.dumps(dict(zip(OUTPUT_NAMES, (["batch", k], ["batch", k], ["batch", 2])))),
        "modality_weights_order": json.dumps(list(MODALITY_WEIGHTS_ORDER)),
        "opset": str(info["opset"]),
        "exporter": info["exporter"],
        "precision": precision,
    }
    if tuple(meta) != METADATA_KEYS:
        raise ExportError(f"metadata keys {sorted(set(meta) ^ set(METADATA_KEYS))} differ from esccs.spec")
    return meta


def finish_model(path: Path, metadata: dict[str, str], simplify: bool) -> dict[str, Any]:
    """Simplify (optional), write ``metadata_props``, save in one file and run the full ONNX check.

    Returns:
        ``{"nodes": int, "op_types": [...], "simplified": bool}``.

    Raises:
        ExportError: onnxslim missing when ``simplify`` is asked, or the checker rejects the model.
    """
    import onnx

    model = onnx.load(str(path))
    if simplify:
        model = _simplify(model)
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "esccs"
    model.producer_version = esccs.__version__
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        raise ExportError(f"{path.name}: ONNX checker failed: {_first_line(err)}") from None
    return {"nodes": len(model.graph.node), "op_types": sorted({n.op_type for n in model.graph.node}),
            "simplified": simplify}


def _simplify(model):
    import importlib

    try:
        onnxslim = importlib.import_module("onnxslim")
    except ImportError:
        raise ExportError("simplify needs onnxslim, which is not installed: pip install onnxslim "
                          "(or export without --simplify; the dynamo graph is already folded)") from None
    try:
        return onnxslim.slim(model)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"onnxslim failed: {_first_line(err)} (export without --simplify)") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """``metadata_props`` of an ONNX file, JSON values decoded (for tests and tools; the runtime uses ORT's map)."""
    import onnx

    out: dict[str, Any] = {}
    for p in onnx.load(str(path), load_external_data=False).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def write_onnx(model, cfg, path: Path, opts: dict[str, Any], checkpoint_sha256: str) -> dict[str, Any]:
    """Export, annotate and check one fp32 ONNX file at ``path`` (validated options of :mod:`.formats`).

    Returns:
        ``{"exporter", "opset", "dynamic_spatial", "notes", "nodes", "op_types", "simplified", "metadata"}``.
    """
    module = build_module(model, cfg, opts["preprocess"])
    info = export_graph(module, cfg, path, exporter=opts["exporter"], explicit_exporter="exporter" in opts["explicit"],
                        opset=opts["opset"], dynamic_spatial=opts["dynamic_spatial"])
    metadata = build_metadata(cfg, info, checkpoint_sha256, opts["preprocess"])
    info.update(finish_model(path, metadata, opts["simplify"]))
    return {**info, "metadata": metadata}


def build_onnx(job) -> Built:
    """The ``onnx`` format's builder: fp32 ONNX, checked through :mod:`esccs.runtime`, then renamed into place."""
    from esccs.export.parity import check_artifact

    with atomic_path(job.path) as tmp:
        info = write_onnx(job.model, job.cfg, tmp, job.options, job.sha)
        parity = check_artifact(tmp, job.model, job.tiles, "fp32")
        job.strict(parity)
    return Built(info, parity)
