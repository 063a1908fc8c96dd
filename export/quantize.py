"""Static INT8 quantisation with onnxruntime (QDQ, per-channel weights) and its speed report.

Calibration reads real tiles of the data set. Preprocessing nodes (NaN cleaning, clip, normalisation) and the
softmax / modality-gate nodes stay fp32 (their op types are left out of the quantised set), as do the graph's I/O.
So do the first and the last layers (:func:`fp32_nodes`): each encoder's stem convolution, which sees the image
itself, and the classifier head (the two linear heads and their sum, the logits). Measured on the demo model
(256 test tiles): all layers quantised flip 12 decisions (OA -1.2 points); stems and head kept fp32 flip 3 (-0.4).
CPU INT8 keeps onnxruntime's defaults (uint8 activations, int8 weights); the TensorRT recipe is symmetric int8.
Whether the quantised model is good enough is judged in :mod:`esccs.export.parity` (OA loss and top-1 agreement on
the evaluation tiles).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from esccs.export.errors import ExportError
from esccs.export.job import Built
from esccs.export.tiles import Tiles
from esccs.io.atomic import atomic_path

#: op types kept in fp32: preprocessing, softmax, the modality gate (argmax/gather/sigmoid) and their neighbours
KEEP_FP32 = frozenset({"Clip", "Sub", "Div", "Where", "IsNaN", "Softmax", "LogSoftmax", "Sigmoid", "ArgMax",
                       "GatherElements", "Squeeze", "Unsqueeze", "Concat"})


def fp32_nodes(model: Any) -> list[str]:
    """Names of the nodes kept fp32 by position: the first Conv on each input's path, every Gemm, the logits' node.

    Args:
        model: an ``onnx.ModelProto`` of the dual-branch graph.
    """
    from esccs.spec import INPUT_NAMES, OUTPUT_NAMES

    nodes = list(model.graph.node)
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    keep: list[str] = []
    for name in INPUT_NAMES:  # breadth-first from the input to the first convolution(s) it reaches
        seen, frontier = set(), [name]
        while frontier:
            nxt = []
            for t in frontier:
                for n in consumers.get(t, []):
                    if n.name in seen:
                        continue
                    seen.add(n.name)
                    if n.op_type == "Conv":
                        keep.append(n.name)
                    else:
                        nxt.extend(n.output)
            frontier = nxt
    keep += [n.name for n in nodes if n.op_type == "Gemm" or OUTPUT_NAMES[0] in n.output]
    return sorted(set(keep))


def _reader(tiles: Tiles, preprocessed: bool, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class TileReader(CalibrationDataReader):
        """Feeds ``{"optical", "sar"}`` batches of calibration tiles, then ``None``."""

        def __init__(self) -> None:
            feeds = tiles.feeds(preprocessed)
            n = len(tiles)
            self._batches = iter([{k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, n, batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return TileReader()


def _pre_process(src: Path, dst: Path) -> str | None:
    """Run onnxruntime's ``quant_pre_process`` (shape inference + optimisation); returns a note when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return None
    except Exception as err:  # noqa: BLE001 - optional step: quantise the plain graph instead, recorded
        return f"quant_pre_process failed ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib: Tiles, preprocessed: bool,
                  symmetric: bool = False, batch: int = 16) -> dict[str, Any]:
    """Write a QDQ INT8 copy of ``fp32_path`` to ``out_path``, calibrated on ``calib``.

    Args:
        fp32_path: the checked fp32 ONNX.
        out_path: where the INT8 graph goes (the caller renames it into place).
        calib: calibration tiles (raw and normalised).
        preprocessed: whether the graph has baked preprocessing (calibrate on raw tiles then).
        symmetric: int8 activations with zero point 0 (TensorRT's requirement) instead of uint8.
        batch: calibration batch size.

    Returns:
        The quantisation recipe, for metadata and sidecars.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    if len(calib) == 0:
        raise ExportError("calibration: no tiles")
    with tempfile.TemporaryDirectory(prefix="esccs-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        note = _pre_process(Path(fp32_path), pre)
        src = Path(fp32_path) if note else pre
        op_types = sorted(set(QDQRegistry) - KEEP_FP32)
        excluded = fp32_nodes(onnx.load(str(src)))
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
        try:
            quantize_static(str(src), str(out_path), _reader(calib, preprocessed, batch), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=True, reduce_range=False,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=excluded, extra_options=extra)
        except Exception as err:  # noqa: BLE001
            raise ExportError(f"INT8 quantisation failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                              ) from None
    return {"method": "onnxruntime quantize_static", "format": "QDQ", "per_channel": True,
            "activations": "int8 symmetric" if symmetric else "uint8", "weights": "int8 symmetric",
            "calibration": "MinMax", "calibration_tiles": len(calib), "calibration_source": calib.source,
            "pre_process": note or "quant_pre_process", "kept_fp32_op_types": sorted(KEEP_FP32),
            "kept_fp32_nodes": excluded}


def _median_seconds(model, tiles: Tiles, reps: int) -> float:
    optical, sar = tiles.raw["optical"], tiles.raw["sar"]
    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        model.predict(optical, sar)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.predict(optical, sar)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed_report(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, speed: Tiles,
                 reps: int = 10) -> dict[str, Any]:
    """INT8 vs fp32 speed on one batch, both loaded by :mod:`esccs.runtime` on CPU (what ``esccs infer`` runs).

    Returns:
        The speed ratio is fp32 time / INT8 time on the same batch (> 1: INT8 is faster), median of ``reps`` runs
        after two warm-up runs, in one run on this machine, the runtime's default thread count.
    """
    from esccs.export.parity import load_artifact

    with load_artifact(fp32_path) as fp32, load_artifact(int8_path) as int8:
        t32, t8 = _median_seconds(fp32, speed, reps), _median_seconds(int8, speed, reps)
        threads = int8.backend.settings.get("intra_op_threads")
    return {"batch": len(speed), "reps": reps, "statistic": "median", "runs": 1,
            "fp32_ms": round(1000 * t32, 3), "int8_ms": round(1000 * t8, 3),
            "fp32_samples_per_s": round(len(speed) / t32, 1), "int8_samples_per_s": round(len(speed) / t8, 1),
            "speedup_int8_vs_fp32": round(t32 / t8, 3), "threads": threads, "cpu_count": os.cpu_count()}


def speed_line(report: dict[str, Any]) -> str:
    """One printed line of the INT8 vs fp32 speed report."""
    return (f"int8 speed at batch {report['batch']}: fp32 {report['fp32_ms']:.1f} ms, int8 {report['int8_ms']:.1f} ms "
            f"({report['speedup_int8_vs_fp32']:.2f}x, median of {report['reps']}, one run, {report['threads']} "
            "threads)")


def build_int8(job) -> Built:
    """The ``onnx-int8`` format's builder: fp32 ONNX (checked) -> static INT8 -> judged on the evaluation tiles.

    The verdict is the INT8 model's OA loss and top-1 agreement against PyTorch fp32 on ``eval_samples`` test tiles
    (:data:`esccs.export.parity.GOALS`); the fp32 graph it was quantised from must pass its own strict check too.
    """
    from esccs.export.onnx import build_metadata, finish_model, write_onnx
    from esccs.export.parity import check_artifact

    o = job.options
    calib, evaluation = job.calibration(), job.evaluation()
    with tempfile.TemporaryDirectory(prefix="esccs-export-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx"
        info = write_onnx(job.model, job.cfg, fp32, o, job.sha)
        info["fp32_parity"] = fp32_parity = check_artifact(fp32, job.model, job.tiles, "fp32")
        with atomic_path(job.path) as tmp:
            recipe = quantize_int8(fp32, tmp, calib, o["preprocess"])
            meta = {**build_metadata(job.cfg, info, job.sha, o["preprocess"], "int8"),
                    "quantization": json.dumps(recipe)}
            info.update(finish_model(tmp, meta, simplify=False), quantization=recipe, metadata=meta)
            parity = check_artifact(tmp, job.model, evaluation, "int8")
            if not fp32_parity["passed"]:
                why = "the fp32 graph it was quantised from failed its parity check (" + \
                      "; ".join(fp32_parity["failures"]) + ")"
                parity = {**parity, "verdict": "fail", "passed": False, "failures": [why, *parity["failures"]]}
            job.strict(parity)
            speed = speed_report(fp32, tmp, job.tiles.take(o["speed_batch"]), o["speed_reps"])
    return Built(info, parity, speed)
