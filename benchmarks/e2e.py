"""End-to-end figures: the runtime's own pipeline (:func:`esccs.runtime.run_inference`, what ``esccs infer`` runs).

The same loaded model as the backend-only rows, the same batch size, over the data folder's tiles
(:func:`esccs.runtime.open_tiles`): reader thread(s) -> ring of batch buffers -> backend -> writer, outputs into a
temporary folder. One untimed warm-up pass (page cache, thread pools, first-batch effects), then timed passes until
``min_time`` seconds are reached (at least one; a pass is sized from the warm-up pass's speed to last about
``min_time``). Tiles/s of a pass is the runtime's own figure (tiles processed /
seconds of its processing loop, model load excluded); the row's figure is all timed tiles over all timed seconds.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from esccs.benchmarks.timing import summarize

PIPELINE = "esccs.runtime.run_inference (esccs infer's pipeline: readers -> batch ring -> backend -> writer)"


def read_cost(data: Path, optical_bands: Any, sar_bands: Any, patch: int, batch: int, reps: int = 3
              ) -> dict[str, Any]:
    """Median ms per tile to read ``batch`` tiles with the runtime's reader on one thread (the read stage, alone)."""
    from esccs.runtime import open_tiles
    from esccs.runtime.reader import Bands, TileReader, configure_gdal

    configure_gdal()
    jobs = [j for j in open_tiles(data).jobs if j.sar][:batch]
    if not jobs:
        return {"read_ms_per_tile": None, "read_tiles": 0}
    reader = TileReader(Bands(tuple(optical_bands), tuple(sar_bands), patch))
    opt = np.empty((len(optical_bands), patch, patch), np.float32)
    sar = np.empty((len(sar_bands), patch, patch), np.float32)
    times = []
    for _ in range(reps + 1):  # the first pass warms the page cache
        t = time.perf_counter_ns()
        for job in jobs:
            reader.read(job, opt, sar)
        times.append((time.perf_counter_ns() - t) / 1e6 / len(jobs))
    reader.close()
    return {"read_ms_per_tile": float(np.median(times[1:])), "read_tiles": len(jobs)}


def end_to_end(engine: Any, data: Path, batch: int, backend_tps: float | None, min_time: float,
               readers: int = 1, max_passes: int = 50) -> dict[str, Any]:
    """Time the runtime pipeline over ``data`` with ``engine``'s model at ``batch`` tiles per backend call.

    Args:
        engine: a loaded :class:`~esccs.benchmarks.engines.Engine`.
        data: the data folder (its tiles as ``esccs infer`` reads them).
        batch: batch size.
        backend_tps: the same engine's backend-only tiles/s at ``batch`` (the ratio's denominator).
        min_time: minimum timed seconds.
        readers: reader threads of the pipeline (``esccs infer --workers``; default 1 as there).
        max_passes: cap on timed passes.

    Returns:
        ``status``, ``tiles_per_second``, ``ratio_to_backend_only``, per-batch stage means (read wait, backend,
        other), per-pass throughput statistics and the runtime's settings.
    """
    from esccs.runtime import InferOptions, open_tiles, run_inference

    source = open_tiles(data)
    model = engine.runtime_model()
    n_jobs = len(source.jobs)
    if n_jobs == 0:
        raise ValueError(f"{data}: no tiles for the end-to-end pipeline")
    passes: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="esccs-bench-e2e-") as tmp:
        out = [Path(tmp) / "e2e.csv"]

        def one(n: int) -> dict:
            opts = InferOptions(batch_size=batch, readers=readers, limit=n, progress=False, overwrite=True)
            return run_inference(source, model, out, opts)

        t0 = time.perf_counter()
        warm = one(min(n_jobs, batch))  # warm-up pass (page cache, thread pools, first batch), not reported
        warm_s = time.perf_counter() - t0
        # a timed pass lasts about min_time at the warm pass's speed (at least two batches, at most every tile)
        speed = warm["tiles_per_second"] or backend_tps or 0.0
        limit = int(min(n_jobs, max(2 * batch, math.ceil(speed * min_time))))
        t_end = time.perf_counter() + min_time
        while not passes or (time.perf_counter() < t_end and len(passes) < max_passes):
            passes.append(one(limit))
    tiles = sum(p["processed_this_run"] for p in passes)
    seconds = sum(p["seconds"] for p in passes)
    batches = sum(max(1, math.ceil(p["processed_this_run"] / batch)) for p in passes)
    backend_s = sum(p["backend_seconds"] for p in passes)
    wait_s = sum(p["waiting_for_reads_seconds"] for p in passes)
    tps = tiles / seconds if seconds > 0 else None
    ok = sum(p["classified"] for p in passes)
    last = passes[-1]
    return {"status": "ok", "error": None, "pipeline": PIPELINE, "passes": len(passes), "tiles_per_pass": limit,
            "tiles": tiles, "failed_tiles": sum(p["failed"] for p in passes), "seconds": round(seconds, 3),
            "warmup_s": round(warm_s, 3), "tiles_per_second": tps,
            "ratio_to_backend_only": tps / backend_tps if tps and backend_tps else None,
            "backend_tiles_per_second_in_pipeline": ok / backend_s if backend_s > 0 else None,
            "per_pass_tiles_per_second": summarize([p["tiles_per_second"] for p in passes if p["tiles_per_second"]]),
            "stages_mean_ms": {"read_wait": 1e3 * wait_s / batches, "backend": 1e3 * backend_s / batches,
                               "other": 1e3 * max(0.0, seconds - wait_s - backend_s) / batches},
            "readers": last["readers"], "queue_depth": last["queue_depth"], "cores": last["cores"],
            "gdal": last["gdal"], "backend_settings": last["backend_settings"]}
