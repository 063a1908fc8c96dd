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


def _ints(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


def _names(choices: tuple[str, ...]):
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
        out = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in out if v not in choices]
        if bad or not out:
            raise click.BadParameter(f"unknown {', '.join(bad) or 'empty list'}; choose from {','.join(choices)}")
        return out

    return parse


@benchmark.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--batch-sizes", default="256,1024,4096", show_default=True, callback=_ints, help="Batch sizes B.")
@click.option("--classes", default=10, show_default=True, help="Classes K of the logits (B, K).")
@click.option("--feat-dim", default=512, show_default=True, help="Feature width of grad_scale's (B, D) input.")
@click.option("--providers", default="fused,eager,compile", show_default=True,
              callback=_names(("fused", "eager", "compile")), help="Comma-separated providers.")
@click.option("--ops", "op_names", default="irm_kd,unimodal_kd,grad_scale", show_default=True,
              callback=_names(("irm_kd", "unimodal_kd", "grad_scale")), help="Comma-separated ops.")
@click.option("--min-time", default=0.2, show_default=True, help="Seconds each timed stage lasts at least.")
@click.option("--time-interpreter", is_flag=True, help="On CPU, time the Triton interpreter too (not a speed).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write rows as JSON.")
def ops(device: str | None, batch_sizes: tuple[int, ...], classes: int, feat_dim: int, providers: tuple[str, ...],
        op_names: tuple[str, ...], min_time: float, time_interpreter: bool, out: Path | None) -> None:
    """Time the fused ops (forward + backward) against eager PyTorch and torch.compile; print a Markdown table."""
    import torch

    from esccs.benchmarks.ops import bench_ops, format_ops_table, ops_goals

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: no CUDA GPU is visible to torch")
    rows = bench_ops(device=device, batch_sizes=batch_sizes, n_classes=classes, feat_dim=feat_dim,
                     providers=providers, min_time=min_time, ops=op_names, time_interpreter=time_interpreter)
    click.echo(format_ops_table(rows))
    goals = ops_goals(rows)
    click.echo("\n".join(goals))
    if out:
        from esccs.io.atomic import write_json

        write_json(out, {"torch": torch.__version__, "goals": goals, "rows": rows})
        click.echo(f"wrote {out}")


@benchmark.command(name="train")
@click.option("--arch", default="resnet10", show_default=True, help="Backbone family.")
@click.option("--width", default=16, show_default=True, help="Channels of the first ResNet stage.")
@click.option("--size", default=32, show_default=True, help="Patch size in pixels.")
@click.option("--batch", default=64, show_default=True, help="Batch size.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--rounds", default=5, show_default=True, help="Alternating rounds over the step kinds.")
@click.option("--min-time", default=5.0, show_default=True, help="Seconds of timing per step kind in total.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Also report the samples/s each stage of this run folder achieved (from its log.csv files).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write figures as JSON.")
def train_speed(arch: str, width: int, size: int, batch: int, device: str | None, rounds: int, min_time: float,
                run_dir: Path | None, out: Path | None) -> None:
    """Samples/s per training step kind, and step 2 (IRM + KD) against a plain dual step (goal <= 1.15x)."""
    from esccs.benchmarks.train import bench_train, format_train, stage_speeds

    r = bench_train(arch, width, size, batch, device, rounds, min_time)
    stages = stage_speeds(run_dir) if run_dir else None
    click.echo(format_train(r, stages))
    if out:
        from esccs.io.atomic import write_json

        write_json(out, {**r, "stages": stages})
        click.echo(f"wrote {out}")
