"""``esccs benchmark``: every backend x precision x batch size in one run, side by side, with accuracy and parity.

Per backend and precision: load (timed) -> first batch (timed, apart from steady state) -> accuracy on the labelled
tiles (OA, kappa; parity against the torch fp32 reference's probabilities) -> per batch size a backend-only
measurement (one batch of real raw tiles preloaded in host memory, pinned on CUDA) -> for the backends ``esccs infer``
runs (onnxruntime, TensorRT), per end-to-end batch size the runtime's own pipeline
(:func:`esccs.runtime.run_inference`) with the same loaded model, side by side in the same row. A backend that fails
leaves a row with its one-line error; the run goes on.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from esccs.benchmarks import sysinfo
from esccs.benchmarks.engines import PRECISIONS, BackendError, Engine, default_threads, load_engine, one_line
from esccs.benchmarks.timing import LATENCY_STAGES, STAGES, UNSTABLE_COV, CudaClock, HostClock, measure, summarize

DEFAULT_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
#: added on CUDA: torch.compile with CUDA graphs, the fastest torch path (TensorRT is often not installable)
CUDA_EXTRA_BACKENDS = ("torch-cudagraphs",)
DEFAULT_BATCH_SIZES = {"cpu": (1, 8, 32, 128), "cuda": (1, 8, 32, 64, 128)}
DEFAULT_PRECISIONS = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16", "bf16", "int8")}
REFERENCE = ("torch", "fp32")


@dataclass
class BenchConfig:
    """What to benchmark (the CLI's options).

    Attributes:
        model: the fp32 ONNX model ``M`` (its ``.int8.onnx`` / ``.engine`` siblings are found beside it).
        data: a data set folder with labelled tiles (the ``test`` split is used when it has one).
        checkpoint: the torch checkpoint ``M`` was exported from (torch rows and the parity reference); ``None`` =
            look for it beside ``M`` (:func:`find_checkpoint`).
        int8_model: the INT8 ONNX (default: ``M``'s ``.int8.onnx`` sibling).
        backends: backends to run (``None`` = :data:`DEFAULT_BACKENDS`, plus torch-cudagraphs on CUDA).
        batch_sizes: batch sizes (``None`` = :data:`DEFAULT_BATCH_SIZES` of the device).
        precisions: requested precisions (``None`` = :data:`DEFAULT_PRECISIONS` of the device).
        device: ``cpu`` or ``cuda``.
        min_time: minimum seconds of steady-state timing per row. warmup: warm-up seconds (>= 1 batch).
        min_iters: minimum timed batches per row. threads: intra-op threads (default: cores available).
        eval_samples: cap on the labelled tiles used for accuracy (``None`` = the whole test split).
        e2e_batch_sizes: batch sizes with an end-to-end measurement (``None`` = all of them; ``()`` = none).
        readers: reader threads of the end-to-end pipeline (``esccs infer --workers``).
        command: the command line, for the report.
    """

    model: Path
    data: Path
    checkpoint: Path | None = None
    int8_model: Path | None = None
    backends: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    precisions: tuple[str, ...] | None = None
    device: str = "cpu"
    min_time: float = 1.0
    warmup: float = 0.2
    min_iters: int = 10
    threads: int | None = None
    eval_samples: int | None = None
    e2e_batch_sizes: tuple[int, ...] | None = None
    readers: int = 1
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> BenchConfig:
        """A copy with the device-dependent defaults filled in."""
        dev = "cuda" if self.device == "cuda" else "cpu"
        backends = self.backends or DEFAULT_BACKENDS + (CUDA_EXTRA_BACKENDS if dev == "cuda" else ())
        batch_sizes = self.batch_sizes or DEFAULT_BATCH_SIZES[dev]
        e2e = batch_sizes if self.e2e_batch_sizes is None else tuple(b for b in self.e2e_batch_sizes
                                                                      if b in batch_sizes)
        return BenchConfig(**{**asdict(self), "model": Path(self.model), "data": Path(self.data),
                              "backends": tuple(backends), "batch_sizes": tuple(batch_sizes),
                              "precisions": tuple(self.precisions or DEFAULT_PRECISIONS[dev]),
                              "e2e_batch_sizes": tuple(e2e)})


def read_meta(model: Path) -> dict[str, Any]:
    """``M``'s esccs metadata, JSON values decoded (``{}`` when it has none or cannot be read)."""
    if not model.is_file():
        return {}
    try:
        from esccs.export.onnx import read_metadata

        return read_metadata(model)
    except Exception:  # noqa: BLE001 - unreadable metadata: the checkpoint may still describe the model
        return {}


def model_config(meta: dict[str, Any], checkpoint: Path | None) -> Any:
    """Classes, bands, normalisation and patch size from ``M``'s metadata, else from the checkpoint's config.

    Raises:
        BackendError: neither ``M``'s metadata nor a checkpoint describes the model.
    """
    if meta.get("classes") and meta.get("optical_bands"):
        return SimpleNamespace(classes=list(meta["classes"]), optical_bands=list(meta["optical_bands"]),
                               sar_bands=list(meta.get("sar_bands") or ["VV", "VH"]),
                               normalization=meta.get("normalization"), patch_size=int(meta["patch_size"]))
    if checkpoint is None:
        raise BackendError("M has no esccs metadata and no checkpoint describes the model (pass --checkpoint)")
    from esccs.models import load_checkpoint

    return load_checkpoint(checkpoint)[1]


def find_checkpoint(model: Path, meta: dict[str, Any]) -> tuple[Path | None, str]:
    """The checkpoint ``M`` was exported from, found without ``--checkpoint``; ``(None, why)`` when not found.

    Looked for, in order: the checkpoint named in ``M``'s export sidecar (``<M stem>.parity.json``, written by
    ``esccs export``), then ``<M stem>.safetensors`` and any other ``.safetensors`` beside ``M``. A candidate must
    match the ``checkpoint_sha256`` in ``M``'s metadata when the metadata has one.
    """
    from esccs.models import checkpoint_sha256

    want = meta.get("checkpoint_sha256")
    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.stem
    cands: list[tuple[Path, str]] = []
    sidecar = model.with_name(stem + ".parity.json")
    if sidecar.is_file():
        try:
            named = json.loads(sidecar.read_text()).get("checkpoint")
        except (OSError, ValueError):
            named = None
        if named:
            p = Path(named)
            cands += [(c, f"named in {sidecar.name}") for c in (p, model.parent / p, model.parent / p.name)]
    cands.append((model.with_name(stem + ".safetensors"), "beside M"))
    cands += [(p, "beside M") for p in sorted(model.parent.glob("*.safetensors"))]
    seen: set[Path] = set()
    for path, how in cands:
        if not path.is_file() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if want and checkpoint_sha256(path) != want:
            continue
        return path, f"{how}{' (sha256 matches M)' if want else ''}"
    looked = f"{sidecar.name}, {stem}.safetensors, *.safetensors in {model.parent}"
    return None, (f"no --checkpoint given and no checkpoint{' matching M' if want else ''} found (looked at {looked}); "
                  "pass --checkpoint for the torch rows")


def plan(cfg: BenchConfig) -> list[tuple[str, str | None]]:
    """``(backend, precision)`` pairs in run order; ``precision=None`` when no requested precision applies."""
    out: list[tuple[str, str | None]] = []
    for b in cfg.backends:
        precs = [p for p in cfg.precisions if p in PRECISIONS.get(b, ("fp32",))]
        out += [(b, p) for p in precs] or [(b, None)]
    # the reference first, so its figures exist when the others are compared
    return sorted(out, key=lambda bp: bp != REFERENCE)


def postprocess(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the runtime computes per tile after the backend: class, confidence, top-3."""
    top3 = np.argsort(-probs, axis=1)[:, :3]
    return top3[:, 0], probs.max(axis=1), top3


def _clock(engine: Engine) -> Callable[[], HostClock]:
    return partial(CudaClock, engine.stream) if engine.stream is not None else HostClock


def predict_all(engine: Engine, feeds: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """``probs`` of every tile in ``feeds``, ``batch`` tiles at a time (the accuracy pass)."""
    n = len(next(iter(feeds.values())))
    return np.concatenate([engine.predict_probs({k: v[i:i + batch] for k, v in feeds.items()})
                           for i in range(0, n, batch)])


def stats_row(timed, batch: int) -> dict[str, Any]:
    """Latency (trtexec: h2d + compute + d2h), per tile, throughput, stage medians and means, enqueue, stability."""
    lat = summarize(timed.total(LATENCY_STAGES))
    per_tile = {k: lat[k] / batch for k in ("mean", "p50", "p90", "p99")}
    seen = {k for s in timed.steps for k in s}
    stages = {s: (summarize(timed.stage(s))["p50"] if s in seen else None) for s in STAGES}
    stage_means = {s: (float(np.mean(timed.stage(s))) if s in seen else None) for s in STAGES}
    return {"iterations": lat["n"], "warmup_iterations": timed.warmup_steps, "warmup_s": round(timed.warmup_s, 3),
            "wall_s": round(timed.wall_s, 3), "latency_ms": lat, "latency_per_tile_ms": per_tile,
            "throughput": batch * lat["n"] / timed.wall_s, "stages_p50_ms": stages, "stages_mean_ms": stage_means,
            "step_ms": summarize(timed.total()),
            "enqueue_ms": summarize(timed.stage("enqueue")) if "enqueue" in seen else None,
            "unstable": lat["cov"] > UNSTABLE_COV, "samples_ms": [round(v, 4) for v in timed.total(LATENCY_STAGES)],
            "latency_definition": "+".join(LATENCY_STAGES)}


def _memory(engine: Engine, rss0: float | None) -> dict[str, Any]:
    peak = sysinfo.peak_rss_mb()
    gpu = engine.gpu_memory_mb() if engine.device == "cuda" else None
    source = None
    if engine.device == "cuda":
        source = "torch max_memory_allocated"
        if gpu is None:
            gpu, source = sysinfo.nvml_used_mb(), "NVML used (device-wide)"
    return {"peak_rss_mb": round(peak, 1), "rss_delta_mb": round(peak - rss0, 1) if rss0 is not None else None,
            "gpu_mem_mb": round(gpu, 1) if gpu is not None else None, "gpu_mem_source": source}


def backend_only(engine: Engine, tiles, batch: int, cfg: BenchConfig) -> dict[str, Any]:
    """Backend-only figures: one preloaded (staged) batch; stages lapped per step, postprocess included."""
    staged = engine.stage(tiles.take(batch).raw)
    clock = _clock(engine)
    first = clock()
    t0 = time.perf_counter_ns()
    engine.run(staged, first)
    first.finish()
    first_ms = (time.perf_counter_ns() - t0) / 1e6

    def step(c: HostClock) -> None:
        probs = engine.run(staged, c)
        postprocess(probs)
        c.lap("postprocess")

    timed = measure(step, clock, warmup_s=cfg.warmup, min_time_s=cfg.min_time, min_iters=cfg.min_iters)
    return {"first_batch_ms": round(first_ms, 3), **stats_row(timed, batch)}


def accuracy(engine: Engine, tiles, batch: int) -> tuple[dict[str, Any], np.ndarray]:
    """OA and kappa (:func:`esccs.metrics.evaluate`) on the labelled tiles, and the probabilities for parity."""
    from esccs.metrics import evaluate

    probs = predict_all(engine, tiles.raw, batch)
    known = tiles.labels >= 0
    if not known.any():
        return {"oa": None, "kappa": None, "eval_tiles": 0}, probs
    s = evaluate(tiles.labels[known], probs.argmax(1)[known], probs.shape[1])["overall"]
    return {"oa": s["oa"], "kappa": s["kappa"], "eval_tiles": int(known.sum())}, probs


def error_row(backend: str, precision: str | None, batch: int | None, err: str, **extra: Any) -> dict[str, Any]:
    """A row for a backend (or one batch size of it) that failed."""
    return {"backend": backend, "precision": precision, "batch": batch, "status": "error", "error": err,
            "e2e": None, **extra}


def bench_backend(backend: str, precision: str, cfg: BenchConfig, ctx: dict[str, Any],
                  log: Callable[[str], Any]) -> list[dict[str, Any]]:
    """All rows of one backend at one precision (errors become rows)."""
    sysinfo.reset_peak_rss()
    rss0 = sysinfo.rss_mb()
    engine = None
    try:
        t0 = time.perf_counter()
        if backend.startswith("torch") and cfg.checkpoint is None:
            raise BackendError(ctx["checkpoint_note"])
        engine = load_engine(backend, precision, model=cfg.model, checkpoint=cfg.checkpoint,
                             int8_model=cfg.int8_model, device=cfg.device, threads=ctx["threads"])
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        engine.predict_probs(ctx["tiles"].take(cfg.batch_sizes[0]).raw)
        first_s = time.perf_counter() - t1
        acc, probs = accuracy(engine, ctx["tiles"], ctx["eval_batch"])
    except Exception as err:  # noqa: BLE001 - a failing backend is a row, never the end of the run
        if engine is not None:
            engine.close()
        log(f"  {backend:<17} {precision:<5} error: {one_line(err)}")
        return [error_row(backend, precision, None, one_line(err), device=cfg.device)]
    ctx["probs"][(backend, precision)] = probs
    base = {"backend": backend, "precision": engine.precision or precision, "device": engine.device,
            "status": "ok", "error": None, "load_s": round(load_s, 3),
            "load_plus_first_batch_s": round(load_s + first_s, 3), "engine": engine.info, **acc}
    rows = []
    for b in cfg.batch_sizes:
        engine.reset_gpu_peak()
        try:
            row = {**base, "batch": b, **backend_only(engine, ctx["tiles"], b, cfg), **_memory(engine, rss0),
                   "e2e": None}
        except Exception as err:  # noqa: BLE001
            row = error_row(backend, base["precision"], b, one_line(err), device=cfg.device, engine=engine.info)
        rows.append(row)
        log(progress_line(row))
    if engine.runtime_model() is not None:  # what esccs infer runs: onnxruntime, TensorRT
        for row in rows:
            if row["status"] == "ok" and row["batch"] in cfg.e2e_batch_sizes:
                row["e2e"] = _e2e(engine, row, cfg, log)
    engine.close()
    del engine
    gc.collect()
    return rows


def _e2e(engine: Engine, row: dict[str, Any], cfg: BenchConfig, log: Callable[[str], Any]) -> dict[str, Any]:
    from esccs.benchmarks.e2e import end_to_end

    sysinfo.reset_peak_rss()
    try:
        e2e = end_to_end(engine, cfg.data, row["batch"], row["throughput"], cfg.min_time, readers=cfg.readers)
        e2e["peak_rss_mb"] = round(sysinfo.peak_rss_mb(), 1)
    except Exception as err:  # noqa: BLE001 - the backend-only figures stand; the end-to-end part is an error
        e2e = {"status": "error", "error": one_line(err)}
    head = f"  {row['backend']:<17} {row['precision']:<5} b={row['batch']:<4} end-to-end  "
    if e2e["status"] == "ok":
        log(f"{head}{e2e['tiles_per_second']:9.1f} tiles/s = {e2e['ratio_to_backend_only']:.2f}x backend-only "
            f"({e2e['passes']} passes of {e2e['tiles_per_pass']} tiles)")
    else:
        log(f"{head}error: {e2e['error']}")
    return e2e


def progress_line(row: dict[str, Any]) -> str:
    """One log line per backend-only row."""
    head = f"  {row['backend']:<17} {row['precision'] or '-':<5} b={row['batch'] or '-':<4} backend-only"
    if row["status"] != "ok":
        return f"{head} error: {row['error']}"
    return (f"{head} p50 {row['latency_ms']['p50']:9.3f} ms/batch  {row['throughput']:9.1f} tiles/s"
            + ("  (unstable: CoV > 2.5 %)" if row["unstable"] else ""))


def add_comparisons(rows: list[dict[str, Any]], probs: dict[tuple, np.ndarray]) -> None:
    """Speedup against torch eager fp32 at the same batch size, and parity against its probabilities and OA."""
    ref_rows = {r["batch"]: r for r in rows if (r["backend"], r["precision"]) == REFERENCE and r["status"] == "ok"}
    ref = probs.get(REFERENCE)
    for r in rows:
        if r["status"] != "ok":
            continue
        rr = ref_rows.get(r["batch"])
        r["speedup_vs_torch"] = r["throughput"] / rr["throughput"] if rr else None
        r["oa_delta_points"] = (100 * (r["oa"] - rr["oa"]) if rr and r.get("oa") is not None
                                and rr.get("oa") is not None else None)
        p = probs.get((r["backend"], r["precision"]))
        if ref is None or p is None or p.shape != ref.shape:
            r["top1_agreement"] = r["max_abs_prob_diff"] = None
            continue
        r["top1_agreement"] = float((p.argmax(1) == ref.argmax(1)).mean())
        r["max_abs_prob_diff"] = float(np.abs(p.astype(np.float64) - ref).max())


def _context(cfg: BenchConfig, mcfg: Any, log: Callable[[str], Any]) -> dict[str, Any]:
    """The labelled tiles (read once, timed), the thread budget and the read cost of the runtime's reader."""
    from esccs.export.tiles import open_tiles, read_tiles

    ds = open_tiles(cfg.data, mcfg)
    split = "test" if ds.indices("test") else None
    n_all = len(ds.indices(split))
    t0 = time.perf_counter()
    tiles = read_tiles(ds, mcfg, min(cfg.eval_samples or n_all, n_all), split=split)
    read_s = time.perf_counter() - t0
    log(f"read {len(tiles)} labelled tiles from {tiles.source} in {read_s:.2f} s")
    return {"tiles": tiles, "probs": {}, "threads": cfg.threads or default_threads(),
            "eval_batch": min(max(cfg.batch_sizes), 128),
            "data": {"source": tiles.source, "tiles": len(tiles), "labelled": int((tiles.labels >= 0).sum()),
                     "read_s": round(read_s, 3), "tile_shape": {k: list(v.shape[1:]) for k, v in tiles.raw.items()}}}


def _read_cost(cfg: BenchConfig, mcfg: Any) -> dict[str, Any] | None:
    """The runtime reader's cost per tile on one thread (context for the end-to-end figures)."""
    from esccs.benchmarks.e2e import read_cost

    if not cfg.e2e_batch_sizes:
        return None
    try:
        return read_cost(cfg.data, mcfg.optical_bands, mcfg.sar_bands, mcfg.patch_size, 32)
    except Exception as err:  # noqa: BLE001 - the read cost is context, not a row
        return {"read_ms_per_tile": None, "error": one_line(err)}


def run_benchmark(cfg: BenchConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the whole grid and return the report (``rows``, ``goals``, ``environment``, ``config``, ``data``).

    Raises:
        DataError: the data folder is missing or holds no tiles (nothing can be measured without inputs).
        BackendError: neither ``M``'s metadata nor a checkpoint describes the model.
    """
    from esccs.benchmarks.goals import evaluate_goals

    t_start = time.perf_counter()
    cfg = cfg.resolved()
    if cfg.device == "cpu":
        import torch  # imported before the first backend, so its libraries are in every backend's RSS baseline

        torch.set_num_threads(cfg.threads or default_threads())
    meta = read_meta(cfg.model)
    if cfg.checkpoint is None:
        found, note = find_checkpoint(cfg.model, meta)
        cfg.checkpoint = found
        checkpoint_note = note
        log(f"checkpoint: {found} ({note})" if found else f"checkpoint: {note}")
    else:
        checkpoint_note = "given (--checkpoint)"
    mcfg = model_config(meta, cfg.checkpoint)
    ctx = _context(cfg, mcfg, log)
    ctx["checkpoint_note"] = checkpoint_note
    rows: list[dict[str, Any]] = []
    for backend, precision in plan(cfg):
        if precision is None:
            rows.append(error_row(backend, None, None, "no requested precision applies (it runs "
                                  f"{', '.join(PRECISIONS.get(backend, ()))})", device=cfg.device))
            continue
        log(f"{backend} {precision}")
        rows += bench_backend(backend, precision, cfg, ctx, log)
    add_comparisons(rows, ctx["probs"])
    ctx["data"]["read_cost"] = _read_cost(cfg, mcfg)
    env = sysinfo.environment()
    env["threads"]["benchmark_threads"] = ctx["threads"]
    report = {"command": cfg.command, "config": json.loads(json.dumps(asdict(cfg), default=str)),
              "checkpoint_source": checkpoint_note, "data": ctx["data"], "environment": env, "rows": rows,
              "eval_batch": ctx["eval_batch"], "seconds": round(time.perf_counter() - t_start, 1)}
    report["goals"] = evaluate_goals(report)
    return report
