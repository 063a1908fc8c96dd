"""Scale-out inference on Ray Data (``esccs infer --engine ray``): the same jobs, rows and tables as the local engine.

::

    driver: job list (the local engine's sources) -> deterministic shards of S jobs -> ray.data.from_items
        │   (one block per shard: the unit Ray retries)
        ▼
    actor pool (ActorPoolStrategy, num_cpus / num_gpus per actor): each actor loads the model once through
        esccs.runtime.load_model and runs the local engine's loop (run_jobs: reader pool with all its checks,
        ring of batch buffers, backend) over one shard, then commits the shard's rows: temp file + fsync + rename
        ▼
    driver: progress bar from the stream of shard figures; at the end merges the committed shards into the
        manifest (one row per tile id, an ok row beats an error row) and renders the tables with the local code

**Exactly once comes from this contract, not from Ray's beta checkpointing.** A shard file exists only complete.
A killed actor is restarted by Ray and its shard retried (task retries, actor restarts); the retry rewrites the same
shard file with the same rows. A killed driver leaves the committed shards; ``--resume`` reads their tile ids (and
the manifest's), drops those jobs and shards the rest under a new run number, so no name is ever reused for other
tiles. The merge deduplicates by tile id. Processing is at-least-once; the output has one row per tile.

Ray is an optional extra (``pip install 'esccs[ray]'``): nothing here imports it at module level, and
``import esccs.runtime`` never imports this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esccs.errors import ConfigError, DependencyMissingError, EsccsError
from esccs.io.atomic import atomic_path, write_json
from esccs.runtime import outputs as out_mod
from esccs.runtime.model import Model, default_threads
from esccs.runtime.pipeline import (
    InferOptions,
    RunStats,
    make_reader,
    peak_rss_mb,
    render_outputs,
    run_jobs,
    run_summary,
    side_paths,
)
from esccs.runtime.reader import configure_gdal
from esccs.runtime.sources import Job, Source

#: committed shard files: ``r<run>-<index>.jsonl`` (scan errors: ``r<run>-scan.jsonl``); run markers ``run-<run>.json``
SHARD_RE = re.compile(r"^r(\d{3,})-(\d{6,}|scan)\.jsonl$")
RUN_RE = re.compile(r"^run-(\d{3,})\.json$")
#: environment variables forwarded to the actors (GDAL configuration options; they do not reach cluster workers)
FORWARDED_ENV = ("GDAL_", "CPL_", "VSI_", "AWS_REGION", "AWS_S3_ENDPOINT", "AWS_NO_SIGN_REQUEST")
#: shard size when none is given: this many batches per shard (a lost shard costs at most this much work)
SHARD_BATCHES = 8


class RayRunError(EsccsError):
    """The Ray run could not start or stopped; the message is one line (committed shards are kept)."""


@dataclass
class RayOptions:
    """How ``--engine ray`` runs.

    Attributes:
        address: Ray cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``); None starts a local Ray with the
            machine's cores (an already connected Ray, e.g. in a notebook, is reused as it is).
        actors: model actors (default: as many as the cluster's CPUs, or GPUs with ``gpus_per_actor``, allow).
        cpus_per_actor: logical CPUs reserved per actor (also its backend threads unless ``threads`` is given).
        gpus_per_actor: GPUs per actor (1 = one GPU each; fractions share a GPU); 0 runs on CPU.
        threads: backend CPU threads per actor (default: ``cpus_per_actor``, rounded up).
        shard_size: jobs per shard (default: 8 batches).
        device: ``auto``, ``cpu`` or ``cuda`` (as ``esccs infer --device``).
        backend: ``auto`` or a backend name (as ``esccs infer --backend``).
        connect_timeout_s: seconds to wait for the cluster's address to answer.
        max_tasks_in_flight_per_actor: shards sent to an actor at once (3: two run, overlapping one's reads with the
            other's backend calls, and the next one's input is already there).
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads: int | None = None
    shard_size: int | None = None
    device: str = "auto"
    backend: str = "auto"
    connect_timeout_s: float = 5.0
    max_tasks_in_flight_per_actor: int = 3


# ----------------------------------------------------------------------------------------------------- shard files
def shard_files(folder: Path) -> list[Path]:
    """Committed shard files of ``folder`` in run, then shard order (temporary ``.``-files are not committed)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if SHARD_RE.match(p.name)), key=lambda p: p.name)


def next_run(folder: Path) -> int:
    """The number of a new run in ``folder``: one above every run marker and shard seen so far."""
    seen = [0]
    if folder.is_dir():
        for p in folder.iterdir():
            m = SHARD_RE.match(p.name) or RUN_RE.match(p.name)
            if m:
                seen.append(int(m.group(1)))
    return max(seen) + 1


def plan_shards(jobs: list[Job], size: int, run: int) -> list[tuple[str, list[Job]]]:
    """Deterministic shards: consecutive slices of ``size`` jobs, named ``r<run>-<index>.jsonl``."""
    if size < 1:
        raise ConfigError(f"shard size must be >= 1, got {size}")
    return [(f"r{run:03d}-{k:06d}.jsonl", jobs[i:i + size]) for k, i in enumerate(range(0, len(jobs), size))]


def write_shard(path: Path, rows: list[dict]) -> Path:
    """Commit a shard: every row as one JSON line in a temporary file, fsync, rename (exists only complete)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    return path


def _lines(path: Path):
    """``(line index, raw line, row)`` of the complete JSON lines of a manifest or shard (a torn tail ends it)."""
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if not line.endswith(b"\n"):
                return
            try:
                yield i, line, json.loads(line)
            except ValueError:
                return


def committed_ids(manifest: Path, folder: Path) -> set[str]:
    """Tile ids with a committed row: in the manifest of earlier runs and in the committed shard files."""
    ids: set[str] = set()
    for path in ([manifest] if manifest.exists() else []) + shard_files(folder):
        ids.update(row["id"] for _, _, row in _lines(path))
    return ids


def merge_shards(manifest: Path, folder: Path) -> dict[str, int]:
    """Fold the committed shards into ``manifest``: one row per tile id, an ok row beating an error row.

    Two passes (memory O(ids)): the first picks the line that holds each id's row, the second copies those lines, the
    manifest's first and then the shards' in order, into a temporary file renamed onto the manifest. Only then are
    the shard files deleted, so a kill at any point leaves the rows recoverable (the next merge dedups again).

    Returns:
        ``{"rows", "duplicates", "shards"}``.
    """
    sources = ([manifest] if manifest.exists() else []) + shard_files(folder)
    best: dict[str, tuple[int, int, bool]] = {}
    total = 0
    for s, path in enumerate(sources):
        for i, _, row in _lines(path):
            total += 1
            ok = row.get("status") == "ok"
            have = best.get(row["id"])
            if have is None or (ok and not have[2]):
                best[row["id"]] = (s, i, ok)
    keep = {(s, i) for s, i, _ in best.values()}
    with atomic_path(manifest) as tmp, open(tmp, "wb") as f:
        for s, path in enumerate(sources):
            for i, line, _ in _lines(path):
                if (s, i) in keep:
                    f.write(line)
        f.flush()
        os.fsync(f.fileno())
    clear_shards(folder)
    return {"rows": len(best), "duplicates": total - len(best), "shards": len(sources) - (manifest in sources)}


def clear_shards(folder: Path) -> None:
    """Delete the shard folder: committed shards, run markers and temporary files a killed writer left."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_file() and (SHARD_RE.match(p.name) or RUN_RE.match(p.name) or p.name.startswith(".")):
            p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else lives there: leave it
        pass


def stale_temps(folder: Path) -> list[Path]:
    """Temporary shard files a killed writer left behind (never committed, safe to delete)."""
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.suffix == ".jsonl"] if folder.is_dir() else []


def _job_tuple(job: Job) -> list:
    return list(asdict(job).values())


def _job_from(values: list) -> Job:
    jid, optical, sar, mask, window, cell = values
    return Job(jid, optical, sar, mask, tuple(window) if window else None, tuple(cell) if cell else None)


# ------------------------------------------------------------------------------------------------------- the actor
class _Collected:
    """Where the local engine's loop puts a shard's rows inside an actor (memory, until the shard is committed)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def append(self, rows: list[dict]) -> None:
        self.rows.extend(rows)


class _OneAtATime:
    """The model as ``run_jobs`` sees it, its backend calls taken one at a time across the actor's shard calls.

    Two shard calls run in an actor at once (``max_concurrent_calls_per_actor=2``), so the next shard's first reads
    overlap the current one's last backend calls instead of waiting for them; the backend itself (one onnxruntime
    session, TensorRT context or torch module) is never called concurrently. Time spent waiting for the other call's
    backend is counted per thread, so a shard's backend seconds are its own.
    """

    def __init__(self, model: Model) -> None:
        self.model, self.info = model, model.info
        self._lock = threading.Lock()
        self._local = threading.local()

    def predict(self, optical: np.ndarray, sar: np.ndarray) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        with self._lock:
            self._local.waited = getattr(self._local, "waited", 0.0) + time.perf_counter() - t
            return self.model.predict(optical, sar)

    def waited(self) -> float:
        """Seconds this thread has waited for the other call's backend, then reset."""
        w, self._local.waited = getattr(self._local, "waited", 0.0), 0.0
        return w


class ShardWorker:
    """A Ray Data actor: loads the model once, then classifies whole shards with the local engine's loop.

    Args:
        model_path, backend, device, threads: as :func:`esccs.runtime.load_model` takes them.
        kind: ``tiles`` or ``scene`` (scene windows keep their files open and were grid-checked on the driver).
        shard_dir: where committed shards go (a shared filesystem on a multi-node cluster).
        batch_size, readers, queue_depth: the local engine's loop settings.
        env: GDAL configuration from the driver.
        cwd: the driver's working directory (relative tile paths resolve against it where it exists).
    """

    def __init__(self, model_path: str, backend: str, device: str, threads: int, kind: str, shard_dir: str,
                 batch_size: int, readers: int, queue_depth: int, env: dict[str, str], cwd: str) -> None:
        import ray

        from esccs.runtime import load_model

        if os.path.isdir(cwd):  # this process is the actor's own: its working directory is ours to set
            os.chdir(cwd)
        os.environ.update(env)
        configure_gdal()
        self.model = load_model(model_path, backend=backend, device=device, threads=threads)
        self.serial = _OneAtATime(self.model)
        self.kind = kind
        self.shard_dir = Path(shard_dir)
        self.opts = InferOptions(batch_size=batch_size, readers=readers, queue_depth=queue_depth, progress=False)
        ctx = ray.get_runtime_context()
        self.ident = {"actor": ctx.get_actor_id() or f"pid-{os.getpid()}", "node": ctx.get_node_id(),
                      "host": socket.gethostname(), "pid": os.getpid()}
        self.settings = json.dumps({"backend": self.model.backend.name, "device": self.model.backend.device,
                                    **self.model.backend.settings})
        self.ready = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Classify and commit every shard of ``batch`` (one, with ``batch_size=1``); return their figures."""
        figures = []
        for name, payload in zip(batch["shard"], batch["jobs"]):
            jobs = [_job_from(v) for v in json.loads(str(payload))]
            sink, stats = _Collected(), RunStats()
            t0 = time.time()
            self.serial.waited()
            # a reader per call: scene mode's reader closes the handles it kept when its loop ends
            run_jobs(jobs, make_reader(self.model, self.kind), self.serial, sink, self.opts, stats)
            write_shard(self.shard_dir / str(name), sink.rows)
            figures.append({"shard": str(name), "tiles": len(sink.rows), "ok": stats.tiles_ok,
                            "failed": stats.tiles_failed, "read_wait_s": stats.read_wait_s,
                            "backend_s": max(0.0, stats.backend_s - self.serial.waited()),
                            "t_start": t0, "t_end": time.time(), "ready": self.ready,
                            "rss_mb": peak_rss_mb(), "settings": self.settings, **self.ident})
        return {k: np.asarray([f[k] for f in figures]) for k in figures[0]} if figures else {}


# ------------------------------------------------------------------------------------------------------ the driver
def import_ray():
    """``ray`` and ``ray.data``, or a one-line :class:`DependencyMissingError` with the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DependencyMissingError("ray", "ray", "--engine ray") from None
    return ray


def _probe(address: str, timeout: float) -> None:
    """Fail in one line when ``address`` does not accept connections (ray.init would otherwise retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayRunError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise RayRunError(f"cannot reach the Ray cluster at {address} ({why}): start it there with `ray start "
                          "--head`, or leave --address out to run on a local Ray") from None


def _resolve(ray, address: str) -> str:
    """``auto`` -> the address of the running cluster this machine knows (RAY_ADDRESS or the last `ray start`)."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - a private helper; without it ray.init reports the same
        return address
    if not found:
        raise RayRunError("--address auto: no running Ray cluster found on this machine (start one with `ray start "
                          "--head`, or leave --address out to run on a local Ray)")
    return found


def connect(address: str | None, num_cpus: int, timeout: float) -> dict[str, Any]:
    """Connect to (or start) Ray; return ``{"started_local", "reused", "address", "startup_seconds"}``."""
    ray = import_ray()
    if ray.is_initialized():
        return {"started_local": False, "reused": True, "address": ray.get_runtime_context().gcs_address,
                "startup_seconds": 0.0}
    t = time.perf_counter()
    kw = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if address in (None, "", "local"):
            # Ray runs its workers 15 nice levels below the raylet; on a local Ray the actors *are* this esccs run, so
            # they keep its priority (as Ray's own job supervisor does), else a busy machine starves them
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address="local", num_cpus=num_cpus, **kw)
        else:
            target = _resolve(ray, address)
            _probe(target, timeout)
            ray.init(address=target, **kw)
    except RayRunError:
        raise
    except Exception as err:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError from ray.init
        raise RayRunError(f"could not start or join Ray ({_first_line(err)})") from None
    return {"started_local": address in (None, "", "local"), "reused": False,
            "address": ray.get_runtime_context().gcs_address, "startup_seconds": round(time.perf_counter() - t, 3)}


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return _first_line(cause)
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    ours = [ln for ln in lines if re.match(r"^esccs\.[\w.]+(Error|Exception): ", ln)]
    if ours:  # the reason an esccs error gave inside an actor, without its class path
        return ours[-1].split(": ", 1)[1][:300]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _cluster(ray) -> dict[str, Any]:
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "cpus": float(res.get("CPU", 0)), "gpus": float(res.get("GPU", 0))}


def _pool_size(ro: RayOptions, cluster: dict[str, Any], n_shards: int) -> int:
    """Actors to start: what was asked, or what the cluster holds; refused when it cannot hold them."""
    fits = math.floor(cluster["cpus"] / ro.cpus_per_actor + 1e-9)
    if ro.gpus_per_actor:
        fits = min(fits, math.floor(cluster["gpus"] / ro.gpus_per_actor + 1e-9))
    want = ro.actors or fits
    if fits < 1 or want > fits:
        raise RayRunError(f"{want or 1} actor(s) x ({ro.cpus_per_actor:g} CPU, {ro.gpus_per_actor:g} GPU) do not fit "
                          f"the cluster ({cluster['cpus']:g} CPUs, {cluster['gpus']:g} GPUs on {cluster['nodes']} "
                          "nodes): lower --actors, --cpus-per-actor or --gpus-per-actor")
    return max(1, min(want, n_shards))


def _prepare(outputs: list[Path], opts: InferOptions) -> dict[str, Path]:
    if not outputs:
        raise ConfigError("no output given (--out results.csv, .geojson or .parquet)")
    for p in outputs:
        out_mod.output_format(p)
    side = side_paths(outputs)
    earlier = side["manifest"].exists() or bool(shard_files(side["shards"]))
    if earlier and not opts.resume:
        if not opts.overwrite:
            raise ConfigError(f"{side['manifest'] if side['manifest'].exists() else side['shards']}: results of an "
                              "earlier run exist; pass --resume to continue it or --overwrite to start again")
    if opts.overwrite and not opts.resume:
        side["manifest"].unlink(missing_ok=True)
        clear_shards(side["shards"])
    for p in stale_temps(side["shards"]):
        p.unlink(missing_ok=True)
    return side


def run_inference_ray(source: Source, model: Model, outputs: list[Path], opts: InferOptions | None = None,
                      ray_opts: RayOptions | None = None) -> dict:
    """Classify every job of ``source`` on Ray; write the same outputs and side files as the local engine.

    ``model`` is the driver's copy (its metadata and path); every actor loads its own from ``model.info.path``,
    which must be at that path on every node (a shared filesystem), like the tiles and the outputs.

    Returns:
        The local engine's summary plus ``"engine": "ray"``, ``"ray"`` (settings, start-up, steady tiles/s) and
        ``"actors"`` (per-actor tiles, tiles/s, time waiting for reads, restarts).

    Raises:
        ConfigError: bad options, or earlier results without ``resume`` / ``overwrite``.
        DependencyMissingError: Ray is not installed (with the install hint).
        RayRunError: the cluster cannot be reached or the run stopped (committed shards are kept).
        KeyboardInterrupt: committed shards are kept (rerun with ``resume``).
    """
    opts = opts or InferOptions()
    ro = ray_opts or RayOptions()
    if opts.batch_size < 1 or opts.readers < 1 or opts.queue_depth < 1:
        raise ConfigError("batch size, readers and queue depth must be >= 1")
    if ro.cpus_per_actor <= 0 or ro.gpus_per_actor < 0 or (ro.actors is not None and ro.actors < 1):
        raise ConfigError("--cpus-per-actor must be > 0, --gpus-per-actor >= 0 and --actors >= 1")
    if ro.gpus_per_actor and ro.device == "cpu":
        raise ConfigError("--gpus-per-actor with --device cpu: drop one of them")
    outputs = [Path(p) for p in outputs]
    side = _prepare(outputs, opts)
    gdal = configure_gdal()
    ray = import_ray()
    link = connect(ro.address, default_threads(), ro.connect_timeout_s)
    try:
        folder = side["shards"]
        folder.mkdir(parents=True, exist_ok=True)
        run = next_run(folder)
        done = committed_ids(side["manifest"], folder)
        jobs = source.jobs[:opts.limit] if opts.limit else source.jobs
        todo = [j for j in jobs if j.id not in done]
        scan_errors = [{"id": Path(p).stem, "path": p, "reason": why, "kind": "unpaired or unrecognised file",
                        "status": "error"} for p, why in source.skipped if Path(p).stem not in done]
        shard_size = ro.shard_size or opts.batch_size * SHARD_BATCHES
        shards = plan_shards(todo, shard_size, run)
        cluster = _cluster(ray)
        n_actors = _pool_size(ro, cluster, max(len(shards), 1))
        threads = ro.threads or max(1, math.ceil(ro.cpus_per_actor))
        settings = {"ray_version": ray.__version__, "address": link["address"], "started_local": link["started_local"],
                    "reused_connection": link["reused"], "startup_seconds": link["startup_seconds"], **cluster,
                    "actors": n_actors, "cpus_per_actor": ro.cpus_per_actor, "gpus_per_actor": ro.gpus_per_actor,
                    "threads_per_actor": threads, "shard_size": shard_size, "shards_this_run": len(shards),
                    "run": run, "max_tasks_in_flight_per_actor": ro.max_tasks_in_flight_per_actor,
                    "shard_dir": str(folder.resolve())}
        write_json(folder / f"run-{run:03d}.json", {"jobs": len(jobs), "todo": len(todo), "started": time.time(),
                                                     **settings})
        if scan_errors:
            write_shard(folder / f"r{run:03d}-scan.jsonl", scan_errors)
        t0 = time.perf_counter()
        figures = _execute(ray, shards, model, source, folder, opts, ro, n_actors, threads, t0) if shards else {}
        wall = time.perf_counter() - t0
    finally:
        if link["started_local"]:
            ray.shutdown()
    t1 = time.perf_counter()
    merged = merge_shards(side["manifest"], side["shards"])
    final = render_outputs(source, model.info.classes, outputs, side)
    stats = RunStats(read_wait_s=sum(f["read_wait_s"] for f in figures.values()),
                     backend_s=sum(f["backend_s"] for f in figures.values()), tiles_failed=len(scan_errors)
                     + sum(f["failed"] for f in figures.values()), tiles_ok=sum(f["ok"] for f in figures.values()))
    summary = run_summary(source, model, opts, stats, wall, len(jobs), len(done), final, side, gdal)
    actors = _per_actor(figures)
    if actors:  # what the actors ran, not the driver's copy of the model
        backend_settings = json.loads(next(iter(figures.values()))["settings"])
        summary["backend"] = backend_settings.pop("backend")
        summary["device"] = backend_settings.pop("device")
        summary["backend_settings"] = backend_settings
        # the local engine's backend figure is per process; across actors it is the sum of their own rates
        summary["backend_tiles_per_second"] = round(sum(a["tiles"] / a["backend_seconds"] for a in actors
                                                        if a["backend_seconds"]), 2) or None
    summary.update(engine="ray", manifest=str(side["manifest"]), summary_file=str(side["summary"]),
                   ray={**settings, **_timing(figures, t0, wall), "merged": merged}, actors=actors)
    summary["finalize_seconds"] = round(time.perf_counter() - t1, 3)
    out_mod.write_summary(side["summary"], summary)
    return summary


def _execute(ray, shards, model: Model, source: Source, folder: Path, opts: InferOptions, ro: RayOptions,
             n_actors: int, threads: int, t0: float) -> dict[str, dict]:
    """Run the shards through the actor pool; return the figures of every shard, by name, as they streamed in."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts tiles across the cluster
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    items = [{"shard": name, "jobs": json.dumps([_job_tuple(j) for j in chunk])} for name, chunk in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        ShardWorker, batch_size=1, batch_format="numpy", num_cpus=ro.cpus_per_actor,
        num_gpus=ro.gpus_per_actor or None,
        compute=ray.data.ActorPoolStrategy(size=n_actors,
                                           max_tasks_in_flight_per_actor=ro.max_tasks_in_flight_per_actor,
                                           max_concurrent_calls_per_actor=2, enable_true_multi_threading=True),
        fn_constructor_kwargs={"model_path": str(Path(model.info.path).resolve()), "backend": ro.backend,
                               "device": ro.device, "threads": threads, "kind": source.kind,
                               "shard_dir": str(folder.resolve()), "batch_size": opts.batch_size,
                               "readers": opts.readers, "queue_depth": opts.queue_depth, "env": env,
                               "cwd": os.getcwd()})
    total = sum(len(chunk) for _, chunk in shards)
    bar = None
    if opts.progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="tile", desc=f"infer (ray, {n_actors} actors)", dynamic_ncols=True,
                   disable=None, file=sys.stderr)
    figures: dict[str, dict] = {}
    failed = 0
    try:
        for row in ds.iter_rows():
            f = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            f["first_seen_s"] = time.perf_counter() - t0
            new = f["shard"] not in figures
            figures[f["shard"]] = f
            if bar is not None and new:
                bar.update(f["tiles"])
                failed += f["failed"]
                if failed:
                    bar.set_postfix_str(f"{failed} failed", refresh=False)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - Ray wraps what failed inside an actor; say it in one line
        raise RayRunError(f"the Ray run stopped: {_first_line(err)}; {len(figures)} of {len(shards)} shards are "
                          f"committed in {folder}: rerun with --resume") from None
    finally:
        if bar is not None:
            bar.close()
    return figures


def _timing(figures: dict[str, dict], t0: float, wall: float) -> dict[str, Any]:
    """First result, and the steady rate once every actor had its model loaded (start-up excluded)."""
    if not figures:
        return {"first_result_seconds": None, "steady_tiles_per_second": None, "steady_seconds": None}
    fs = list(figures.values())
    start = max(f["ready"] for f in fs)  # the last actor to finish loading its model
    end = max(f["t_end"] for f in fs)
    tiles = 0.0
    for f in fs:  # tiles done inside [start, end], a shard that straddles start counted pro rata
        span = max(f["t_end"] - f["t_start"], 1e-9)
        tiles += f["tiles"] * max(0.0, f["t_end"] - max(f["t_start"], start)) / span
    steady = end - start
    return {"first_result_seconds": round(min(f["first_seen_s"] for f in fs), 3),
            "steady_seconds": round(steady, 3),
            "steady_tiles_per_second": round(tiles / steady, 2) if steady > 0.05 else None,
            "model_load_to_end_of_run_seconds": round(end - min(f["ready"] for f in fs), 3)}


def _per_actor(figures: dict[str, dict]) -> list[dict[str, Any]]:
    """Tiles, busy seconds (shard calls overlap: their union), tiles/s while busy, time waiting for reads, restarts."""
    by: dict[str, dict] = defaultdict(lambda: {"shards": 0, "tiles": 0, "failed": 0, "busy_seconds": 0.0,
                                               "waiting_for_reads_seconds": 0.0, "backend_seconds": 0.0,
                                               "pids": set(), "peak_rss_mb": 0.0, "spans": []})
    for f in figures.values():
        a = by[f["actor"]]
        a["node"], a["host"] = f["node"], f["host"]
        a["shards"] += 1
        a["tiles"] += f["tiles"]
        a["failed"] += f["failed"]
        a["spans"].append((f["t_start"], f["t_end"]))
        a["waiting_for_reads_seconds"] += f["read_wait_s"]
        a["backend_seconds"] += f["backend_s"]
        a["pids"].add(f["pid"])
        a["peak_rss_mb"] = max(a["peak_rss_mb"], f["rss_mb"])
    out = []
    for actor, a in sorted(by.items(), key=lambda kv: kv[0]):
        busy = _union_seconds(a["spans"])
        out.append({"actor": actor, "node": a["node"], "host": a["host"], "shards": a["shards"], "tiles": a["tiles"],
                    "failed": a["failed"], "busy_seconds": round(busy, 3),
                    "tiles_per_second": round(a["tiles"] / busy, 2) if busy > 0 else None,
                    "waiting_for_reads_seconds": round(a["waiting_for_reads_seconds"], 3),
                    "backend_seconds": round(a["backend_seconds"], 3), "pids": sorted(a["pids"]),
                    "restarts": len(a["pids"]) - 1, "peak_rss_mb": a["peak_rss_mb"]})
    return out


def _union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
