"""``esccs infer``: batched dual-modality inference over GeoTIFF tiles or a large scene (torch-free runtime)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

#: exit status when the run finished but some tiles failed (their reasons are in the errors file)
EXIT_TILES_FAILED = 3
#: options of --engine ray only (name -> flag)
RAY_FLAGS = {"address": "--address", "actors": "--actors", "cpus_per_actor": "--cpus-per-actor",
             "gpus_per_actor": "--gpus-per-actor", "shard_size": "--shard-size"}


@click.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("--model", "-m", "model_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Exported model: .onnx, .engine (+ its .json sidecar) or a .safetensors checkpoint.")
@click.option("--sar", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Scene mode: the SAR GeoTIFF paired with the optical scene SRC (same grid).")
@click.option("--cloud-mask", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Scene mode: an optional cloud mask on the same grid (0 clear, 1 thick, 2 thin, 3 shadow).")
@click.option("--stride", type=int, default=None, help="Scene mode: window step in pixels (default: the patch size).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "torch"]), default="auto",
              show_default=True, help="Inference engine (auto: from the model's file type).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses a GPU when the backend can.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--out", "-o", "outs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Results table(s): .csv, .geojson (EPSG:4326) or .parquet; repeat for several "
                   "[default: predictions.csv].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run: tiles already in the manifest are skipped.")
@click.option("--overwrite", is_flag=True, help="Discard earlier results at the same outputs and start again.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Reader workers: 1 is a thread; more are worker processes filling shared-memory batch rows "
                   "(threads do not scale; ESCCS_READER_POOL=thread forces them). On a GPU host use more. "
                   "ESCCS_READER=rasterio reads every file with rasterio (the reference path). Readers run 3 "
                   "nice levels below the backend so that shared cores serve the model first "
                   "(ESCCS_READER_NICE=0..19; 0 = same priority).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of the backend [default: all cores this process may use].")
@click.option("--part", default=None, help="Part of an `esccs data synth` folder (default: target).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N tiles (smoke runs).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: Ray Data actors, locally or on a cluster (pip install 'esccs[ray]').")
@click.option("--address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
              help="Ray: the cluster to join (auto, HOST:PORT, ray://HOST:PORT) [default: start a local Ray with "
                   "this machine's cores].")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Ray: model actors [default: as many as the cluster's CPUs (or GPUs) allow].")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Ray: CPUs reserved per actor (its backend threads unless --threads is given).")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Ray: GPUs per actor (1 = one GPU each; 0.5 = two actors share one).")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Ray: tiles per shard, the unit of retry and commit [default: 8 batches].")
@click.pass_context
def infer(ctx: click.Context, src: Path, model_path: Path, sar: Path | None, cloud_mask: Path | None,
          stride: int | None, backend: str, device: str, batch_size: int, outs: tuple[Path, ...], resume: bool,
          overwrite: bool, workers: int, threads: int | None, part: str | None, limit: int | None, quiet: bool,
          engine: str, address: str | None, actors: int | None, cpus_per_actor: float, gpus_per_actor: float,
          shard_size: int | None) -> None:
    """Classify every tile of SRC (a folder) or every window of a scene (SRC = optical GeoTIFF with --sar).

    \b
    SRC may be:
      a SEN12MS / SEN12MS-CR folder (the cloudy S2 is used when present), a paired folder
      (optical/, sar/, optional cloud_mask/), an `esccs data synth` folder, or an optical scene GeoTIFF
      with --sar (sliding window -> <out>.class.tif + <out>.confidence.tif on the scene's grid).
    \b
    Per tile: class, confidence, top-3, modality weights (optical, SAR), cloud coverage (mask or estimated),
    footprint. Beside the first output: <out>.summary.json, <out>.errors.csv, <out>.manifest.jsonl (done list).
    A tile without its SAR partner, or bad in any way, is skipped with a one-line reason and the run goes on.
    \b
    Exit status: 0 all tiles classified; 3 finished but some tiles failed (see the errors file); 1 the run
    could not start or stopped (interrupted? rerun with --resume).
    \b
    --engine ray runs the same jobs on Ray Data actors (each loads the model once) and writes the same outputs:
    shards are committed whole (temp file + rename), a killed actor is retried by Ray, a killed run is finished
    by --resume; one row per tile. On a cluster the model, tiles and outputs must be at the same paths on every
    node (a shared filesystem, or /vsis3/... paths GDAL reads). See README "Scale-out inference (Ray)".
    \b
    esccs infer demo/data --model demo/model.onnx --out demo/predictions.csv --out demo/predictions.geojson
    esccs infer scene_s2.tif --sar scene_s1.tif --model model.onnx --out scene.csv
    esccs infer demo/data --model demo/model.onnx --out demo/ray.csv --engine ray --actors 2
    esccs infer /shared/tiles --model /shared/m.onnx --out /shared/p.csv --engine ray --address auto --gpus-per-actor 1
    """
    from esccs.runtime import InferOptions, load_model, open_scene, open_tiles, run_inference
    from esccs.runtime.model import backend_for

    if engine == "local":
        given = [flag for name, flag in RAY_FLAGS.items()
                 if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.ENVIRONMENT)]
        if given:
            raise click.UsageError(f"{', '.join(given)} belong to --engine ray")
    outputs = list(outs) or [Path("predictions.csv")]
    if engine == "ray":  # the driver's copy only gives the metadata: the actors load their own
        from esccs.runtime.ray_engine import import_ray

        import_ray()  # Ray missing: the install hint before anything else
        native = backend_for(model_path, backend)
        model = load_model(model_path, backend=backend, device=device if native == "tensorrt" else "cpu", threads=1)
    else:
        model = load_model(model_path, backend=backend, device=device, threads=threads)
    if src.is_file():
        if sar is None:
            raise click.UsageError("SRC is a file: scene mode needs its SAR partner (--sar SAR.tif)")
        source = open_scene(src, sar, model.info.patch_size, stride, cloud_mask)
        where = (f"scene {source.grid['width']}x{source.grid['height']} px -> {source.grid['rows']}x"
                 f"{source.grid['cols']} windows of {model.info.patch_size} px, stride {source.grid['stride']}"
                 f"{'' if source.grid['block_aligned'] else ' (windows not aligned to the file blocks: slower reads)'}")
    else:
        if sar or cloud_mask or stride:
            raise click.UsageError("--sar, --cloud-mask and --stride are for scene mode (SRC = an optical GeoTIFF)")
        source = open_tiles(src, part)
        where = f"{len(source.jobs)} tiles ({source.layout} layout) in {source.root}"
    click.echo(f"model: {model.describe()}", err=True)
    click.echo(f"input: {where}" + (f"; {len(source.skipped)} files unpaired" if source.skipped else ""), err=True)
    opts = InferOptions(batch_size=batch_size, readers=workers, resume=resume, overwrite=overwrite,
                        progress=not quiet, limit=limit)
    try:
        if engine == "ray":
            from esccs.runtime.ray_engine import RayOptions, run_inference_ray

            ray_opts = RayOptions(address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                                  gpus_per_actor=gpus_per_actor, threads=threads, shard_size=shard_size, device=device,
                                  backend=backend)
            s = run_inference_ray(source, model, outputs, opts, ray_opts)
        else:
            s = run_inference(source, model, outputs, opts)
    except KeyboardInterrupt:
        where = "committed shards are kept" if engine == "ray" else "finished tiles are in the manifest"
        raise click.ClickException(f"interrupted; {where}: rerun with --resume") from None
    finally:
        model.close()
    click.echo(f"classified {s['classified']} of {s['jobs']} tiles, {s['failed']} failed, "
               f"{s['tiles_per_second']} tiles/s this run ({s['seconds']} s; backend alone "
               f"{s['backend_tiles_per_second']} tiles/s), peak RSS {s['peak_rss_mb']} MiB")
    if engine == "ray":
        _echo_ray(s)
    for path in s["outputs"]:
        click.echo(f"wrote {path}")
    click.echo(f"summary: {s['manifest'].replace('.manifest.jsonl', '.summary.json')}")
    if s["failed"]:
        for why, n in sorted(s["failure_reasons"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  {n} x {why}", err=True)
        click.echo(f"{s['failed']} tiles failed: see {s['errors_file']}", err=True)
        raise SystemExit(EXIT_TILES_FAILED)


def _echo_ray(s: dict) -> None:
    """Ray settings and the per-actor figures of a run (also in the summary JSON)."""
    r = s["ray"]
    click.echo(f"ray {r['ray_version']} at {r['address']} ({'local, ' if r['started_local'] else ''}{r['nodes']} "
               f"nodes, {r['cpus']:g} CPUs, {r['gpus']:g} GPUs; start-up {r['startup_seconds']} s): {r['actors']} "
               f"actors x ({r['cpus_per_actor']:g} CPU, {r['gpus_per_actor']:g} GPU, {r['threads_per_actor']} "
               f"threads), {r['shards_this_run']} shards of {r['shard_size']}; first result after "
               f"{r['first_result_seconds']} s, then {r['steady_tiles_per_second']} tiles/s")
    for a in s["actors"]:
        click.echo(f"  actor {a['actor'][:8]} on {a['host']}: {a['tiles']} tiles in {a['shards']} shards, "
                   f"{a['tiles_per_second']} tiles/s, {a['waiting_for_reads_seconds']} s waiting for reads"
                   + (f", {a['restarts']} restarts" if a["restarts"] else ""))
