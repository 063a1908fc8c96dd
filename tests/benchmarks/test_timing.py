"""The timing helpers on known workloads: sleeps and fixed work give sane percentiles; warm-up is excluded."""

import time

import numpy as np
import pytest

from esccs.benchmarks.inference import stats_row
from esccs.benchmarks.timing import HostClock, Timed, measure, summarize


def test_summarize_known_values():
    s = summarize(np.arange(1, 101, dtype=float))
    assert s["n"] == 100 and s["min"] == 1 and s["max"] == 100 and s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5) and s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["mad"] == pytest.approx(25.0) and s["cov"] == pytest.approx(s["std"] / 50.5)
    assert summarize([]) == {"n": 0}
    one = summarize([3.0])
    assert one["std"] == 0.0 and one["p50"] == one["p99"] == 3.0


def test_sleep_10ms_gives_sane_percentiles_and_excludes_warmup():
    calls = []

    def step(clock):
        calls.append(1)
        time.sleep(0.010)

    timed = measure(step, warmup_s=0.03, min_time_s=0.12, min_iters=5)
    s = summarize(timed.total())
    assert timed.warmup_steps >= 1 and len(calls) == timed.warmup_steps + s["n"]  # warm-up ran, not reported
    assert s["n"] >= 5
    assert 9.5 <= s["p50"] <= 30.0
    assert s["min"] >= 9.5 and s["p90"] >= s["p50"] and s["p99"] >= s["p90"] and s["max"] >= s["p99"]
    assert timed.wall_s >= 0.12 and timed.wall_s >= sum(timed.total()) / 1e3 * 0.99
    assert all(set(st) == {"compute"} for st in timed.steps)  # a step without laps is one compute stage


def test_fixed_work_is_ordered_and_min_iters_wins_over_min_time():
    x = np.random.default_rng(0).random(200_000)

    def step(clock):
        float(np.sort(x)[0])

    timed = measure(step, warmup_s=0.0, min_time_s=0.0, min_iters=7)
    s = summarize(timed.total())
    assert s["n"] == 7 and timed.warmup_steps == 1
    assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]


def test_stage_laps_and_trtexec_latency():
    def step(clock):
        time.sleep(0.002)
        clock.lap("h2d")
        time.sleep(0.006)
        clock.lap("compute")
        time.sleep(0.001)
        clock.lap("d2h")
        time.sleep(0.004)
        clock.lap("postprocess")

    timed = measure(step, warmup_s=0.0, min_time_s=0.05, min_iters=4)
    row = stats_row(timed, batch=8)
    lat = row["latency_ms"]
    # latency = h2d + compute + d2h (postprocess excluded); the whole step includes it
    assert 9.0 <= lat["p50"] < row["step_ms"]["p50"]
    assert row["stages_p50_ms"]["compute"] >= 6.0 and row["stages_p50_ms"]["postprocess"] >= 4.0
    assert row["stages_p50_ms"]["read"] is None and row["enqueue_ms"] is None
    assert row["latency_per_tile_ms"]["p50"] == pytest.approx(lat["p50"] / 8)
    assert row["throughput"] == pytest.approx(8 * lat["n"] / timed.wall_s)
    assert row["iterations"] == lat["n"] == len(row["samples_ms"]) >= 4


def test_host_clock_adds_repeated_laps():
    c = HostClock()
    time.sleep(0.002)
    c.lap("compute")
    c.lap("postprocess")
    time.sleep(0.002)
    c.lap("compute")
    ms = c.finish()
    assert ms["compute"] >= 4.0 and ms["postprocess"] < ms["compute"]
    t = Timed(steps=[{"h2d": 1.0, "compute": 2.0, "enqueue": 0.5}, {"compute": 3.0}])
    assert t.total() == [3.0, 3.0] and t.total(("compute",)) == [2.0, 3.0] and t.stage("h2d") == [1.0, 0.0]
