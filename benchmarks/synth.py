"""Speed of ``esccs data synth``: samples per second, files written included, against the 2,000-in-2-minutes goal."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from esccs.data.synth import SynthConfig, synthesize

#: Goal of the foundation issue: 2,000 samples of 128 x 128 in under 2 minutes on the 2-core machine.
GOAL_SAMPLES, GOAL_SECONDS = 2000, 120.0


def bench_synth(samples: int = 2000, size: int = 128, workers: int | None = None, repeats: int = 1,
                out: Path | None = None) -> dict:
    """Time full synth runs (planning, drawing, clouds, GeoTIFF writes, cards) and return the figures.

    Args:
        samples: samples per run.
        size: patch size in pixels.
        workers: worker processes (default: all cores).
        repeats: runs; the median time is reported.
        out: keep the data set here (default: a temporary folder, deleted after each run).
    """
    workers = workers or os.cpu_count() or 1
    times = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="esccs-bench-synth-") as tmp:
            target = Path(out) if out else Path(tmp) / "data"
            cfg = SynthConfig(out=target, samples=samples, size=size, seed=r, workers=workers, overwrite=True)
            t0 = time.perf_counter()
            synthesize(cfg, progress=False)
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    rate = samples / median
    projected = GOAL_SAMPLES / rate
    return {
        "samples": samples, "size": size, "workers": workers, "cores": os.cpu_count(), "repeats": repeats,
        "seconds_median": round(median, 2), "seconds_all": [round(t, 2) for t in times],
        "samples_per_second": round(rate, 1), "projected_seconds_for_2000": round(projected, 1),
        "goal": f"{GOAL_SAMPLES} samples of 128x128 in < {GOAL_SECONDS:.0f} s",
        "meets_goal": size == 128 and projected < GOAL_SECONDS, "machine": platform.processor() or platform.machine(),
    }
