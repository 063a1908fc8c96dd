"""Timing helpers with trtexec's rigour: warm-up, a minimum duration, per-stage laps and robust statistics.

A *step* is one batch through the pipeline. It receives a clock and marks the end of each stage on it
(``clock.lap("compute")``); :func:`measure` runs warm-up steps for ``warmup_s`` seconds (at least one), then timed
steps until both ``min_time_s`` seconds and ``min_iters`` steps are reached, and returns every step's stage times.

* CPU clock (:class:`HostClock`): ``time.perf_counter_ns`` between laps.
* GPU clock (:class:`CudaClock`): CUDA events recorded on the working stream at each lap; the step ends with a
  synchronise on the last event, so exactly one batch is in flight (trtexec's latency mode). The host time spent
  issuing work (enqueue time) is recorded alongside.

Statistics are outlier-robust: median, percentiles and MAD beside mean/std; the coefficient of variation flags an
unstable machine like trtexec's "GPU compute time is unstable" warning (CoV > 2.5 %).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the stages of one batch, in pipeline order (trtexec: latency = h2d + compute + d2h)
STAGES = ("read", "preprocess", "h2d", "compute", "d2h", "postprocess")
LATENCY_STAGES = ("h2d", "compute", "d2h")
#: trtexec's instability threshold on the coefficient of variation
UNSTABLE_COV = 0.025


def summarize(values_ms: Any) -> dict[str, float | int]:
    """Robust summary of a sample of times in milliseconds.

    Args:
        values_ms: a sequence of durations (ms).

    Returns:
        ``n, mean, std, min, max, p50, p90, p95, p99, mad, cov`` (``cov`` = std / mean); all NaN-free for n >= 1.
    """
    x = np.asarray(values_ms, np.float64)
    if x.size == 0:
        return {"n": 0}
    p50, p90, p95, p99 = np.percentile(x, [50, 90, 95, 99])
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"n": int(x.size), "mean": mean, "std": std, "min": float(x.min()), "max": float(x.max()),
            "p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
            "mad": float(np.median(np.abs(x - p50))), "cov": std / mean if mean > 0 else 0.0}


class HostClock:
    """Stage laps on the host clock (``time.perf_counter_ns``)."""

    def __init__(self) -> None:
        self.t = time.perf_counter_ns()
        self.laps: dict[str, int] = {}

    def lap(self, stage: str) -> None:
        """Close ``stage`` now (adds to it if it was lapped before in this step)."""
        now = time.perf_counter_ns()
        self.laps[stage] = self.laps.get(stage, 0) + now - self.t
        self.t = now

    def wait(self) -> None:
        """Wait for issued device work (no-op on the host clock: host work is done when it returns)."""

    def finish(self) -> dict[str, float]:
        """Stage durations of this step in ms."""
        return {k: v / 1e6 for k, v in self.laps.items()}


class CudaClock(HostClock):
    """Stage laps as CUDA events recorded on the working ``stream`` (GPU time) for the device stages.

    An event is recorded at creation and at every lap, so a device stage lasts from the previous lap's event to its
    own; host stages keep the host clock. The host time spent issuing ``compute`` is its *enqueue* time.
    :meth:`finish` synchronises on the last event, so one batch is in flight at a time.
    """

    def __init__(self, stream: Any, device_stages: tuple[str, ...] = LATENCY_STAGES) -> None:
        import torch

        self._torch, self.stream, self.device_stages = torch, stream, device_stages
        self.events: list[tuple[str, Any, Any]] = []
        super().__init__()
        self._last = self._event()

    def _event(self) -> Any:
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record(self.stream)
        return ev

    def lap(self, stage: str) -> None:
        """Close ``stage``: an event pair for device stages (and the issue time), the host clock otherwise."""
        ev = self._event()
        now = time.perf_counter_ns()
        if stage in self.device_stages:
            self.events.append((stage, self._last, ev))
            if stage == "compute":
                self.laps["enqueue"] = self.laps.get("enqueue", 0) + now - self.t
        else:
            self.laps[stage] = self.laps.get(stage, 0) + now - self.t
        self._last, self.t = ev, now

    def wait(self) -> None:
        """Block until the last event completed; the wait is charged to no host stage."""
        self._last.synchronize()
        self.t = time.perf_counter_ns()

    def finish(self) -> dict[str, float]:
        """Synchronise on the last event (one batch in flight) and return stage durations in ms."""
        self._last.synchronize()
        out = super().finish()
        for stage, a, b in self.events:
            out[stage] = out.get(stage, 0.0) + a.elapsed_time(b)
        return out


@dataclass
class Timed:
    """The result of :func:`measure`.

    Attributes:
        steps: per timed step, stage -> ms.
        warmup_steps: steps run (and discarded) during warm-up.
        warmup_s: seconds spent warming up.
        wall_s: total host walltime of the timed steps (throughput = items / wall_s, as trtexec).
    """

    steps: list[dict[str, float]] = field(default_factory=list)
    warmup_steps: int = 0
    warmup_s: float = 0.0
    wall_s: float = 0.0

    def stage(self, name: str) -> list[float]:
        """Per-step ms of one stage (0 where a step did not lap it)."""
        return [s.get(name, 0.0) for s in self.steps]

    def total(self, stages: tuple[str, ...] | None = None) -> list[float]:
        """Per-step sum of ``stages`` (all stages when ``None``)."""
        return [sum(v for k, v in s.items() if (stages is None and k != "enqueue") or (stages and k in stages))
                for s in self.steps]


def measure(step: Callable[[HostClock], Any], clock: Callable[[], HostClock] = HostClock, *,
            warmup_s: float = 0.2, min_time_s: float = 1.0, min_iters: int = 10,
            max_iters: int = 1_000_000) -> Timed:
    """Time ``step`` after a warm-up, for at least ``min_time_s`` seconds and ``min_iters`` steps.

    Args:
        step: called with a fresh clock per step; it calls ``clock.lap(stage)`` at the end of each stage. A step
            that laps nothing is timed as one ``compute`` stage.
        clock: clock factory (:class:`HostClock`, or a ``CudaClock`` partial for GPU work).
        warmup_s: warm-up duration; at least one warm-up step always runs and none is reported.
        min_time_s: minimum timed duration.
        min_iters: minimum number of timed steps.
        max_iters: hard cap on timed steps.

    Returns:
        A :class:`Timed` with every timed step's stage durations (ms).
    """
    t0 = time.perf_counter()
    n_warm = 0
    while n_warm == 0 or time.perf_counter() - t0 < warmup_s:
        c = clock()
        step(c)
        c.finish()
        n_warm += 1
    out = Timed(warmup_steps=n_warm, warmup_s=time.perf_counter() - t0)
    start = time.perf_counter()
    end = start + min_time_s
    while len(out.steps) < max_iters and (len(out.steps) < min_iters or time.perf_counter() < end):
        c = clock()
        step(c)
        if not c.laps and not getattr(c, "events", None):  # a step without laps is one compute stage
            c.lap("compute")
        out.steps.append(c.finish())
    out.wall_s = time.perf_counter() - start
    return out
