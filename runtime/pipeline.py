"""The batched inference pipeline behind ``esccs infer``: readers -> ring of batch buffers -> backend -> writer.

::

    producer thread ──submits── reader pool (1 thread, or K worker processes: runtime/workers.py)
         │   takes a free slot of the ring, reads B jobs straight into its rows (read(out=...))
         ▼
    bounded queue (depth D) ── main thread: wait for the slot's reads, run the backend on the good rows,
                                 hand the slot back, pass rows on
         ▼
    writer thread: append rows to the done-manifest (flushed per batch), progress bar

The ring holds D + 2 preallocated ``(B, C, P, P)`` float32 buffer pairs, so memory is flat in the number of tiles.
A bad tile fails alone (its reason is recorded and the batch goes on without it). Interrupted runs resume from the
manifest; the final tables are rendered from it (see :mod:`esccs.runtime.outputs`).
"""

from __future__ import annotations

import queue
import resource
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esccs.errors import ConfigError, DataError
from esccs.runtime import outputs as out_mod
from esccs.runtime.model import Model, default_threads
from esccs.runtime.reader import Bands, TileReader, configure_gdal
from esccs.runtime.sources import Source
from esccs.runtime.workers import make_pool


@dataclass
class InferOptions:
    """How ``esccs infer`` runs.

    Attributes:
        batch_size: tiles per backend call.
        readers: reader workers (default 1, a thread: the fast path reads a 128 px triple in about 1 ms, faster than
            a CPU backend classifies it; more are worker processes, see :mod:`esccs.runtime.workers`; GPU hosts want
            more).
        queue_depth: batches read ahead of the backend.
        resume: continue from the manifest of an interrupted run.
        overwrite: discard earlier results at the same outputs.
        progress: show a progress bar (auto-off when output is not a terminal).
        limit: process only the first ``limit`` jobs (benchmarks, smoke runs).
    """

    batch_size: int = 32
    readers: int = 1
    queue_depth: int = 2
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    limit: int | None = None


@dataclass
class _Slot:
    """One ring entry: a batch of input rows."""

    optical: np.ndarray
    sar: np.ndarray


@dataclass
class RunStats:
    """Counters of one processing loop (the summary's figures)."""

    read_wait_s: float = 0.0
    backend_s: float = 0.0
    batches: int = 0
    tiles_ok: int = 0
    tiles_failed: int = 0


def side_paths(outputs: list[Path]) -> dict[str, Path]:
    """Manifest, summary and errors files beside the first output (``out.csv`` -> ``out.manifest.jsonl`` ...).

    ``shards`` is the folder of committed shard files of an ``--engine ray`` run (merged into the manifest at its end).
    """
    base = outputs[0].with_suffix("")
    return {"base": base, "manifest": base.with_name(base.name + ".manifest.jsonl"),
            "summary": base.with_name(base.name + ".summary.json"),
            "errors": base.with_name(base.name + ".errors.csv"), "shards": base.with_name(base.name + ".shards")}


def _prepare(outputs: list[Path], opts: InferOptions) -> tuple[dict[str, Path], out_mod.Manifest, list[dict]]:
    if not outputs:
        raise ConfigError("no output given (--out results.csv, .geojson or .parquet)")
    for p in outputs:
        out_mod.output_format(p)
    side = side_paths(outputs)
    if side["shards"].exists() and not opts.overwrite:
        raise ConfigError(f"{side['shards']}: shards of an unfinished `--engine ray` run; finish it with --engine ray "
                          "--resume, or pass --overwrite to start again")
    shutil.rmtree(side["shards"], ignore_errors=True)
    manifest = out_mod.Manifest(side["manifest"])
    if side["manifest"].exists() and not opts.resume:
        if not opts.overwrite:
            raise ConfigError(f"{side['manifest']}: results of an earlier run exist; pass --resume to continue it "
                              "or --overwrite to start again")
        side["manifest"].unlink()
    return side, manifest, manifest.load()


def run_inference(source: Source, model: Model, outputs: list[Path], opts: InferOptions | None = None) -> dict:
    """Classify every job of ``source`` with ``model``; write ``outputs`` and the side files; return the summary.

    Raises:
        ConfigError: bad options, or earlier results without ``resume`` / ``overwrite``.
        KeyboardInterrupt: after the manifest is flushed (rerun with ``resume``).
    """
    opts = opts or InferOptions()
    if opts.batch_size < 1 or opts.readers < 1 or opts.queue_depth < 1:
        raise ConfigError("batch size, readers and queue depth must be >= 1")
    outputs = [Path(p) for p in outputs]
    side, manifest, done_rows = _prepare(outputs, opts)
    gdal = configure_gdal()
    done = {r["id"] for r in done_rows}
    jobs = source.jobs[:opts.limit] if opts.limit else source.jobs
    todo = [j for j in jobs if j.id not in done]
    scan_errors = [{"id": Path(p).stem, "path": p, "reason": why, "kind": "unpaired or unrecognised file",
                    "status": "error"} for p, why in source.skipped if Path(p).stem not in done]
    manifest.append(scan_errors)
    reader = make_reader(model, source.kind)
    stats = RunStats(tiles_failed=len(scan_errors))
    t0 = time.perf_counter()
    try:
        run_jobs(todo, reader, model, manifest, opts, stats)
    finally:
        manifest.close()
    wall = time.perf_counter() - t0
    final = render_outputs(source, model.info.classes, outputs, side)
    summary = run_summary(source, model, opts, stats, wall, len(jobs), len(done), final, side, gdal)
    summary["finalize_seconds"] = round(time.perf_counter() - t0 - wall, 3)  # tables rendered from the manifest
    out_mod.write_summary(side["summary"], summary)
    return summary


def make_reader(model: Model, kind: str) -> TileReader:
    """The run's reader: scene windows keep their files open and were grid-checked up front; tiles are checked each."""
    bands = Bands(model.info.optical_bands, model.info.sar_bands, model.info.patch_size)
    return TileReader(bands, keep_open=kind == "scene", checked_grid=kind == "scene")


def render_outputs(source: Source, classes: tuple[str, ...], outputs: list[Path], side: dict[str, Path]) -> dict:
    """Tables, errors CSV and (scene mode) the class / confidence GeoTIFFs, all rendered from the whole manifest."""
    final = out_mod.finalize(side["manifest"], outputs, side["errors"], source.grid if source.kind == "scene" else None)
    if final["cells"] is not None:
        final["written"] += list(out_mod.write_scene_maps(side["base"], source.grid, final["cells"], classes))
    return final


def run_jobs(todo: list, reader: TileReader, model: Model, manifest: out_mod.Manifest, opts: InferOptions,
             stats: RunStats) -> None:
    """Producer, reader pool, backend loop (this thread) and writer, until ``todo`` is done or an error stops it.

    ``manifest`` is anything with ``append(rows)`` (called from the writer thread, once per batch).
    """
    b, p = opts.batch_size, model.info.patch_size
    c_o, c_s = len(model.info.optical_bands), len(model.info.sar_bands)
    pool = make_pool(reader, opts.readers)  # 1 thread, or worker processes reading into shared-memory rows
    free: queue.Queue = queue.Queue()
    for _ in range(opts.queue_depth + 2):
        free.put(_Slot(pool.buffer((b, c_o, p, p)), pool.buffer((b, c_s, p, p))))
    ready: queue.Queue = queue.Queue(maxsize=opts.queue_depth)
    done_q: queue.Queue = queue.Queue()
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(todo, b, reader, pool, free, ready, stop), daemon=True,
                                name="esccs-produce")
    writer = threading.Thread(target=_write, args=(manifest, done_q, len(todo), opts.progress), daemon=True,
                              name="esccs-write")
    producer.start()
    writer.start()
    try:
        while True:
            t = time.perf_counter()
            item = ready.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            slot, chunk, futures = item
            results = [f.result() for f in futures]
            stats.read_wait_s += time.perf_counter() - t
            done_q.put(_classify(model, slot, chunk, results, stats))
            free.put(slot)
    finally:
        stop.set()
        _drain(ready, free)
        producer.join()
        done_q.put(None)
        writer.join()
        pool.shutdown(wait=True)
        reader.absorb(pool)  # worker processes' counts of fast / rasterio reads
        reader.close()  # scene mode kept one handle per file and thread
    if getattr(writer, "error", None):
        raise writer.error


def _produce(todo, b, reader, pool, free, ready, stop) -> None:
    try:
        for start in range(0, len(todo), b):
            slot = free.get()
            if stop.is_set():
                return
            chunk = todo[start:start + b]
            futures = pool.submit_batch(_read_one, reader, chunk, slot)
            ready.put((slot, chunk, futures))
        ready.put(None)
    except BaseException as err:  # noqa: BLE001 - handed to the main thread
        ready.put(err)


def _drain(ready: queue.Queue, free: queue.Queue) -> None:
    """Unblock a producer waiting on a full queue or an empty ring after the main loop stopped early."""
    while True:
        try:
            item = ready.get_nowait()
        except queue.Empty:
            break
        if isinstance(item, tuple):
            free.put(item[0])
    free.put(None)


def _read_one(reader: TileReader, job, slot: _Slot, i: int) -> dict:
    try:
        return {"status": "ok", **reader.read(job, slot.optical[i], slot.sar[i])}
    except DataError as e:
        return {"id": job.id, "path": e.path, "reason": e.reason, "kind": type(e).__name__, "status": "error"}
    except Exception as e:  # noqa: BLE001 - an unexpected library error still fails only this tile
        return {"id": job.id, "path": job.optical, "reason": f"{type(e).__name__}: {str(e)[:160]}",
                "kind": type(e).__name__, "status": "error"}


def _classify(model: Model, slot: _Slot, chunk: list, results: list[dict], stats: RunStats) -> list[dict]:
    """Run the backend on the rows that read well; return manifest rows for the whole chunk."""
    good = [i for i, r in enumerate(results) if r["status"] == "ok"]
    stats.tiles_failed += len(results) - len(good)
    if not good:
        return results
    n = len(chunk)
    if len(good) == n:
        optical, sar = slot.optical[:n], slot.sar[:n]
    else:
        optical, sar = slot.optical[good], slot.sar[good]
    t = time.perf_counter()
    out = model.predict(optical, sar)
    stats.backend_s += time.perf_counter() - t
    stats.batches += 1
    stats.tiles_ok += len(good)
    probs, weights, classes = out["probs"], out["modality_weights"], model.info.classes
    top = np.argsort(-probs, axis=1)[:, :3]
    for k, i in enumerate(good):
        r = results[i]
        c = int(top[k, 0])
        r.update(class_index=c, class_name=classes[c], confidence=float(probs[k, c]),
                 top3=[[classes[int(j)], float(probs[k, j])] for j in top[k]],
                 w_optical=float(weights[k, 0]), w_sar=float(weights[k, 1]))
    return results


def _write(manifest: out_mod.Manifest, done_q: queue.Queue, total: int, progress: bool) -> None:
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="tile", desc="infer", dynamic_ncols=True, disable=None, file=sys.stderr)
    try:
        while (rows := done_q.get()) is not None:
            manifest.append(rows)
            if bar is not None:
                bar.update(len(rows))
                failed = sum(r["status"] == "error" for r in rows)
                if failed:
                    bar.set_postfix_str(f"last batch: {failed} failed", refresh=False)
    except BaseException as err:  # noqa: BLE001 - re-raised by the main thread
        threading.current_thread().error = err
        while done_q.get() is not None:
            pass
    finally:
        if bar is not None:
            bar.close()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss`` is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def run_summary(source: Source, model: Model, opts: InferOptions, stats: RunStats, wall: float, n_jobs: int,
                n_before: int, final: dict, side: dict, gdal: dict) -> dict:
    """The run summary (``<out>.summary.json``): counts, failure reasons, settings, speed, memory, outputs."""
    processed = stats.tiles_ok + stats.tiles_failed
    written = final["written"]
    return {
        "source": str(source.root), "kind": source.kind, "layout": source.layout, "jobs": n_jobs,
        "resumed_from": n_before, "processed_this_run": processed, "classified": final["classified"],
        "failed": final["failed"], "failure_reasons": final["reasons"], "failed_tiles": final["failed_tiles"],
        "model": str(model.info.path), "backend": model.backend.name, "device": model.backend.device,
        "backend_settings": model.backend.settings, "batch_size": opts.batch_size, "readers": opts.readers,
        "queue_depth": opts.queue_depth, "cores": default_threads(), "gdal": gdal,
        "seconds": round(wall, 3), "tiles_per_second": round(processed / wall, 2) if wall > 0 else None,
        "backend_seconds": round(stats.backend_s, 3), "waiting_for_reads_seconds": round(stats.read_wait_s, 3),
        "backend_tiles_per_second": round(stats.tiles_ok / stats.backend_s, 2) if stats.backend_s else None,
        "peak_rss_mb": peak_rss_mb(), "outputs": [str(p) for p in written],
        "errors_file": str(side["errors"]), "manifest": str(side["manifest"]),
        "grid": {k: v for k, v in source.grid.items() if k not in ("row_starts", "col_starts", "crs")} or None,
    }
