"""``esccs benchmark``: benchmarks that print figures (timings are for reports, never for pass/fail tests)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource


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


BACKEND_NAMES = ("torch", "torch-compile", "torch-cudagraphs", "onnxruntime", "onnxruntime-int8", "tensorrt")
PRECISION_NAMES = ("fp32", "fp16", "bf16", "int8")
#: the grid options of `esccs benchmark` itself (not allowed before a subcommand)
GRID_OPTIONS = ("model", "data", "checkpoint", "int8_model", "backends", "batch_sizes", "precisions", "device",
                "threads", "min_time", "warmup", "min_iters", "eval_samples", "e2e_batch_sizes", "readers", "out")


def _optional(parse):
    def wrapped(ctx: click.Context, param: click.Parameter, value: str | None):
        return None if value is None else parse(ctx, param, value)

    return wrapped


def _e2e_sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...] | None:
    if value.strip().lower() == "all":
        return None
    if value.strip().lower() == "none":
        return ()
    return _ints(ctx, param, value)


@click.group(invoke_without_command=True, no_args_is_help=True)
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The fp32 ONNX model M (`esccs export`). Its siblings M.int8.onnx and M.engine / "
                   "M.<precision>.engine are the INT8 and TensorRT artifacts.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Labelled data folder: accuracy on its test split, end-to-end runs over its tiles.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The .safetensors M was exported from (torch rows, the fp32 reference). Default: the one "
                   "named in M's export sidecar or found beside M (its sha256 must match M's metadata).")
@click.option("--int8-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="INT8 ONNX for the onnxruntime-int8 rows [default: M.int8.onnx].")
@click.option("--backends", default=None, callback=_optional(_names(BACKEND_NAMES)),
              help="Comma-separated, from " + ", ".join(BACKEND_NAMES) + " [default: torch,onnxruntime,"
                   "onnxruntime-int8,tensorrt; on cuda also torch-cudagraphs].")
@click.option("--batch-sizes", default=None, callback=_optional(_ints),
              help="Comma-separated batch sizes [default: 1,8,32,128; on cuda 1,8,32,64,128].")
@click.option("--precisions", default=None, callback=_optional(_names(PRECISION_NAMES)),
              help="Comma-separated, crossed with the backends that run them [default: fp32,int8; on cuda "
                   "fp32,fp16,bf16,int8]. fp16/bf16 are torch autocast or TensorRT engines (CUDA only).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU intra-op threads of every backend [default: all cores this process may use].")
@click.option("--min-time", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Minimum seconds of steady-state timing per row (and per end-to-end measurement).")
@click.option("--warmup", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="Warm-up seconds per row (at least one batch; discarded).")
@click.option("--min-iters", type=click.IntRange(min=1), default=10, show_default=True,
              help="Minimum timed batches per row.")
@click.option("--eval-samples", type=click.IntRange(min=1), default=None,
              help="Cap on the labelled tiles of the accuracy pass [default: the whole test split].")
@click.option("--e2e-batch-sizes", default="all", show_default=True, callback=_e2e_sizes,
              help="Batch sizes with an end-to-end run of esccs infer's pipeline: all, none, or a list.")
@click.option("--readers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Reader threads of the end-to-end pipeline (esccs infer --workers).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for report.md, report.json and report.html [default: benchmark-report/].")
@click.pass_context
def benchmark(ctx: click.Context, model_path: Path | None, data: Path | None, checkpoint: Path | None,
              int8_model: Path | None, backends: tuple[str, ...] | None, batch_sizes: tuple[int, ...] | None,
              precisions: tuple[str, ...] | None, device: str | None, threads: int | None, min_time: float,
              warmup: float, min_iters: int, eval_samples: int | None, e2e_batch_sizes: tuple[int, ...] | None,
              readers: int, out: Path | None) -> None:
    """Benchmark inference backends side by side, or run one of the benchmark subcommands below.

    \b
    esccs benchmark --model M --data DIR [--backends ...] [--batch-sizes ...] [--precisions ...] [--out report/]
    For every backend x precision x batch size: latency p50/p90/p99 and mean (per batch and per tile),
    throughput, speedup against torch eager fp32 measured in the same run, per-stage breakdown, peak RSS and
    GPU memory, accuracy (OA, kappa) and parity with the torch fp32 reference, and `esccs infer`'s own pipeline
    end to end beside the backend-only figures. A backend that fails is a row with its error; the run goes on.
    Prints the results table; writes report.md, report.json and report.html (plots embedded) into --out.
    \b
    esccs benchmark --model demo/model.onnx --data demo/data --checkpoint demo/run/target/model.safetensors
    esccs benchmark --model m.onnx --data data/ --device cuda --backends torch,torch-cudagraphs,tensorrt
    \b
    Subcommands (esccs benchmark COMMAND --help): synth, ops, train, infer, read.
    """
    if ctx.invoked_subcommand is not None:
        given = [f"--{n.replace('_', '-')}" for n in GRID_OPTIONS
                 if ctx.get_parameter_source(n if n != "model" else "model_path") != ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)} belong to the backend grid (esccs benchmark --model M "
                                   f"--data DIR), not to `esccs benchmark {ctx.invoked_subcommand}`")
        return
    if model_path is None or data is None:
        raise click.UsageError("the backend grid needs --model M and --data DIR (or name a subcommand: synth, ops, "
                               "train, infer, read)")
    import shlex
    import sys

    from esccs.benchmarks.engines import BackendError
    from esccs.benchmarks.inference import BenchConfig, run_benchmark
    from esccs.benchmarks.report import terminal_text, write_report

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = BenchConfig(model=model_path, data=data, checkpoint=checkpoint, int8_model=int8_model, backends=backends,
                      batch_sizes=batch_sizes, precisions=precisions, device=device, min_time=min_time,
                      warmup=warmup, min_iters=min_iters, threads=threads, eval_samples=eval_samples,
                      e2e_batch_sizes=e2e_batch_sizes, readers=readers,
                      command=shlex.join(["esccs", *sys.argv[1:]]) if sys.argv[1:2] == ["benchmark"] else "")
    try:
        report = run_benchmark(cfg, log=lambda m: click.echo(m, err=True))
    except BackendError as err:
        raise click.ClickException(str(err)) from None
    paths = write_report(report, out or Path("benchmark-report"))
    click.echo(terminal_text(report))
    click.echo(f"wrote {paths['md']}, {paths['json']}, {paths['html']}")


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
@click.option("--nproc", "nprocs", default=None, callback=_optional(_ints),
              help="Instead: data-parallel scaling of the training loop with these torchrun process counts, e.g. "
                   "1,2 (CPU, gloo, one thread each; --batch is the global batch; --out also writes a .md).")
@click.option("--samples", default=512, show_default=True, help="With --nproc: training samples per epoch.")
@click.option("--epochs", default=3, show_default=True, help="With --nproc: epochs per run (the first left out).")
def train_speed(arch: str, width: int, size: int, batch: int, device: str | None, rounds: int, min_time: float,
                run_dir: Path | None, out: Path | None, nprocs: tuple[int, ...] | None, samples: int,
                epochs: int) -> None:
    """Samples/s per training step kind, and step 2 (IRM + KD) against a plain dual step (goal <= 1.15x).

    With --nproc 1,2: samples/s of `torchrun --nproc_per_node N` training and the scaling efficiency instead.
    """
    from esccs.benchmarks.train import bench_train, format_train, stage_speeds

    if nprocs:
        from esccs.benchmarks.train import bench_ddp, format_ddp
        from esccs.io.atomic import atomic_path, write_json

        r = bench_ddp(nprocs, arch, width, size, batch, samples, epochs, rounds)
        r["command"] = (f"esccs benchmark train --nproc {','.join(map(str, nprocs))} --arch {arch} --width {width} "
                        f"--size {size} --batch {batch} --samples {samples} --epochs {epochs} --rounds {rounds}")
        click.echo(format_ddp(r))
        if out:
            write_json(out, r)
            with atomic_path(out.with_suffix(".md")) as tmp:
                tmp.write_text(format_ddp(r) + "\n")
            click.echo(f"wrote {out} and {out.with_suffix('.md')}")
        return
    r = bench_train(arch, width, size, batch, device, rounds, min_time)
    stages = stage_speeds(run_dir) if run_dir else None
    click.echo(format_train(r, stages))
    if out:
        from esccs.io.atomic import write_json

        write_json(out, {**r, "stages": stages})
        click.echo(f"wrote {out}")


@benchmark.command(name="infer")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Tiles to read (any layout `esccs infer` takes; the target part of a synth folder).")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Exported ONNX model. Default: a random-weight --arch model exported at the tiles' size.")
@click.option("--arch", default="dual_resnet18", show_default=True, help="Without --model: the architecture.")
@click.option("--width", default=64, show_default=True, help="Without --model: channels of the first stage.")
@click.option("--tiles", "counts", default="1000,20000", show_default=True, callback=_ints,
              help="Tile counts of the end-to-end runs (peak RSS should stay flat across them).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--workers", default=1, show_default=True, help="Reader threads of `esccs infer`.")
@click.option("--threads", type=int, default=None, help="Backend CPU threads (default: all cores).")
@click.option("--min-time", default=5.0, show_default=True, help="Seconds of backend-only timing.")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for hard-linked tile sets and outputs (default /tmp/esccs-bench-infer).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write figures as JSON.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: the local engine vs Ray Data with 1 and N actors on the same tiles, interleaved rounds, and "
                   "Ray's start-up (--tiles: one count [default 4000]; also writes OUT's .md).")
@click.option("--rounds", default=3, show_default=True, help="--engine ray: interleaved rounds.")
@click.pass_context
def infer_speed(ctx: click.Context, data: Path, model_path: Path | None, arch: str, width: int,
                counts: tuple[int, ...], batch_size: int, workers: int, threads: int | None, min_time: float,
                scratch: Path | None, out: Path | None, engine: str, rounds: int) -> None:
    """`esccs infer` end to end vs its backend alone (goal >= 0.85x on 2 cores), and peak RSS vs tile count."""
    from esccs.benchmarks.infer import bench_infer, random_model

    scratch = scratch or Path("/tmp/esccs-bench-infer")
    if model_path is None:
        model_path = random_model(data, arch, width, scratch)
        click.echo(f"model: random-weight {arch} width {width} -> {model_path}")
    if engine == "ray":
        import shlex
        import sys

        from esccs.benchmarks.ray_infer import bench_ray, markdown

        n = 4000 if ctx.get_parameter_source("counts") == ParameterSource.DEFAULT else counts[0]
        r = bench_ray(model_path, data, n, batch_size, rounds, scratch, log=click.echo)
        if out:
            from esccs.io.atomic import write_json, write_text

            write_json(out, r)
            write_text(out.with_suffix(".md"), markdown(r, shlex.join(["esccs", *sys.argv[1:]])))
            click.echo(f"wrote {out} and {out.with_suffix('.md')}")
        return
    r = bench_infer(model_path, data, counts, batch_size, workers, threads, scratch, min_time, log=click.echo)
    if out:
        from esccs.io.atomic import write_json

        write_json(out, r)
        click.echo(f"wrote {out}")


@benchmark.command(name="read")
@click.option("--sizes", default="32,128,256", show_default=True, callback=_ints, help="Tile sizes in pixels.")
@click.option("--paths", default="rasterio,fast", show_default=True, callback=_names(("rasterio", "fast")),
              help="Read paths: rasterio (ESCCS_READER=rasterio, the reference) and fast (the default).")
@click.option("--workers", default="1,2", show_default=True, callback=_ints,
              help="Reader workers: 1 is a thread, more are worker processes (and, with --threads-too, threads).")
@click.option("--threads-too/--no-threads-too", default=True, show_default=True,
              help="Also time N reader threads for every N > 1 (they do not scale; this shows it).")
@click.option("--rounds", default=5, show_default=True, help="Interleaved rounds over the configurations.")
@click.option("--min-time", default=1.0, show_default=True, help="Seconds per configuration and round.")
@click.option("--samples", default=64, show_default=True, help="Synthetic samples per size (half are tiles read).")
@click.option("--tiff-profile", "profile", default="sen12ms", show_default=True,
              help="GeoTIFF layout of the tiles (esccs data synth --tiff-profile).")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the synthetic tiles (default /tmp/esccs-bench-read).")
@click.option("--e2e-sizes", default="32,128", show_default=True, callback=_e2e_sizes,
              help="Sizes with `esccs infer` end to end vs reader-only vs backend-only (a list, all or none).")
@click.option("--e2e-tiles", default=4000, show_default=True, help="Tiles of each end-to-end run (hard links).")
@click.option("--e2e-workers", default="1,2", show_default=True, callback=_ints, help="Reader workers of those runs.")
@click.option("--e2e-rounds", default=3, show_default=True, help="Interleaved rounds of the end-to-end comparison.")
@click.option("--arch", default="dual_resnet10", show_default=True, help="Random-weight model of the e2e runs.")
@click.option("--width", default=16, show_default=True, help="Channels of its first stage (16: the demo model's).")
@click.option("--threads", type=int, default=None, help="Backend CPU threads (default: all cores).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write figures as JSON, and a Markdown table beside it (.md).")
def read_speed(sizes: tuple[int, ...], paths: tuple[str, ...], workers: tuple[int, ...], threads_too: bool,
               rounds: int, min_time: float, samples: int, profile: str, scratch: Path | None,
               e2e_sizes: tuple[int, ...] | None, e2e_tiles: int, e2e_workers: tuple[int, ...], e2e_rounds: int,
               arch: str, width: int, threads: int | None, out: Path | None) -> None:
    """Reader-only triples/s (rasterio vs fast path, 1 and 2 workers) and `esccs infer` end to end vs its parts.

    Reader-only: both read paths and worker counts side by side in interleaved rounds. End to end: `esccs infer`
    against reader-only and backend-only on the same tiles (a random-weight --arch model at each --e2e-sizes).

    Goals (issue 15): 256 px, one worker, fast >= 4x rasterio; 2 workers >= 1.7x one worker; end to end >= 0.9x
    min(reader-only, backend-only) at 32 and 128 px.
    """
    import shlex
    import sys

    from esccs.benchmarks.read import bench_read, e2e_goals, format_e2e, format_read

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    r = bench_read(sizes, paths, workers, threads_too, rounds, min_time, samples, profile, scratch, log=log)
    if e2e_sizes is None:
        e2e_sizes = sizes
    if e2e_sizes:
        from esccs.benchmarks.infer import bench_parts, random_model
        from esccs.benchmarks.read import tile_data

        scratch = Path(scratch or "/tmp/esccs-bench-read")
        r["end_to_end"] = {}
        for size in e2e_sizes:
            data = tile_data(scratch, size, samples, profile)
            model = random_model(data, arch, width, scratch)
            r["end_to_end"][str(size)] = bench_parts(model, data, e2e_tiles, workers=e2e_workers, threads=threads,
                                                     rounds=e2e_rounds, min_time=min_time, scratch=scratch, log=log)
        r["goals"] += e2e_goals(r)
    r["command"] = shlex.join(["esccs", *sys.argv[1:]]) if sys.argv[1:2] == ["benchmark"] else ""
    table = format_read(r) + format_e2e(r)
    click.echo(table)
    if out:
        from esccs.io.atomic import write_json, write_text

        write_json(out, r)
        write_text(out.with_suffix(".md"), table)
        click.echo(f"wrote {out} and {out.with_suffix('.md')}")
