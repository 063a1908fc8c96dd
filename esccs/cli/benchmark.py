"""``esccs benchmark``: benchmarks that print figures (timings are for reports, never for pass/fail tests)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def benchmark() -> None:
    """Measure speed and quality; print the figures and optionally save them as JSON."""


@benchmark.command()
@click.option("--samples", default=2000, show_default=True, help="Samples per run.")
@click.option("--size", default=128, show_default=True, help="Patch size in pixels.")
@click.option("--workers", default=None, type=int, help="Worker processes (default: all cores).")
@click.option("--repeats", default=1, show_default=True, help="Runs; the median is reported.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write figures as JSON.")
def synth(samples: int, size: int, workers: int | None, repeats: int, out: Path | None) -> None:
    """Time `esccs data synth` end to end (goal: 2,000 samples of 128x128 in under 2 minutes on 2 cores)."""
    from esccs.benchmarks.synth import bench_synth

    r = bench_synth(samples=samples, size=size, workers=workers, repeats=repeats)
    click.echo(f"synth: {r['samples']} samples of {r['size']}x{r['size']} px in {r['seconds_median']} s "
               f"(median of {r['repeats']}) = {r['samples_per_second']} samples/s on {r['workers']} workers; "
               f"2000 samples -> {r['projected_seconds_for_2000']} s (goal < 120 s: "
               f"{'met' if r['meets_goal'] else 'not met'})")
    if out:
        from esccs.io.atomic import write_json

        write_json(out, r)
        click.echo(f"wrote {out}")
    else:
        click.echo(json.dumps(r))
