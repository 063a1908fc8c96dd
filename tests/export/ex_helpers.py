"""Helpers of the export tests (no fixtures): plain onnxruntime, independent of esccs.runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from esccs.spec import OUTPUT_NAMES


def ort_session(path) -> ort.InferenceSession:
    """A default CPU onnxruntime session."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_run(path, feeds: dict, batch: int = 64) -> dict:
    """Plain onnxruntime over ``feeds`` in chunks of ``batch``; outputs by name."""
    session = ort_session(path)
    n = len(next(iter(feeds.values())))
    parts = [session.run(list(OUTPUT_NAMES), {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(OUTPUT_NAMES)}
