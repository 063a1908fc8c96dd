"""Static INT8 quantisation with onnxruntime (QDQ, per-channel weights) and its accuracy and speed report.

Calibration reads real tiles of the data set. Preprocessing nodes (NaN cleaning, clip, normalisation) and the
softmax / modality-gate nodes stay fp32 (their op types are left out of the quantised set), as do the graph's I/O.
CPU INT8 keeps onnxruntime's defaults (uint8 activations, int8 weights); the TensorRT recipe is symmetric int8.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from esccs.export.errors import ExportError
from esccs.export.parity import compare, ort_session, run_ort
from esccs.export.tiles import Tiles

#: op types kept in fp32: preprocessing, softmax, the modality gate (argmax/gather/sigmoid) and their neighbours
KEEP_FP32 = frozenset({"Clip", "Sub", "Div", "Where", "IsNaN", "Softmax", "LogSoftmax", "Sigmoid", "ArgMax",
                       "GatherElements", "Squeeze", "Unsqueeze", "Concat"})


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
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    if len(calib) == 0:
        raise ExportError("calibration: no tiles")
    with tempfile.TemporaryDirectory(prefix="esccs-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        note = _pre_process(Path(fp32_path), pre)
        src = Path(fp32_path) if note else pre
        op_types = sorted(set(QDQRegistry) - KEEP_FP32)
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
        try:
            quantize_static(str(src), str(out_path), _reader(calib, preprocessed, batch), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=True, reduce_range=False,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra)
        except Exception as err:  # noqa: BLE001
            raise ExportError(f"INT8 quantisation failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                              ) from None
    return {"method": "onnxruntime quantize_static", "format": "QDQ", "per_channel": True,
            "activations": "int8 symmetric" if symmetric else "uint8", "weights": "int8 symmetric",
            "calibration": "MinMax", "calibration_tiles": len(calib), "calibration_source": calib.source,
            "pre_process": note or "quant_pre_process", "kept_fp32_op_types": sorted(KEEP_FP32)}


def _median_seconds(session, feeds: dict[str, np.ndarray], reps: int) -> float:
    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        session.run(None, feeds)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float | None:
    known = labels >= 0
    if not known.any():
        return None
    return float((outputs["logits"].argmax(1)[known] == labels[known]).mean())


def int8_report(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, evaluation: Tiles, speed: Tiles,
                preprocessed: bool, reps: int = 10) -> dict[str, Any]:
    """INT8 vs fp32 onnxruntime: overall accuracy on labelled tiles, top-1 agreement and speed (one run).

    Returns:
        ``{"accuracy": {...}, "speed": {...}}``; the speed ratio is fp32 time / INT8 time on the same batch (> 1:
        INT8 is faster), median of ``reps`` runs after two warm-up runs, onnxruntime default threads.
    """
    fp32, int8 = ort_session(fp32_path), ort_session(int8_path)
    feeds = evaluation.feeds(preprocessed)
    out32, out8 = run_ort(fp32, feeds), run_ort(int8, feeds)
    oa32, oa8 = _accuracy(out32, evaluation.labels), _accuracy(out8, evaluation.labels)
    agreement = compare(out32, out8, "int8")
    accuracy = {"tiles": len(evaluation), "labelled": int((evaluation.labels >= 0).sum()), "source": evaluation.source,
                "oa_fp32": oa32, "oa_int8": oa8,
                "oa_delta_points": None if oa32 is None else round(100 * (oa8 - oa32), 3),
                "top1_agreement_vs_fp32": agreement["top1_agreement"],
                "max_abs_prob_diff_vs_fp32": agreement["max_abs_prob_diff"], "goal_oa_delta_points": 1.0}
    sfeeds = speed.feeds(preprocessed)
    t32, t8 = _median_seconds(fp32, sfeeds, reps), _median_seconds(int8, sfeeds, reps)
    speed_report = {"batch": len(speed), "reps": reps, "statistic": "median", "runs": 1,
                    "fp32_ms": round(1000 * t32, 3), "int8_ms": round(1000 * t8, 3),
                    "fp32_samples_per_s": round(len(speed) / t32, 1), "int8_samples_per_s": round(len(speed) / t8, 1),
                    "speedup_int8_vs_fp32": round(t32 / t8, 3), "threads": "onnxruntime default",
                    "cpu_count": os.cpu_count()}
    return {"accuracy": accuracy, "speed": speed_report}


def int8_line(report: dict[str, Any]) -> str:
    """One printed line of the INT8 report."""
    a, s = report["accuracy"], report["speed"]
    oa = ("OA n/a (no labels matching the model's classes)" if a["oa_fp32"] is None else
          f"OA fp32 {a['oa_fp32']:.2%} -> int8 {a['oa_int8']:.2%} ({a['oa_delta_points']:+.2f} points, goal >= -1)")
    return (f"int8 vs fp32 on {a['tiles']} tiles: {oa}, top-1 agreement {a['top1_agreement_vs_fp32']:.2%}; "
            f"speed at batch {s['batch']}: fp32 {s['fp32_ms']:.1f} ms, int8 {s['int8_ms']:.1f} ms "
            f"({s['speedup_int8_vs_fp32']:.2f}x, median of {s['reps']}, one run)")
