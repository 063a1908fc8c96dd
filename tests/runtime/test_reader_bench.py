"""``esccs benchmark read`` runs both read paths side by side and reports what each read (no timing asserted)."""

from __future__ import annotations

import json
import os

import pytest
import rasterio
from click.testing import CliRunner

from esccs.cli import cli
from esccs.runtime import open_tiles


def test_benchmark_read_reports_both_paths_and_the_goals(tmp_path):
    out = tmp_path / "read.json"
    res = CliRunner().invoke(cli, ["benchmark", "read", "--sizes", "16", "--rounds", "2", "--min-time", "0.05",
                                   "--samples", "8", "--workers", "1", "--no-threads-too", "--e2e-sizes", "none",
                                   "--scratch", str(tmp_path / "scratch"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    rows = {row["path"]: row for row in r["sizes"]["16"]["rows"]}
    assert set(rows) == {"rasterio", "fast"} and all(len(row["rounds"]) == 2 for row in rows.values())
    assert rows["fast"]["files"]["fast"] > 0 and rows["fast"]["files"]["rasterio"] == 0
    assert rows["rasterio"]["files"]["rasterio"] > 0 and rows["rasterio"]["files"]["fast"] == 0
    # each layout (S2, S1, mask) is checked against rasterio once per UTM zone of the tiles, then trusted
    zones = {rasterio.open(j.optical).crs.to_epsg() for j in open_tiles(r["sizes"]["16"]["data"]).jobs}
    assert rows["fast"]["signatures_checked"] == 3 * len(zones)
    assert "fast/rasterio 1 thread" in r["sizes"]["16"]["ratios"]
    assert len(r["sizes"]["16"]["cpu_two_process_scaling"]) == 2
    assert (tmp_path / "read.md").read_text().startswith("Reader only, tile triples/s")


def test_cpu_ceiling_is_the_cores_over_the_cpu_a_tile_costs():
    from esccs.benchmarks.infer import cpu_ceiling

    # 1 ms backend + 0.5 ms reader CPU per tile on 2 cores: at most 1333 tiles/s, and never above either part
    assert cpu_ceiling(2000.0, 3000.0, 1e-3, 0.5e-3, 2) == 2 / 1.5e-3
    assert cpu_ceiling(1000.0, 3000.0, 1e-3, 0.5e-3, 2) == 1000.0  # the backend alone is slower than the CPU bound
    assert cpu_ceiling(2000.0, 3000.0, 1e-3, 0.5e-3, 1) == 1 / 1.5e-3


def test_end_to_end_reports_its_parts_and_the_cpu_ceiling(tmp_path):
    """A real (tiny) run: esccs infer in a subprocess, backend-only and reader-only, with each round's CPU ceiling."""
    from esccs.benchmarks.infer import bench_parts, cpu_ceiling, random_model
    from esccs.benchmarks.read import e2e_goals, format_e2e, tile_data

    data = tile_data(tmp_path, 16, 8)
    model = random_model(data, "dual_resnet10", 8, tmp_path)
    e = bench_parts(model, data, tiles=64, batch=8, workers=(1,), rounds=1, min_time=0.05, scratch=tmp_path,
                    log=lambda *_: None)
    row = e["by_workers"]["1"]
    r = row["rounds"]
    assert row["end_to_end_tiles_per_s"] > 0 and r["cpu_backend_ms"][0] > 0 and r["cpu_reader_ms"][0] > 0
    cores = e["cores"]
    want = cpu_ceiling(r["backend"][0], r["reader"][0], r["cpu_backend_ms"][0] / 1e3, r["cpu_reader_ms"][0] / 1e3,
                       len(os.sched_getaffinity(0)))
    assert r["ceiling"][0] == pytest.approx(want, rel=1e-2, abs=0.1) and cores >= 1
    assert r["ceiling"][0] <= min(r["backend"][0], r["reader"][0]) + 0.1
    assert row["cpu_ceiling_over_min_parts"] == pytest.approx(r["ceiling"][0] / min(r["backend"][0], r["reader"][0]),
                                                              abs=2e-3)
    (goal,) = e2e_goals({"end_to_end": {"16": e}})
    assert goal["cpu_ceiling"] == row["cpu_ceiling_over_min_parts"]
    assert goal["reachable_here"] == (goal["cpu_ceiling"] >= 0.9)
    assert "CPU ceiling / min" in format_e2e({"end_to_end": {"16": e}})
