"""``esccs benchmark read`` runs both read paths side by side and reports what each read (no timing asserted)."""

from __future__ import annotations

import json

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
