"""``esccs benchmark read``: reader-only tile triples/s, the rasterio path against the fast path, 1 and 2 workers.

A *triple* is one job of ``esccs infer``: the cloudy S2 (13 bands uint16), its S1 (2 bands float32) and its cloud
mask, read with every check of :class:`~esccs.runtime.reader.TileReader` into a row of a batch buffer, exactly as
the pipeline does (``pool.submit_batch(_read_one, ...)`` into a ring of slots). Each size gets an ``esccs data synth``
folder written in the real SEN12MS tile layout (``--tiff-profile sen12ms``: uncompressed, pixel-interleaved, one-row
strips for a 256 px S2); the tiles are read round-robin from the page cache (a warm-up pass first).

Configurations: path (``rasterio`` = ``ESCCS_READER=rasterio``, today's reader; ``fast`` = the default) x workers
(1 = one thread, the runtime's default; N > 1 = worker processes, the runtime's default for N > 1, and N threads for
comparison). Every configuration keeps its pool, reader and buffers for the whole run (worker start-up and the
first-file checks happen in the warm-up), and the rounds interleave the configurations, so load changes on a shared
machine hit all of them alike; the median of the rounds is reported with the spread.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from esccs.runtime import open_tiles
from esccs.runtime.model import default_threads
from esccs.runtime.pipeline import _read_one
from esccs.runtime.reader import Bands, TileReader, configure_gdal
from esccs.runtime.workers import make_pool
from esccs.spec import S1_BANDS, S2_BANDS

PATHS = {"rasterio": "rasterio", "fast": "auto"}  # benchmark name -> TileReader engine
#: issue 15 goals, reader-only: fast >= 4x rasterio at 256 px on one worker; 2 workers >= 1.7x one worker;
#: esccs infer end to end >= 0.9x min(reader-only, backend-only) at 32 and 128 px
GOAL_FAST_256, GOAL_TWO_WORKERS, GOAL_E2E = 4.0, 1.7, 0.9


def tile_data(scratch: Path, size: int, samples: int, profile: str = "sen12ms") -> Path:
    """An ``esccs data synth`` folder of ``size`` px tiles in ``profile`` under ``scratch`` (made once)."""
    from esccs.data.synth import SynthConfig, synthesize

    out = Path(scratch) / f"synth_{size}px_{profile}_{samples}"
    if not (out / "dataset.json").exists():
        synthesize(SynthConfig(out=out, samples=samples, size=size, patches_per_scene=max(4, samples // 4),
                               workers=min(2, os.cpu_count() or 1), tiff_profile=profile, overwrite=True),
                   progress=False)
    return out


class ReadRun:
    """One configuration: a reader, its pool and a ring of batch buffers, reading jobs round-robin.

    Args:
        jobs: the tile jobs to cycle through.
        patch: tile size.
        path: ``rasterio`` or ``fast``.
        workers: readers; ``kind`` ``thread`` or ``process`` (one worker is always a thread).
        batch: rows per slot; ``slots``: ring size (the pipeline's queue depth + 2 is 4).
    """

    def __init__(self, jobs: list, patch: int, path: str, workers: int, kind: str, batch: int = 32,
                 slots: int = 4) -> None:
        self.jobs, self.batch, self.name = jobs, batch, path
        self.workers, self.kind = workers, kind if workers > 1 else "thread"
        self.reader = TileReader(Bands(S2_BANDS, S1_BANDS, patch), engine=PATHS[path])
        self.pool = make_pool(self.reader, workers, self.kind)
        self.slots = [SimpleNamespace(optical=self.pool.buffer((batch, len(S2_BANDS), patch, patch)),
                                      sar=self.pool.buffer((batch, len(S1_BANDS), patch, patch)))
                      for _ in range(slots)]
        self._next = 0

    def read(self, n: int) -> int:
        """Read at least ``n`` triples (whole batches); return how many."""
        pending: list[list] = []
        done = k = 0
        while done < n:
            if len(pending) == len(self.slots):
                self._wait(pending.pop(0))
            chunk = [self.jobs[(self._next + i) % len(self.jobs)] for i in range(self.batch)]
            self._next += self.batch
            pending.append(self.pool.submit_batch(_read_one, self.reader, chunk, self.slots[k % len(self.slots)]))
            k += 1
            done += self.batch
        for futures in pending:
            self._wait(futures)
        return done

    @staticmethod
    def _wait(futures: list) -> None:
        for f in futures:
            r = f.result()
            if r["status"] != "ok":
                raise RuntimeError(f"benchmark tile failed: {r['path']}: {r['reason']}")

    def rate(self, min_time: float) -> float:
        """Triples/s over whole batches lasting at least ``min_time`` seconds."""
        t0 = time.perf_counter()
        n = 0
        while True:
            n += self.read(self.batch)
            dt = time.perf_counter() - t0
            if dt >= min_time:
                return n / dt

    def close(self) -> dict:
        """Stop the pool; return the reader's counts (files per path, checks)."""
        self.pool.shutdown(wait=True)
        self.reader.absorb(self.pool)
        return self.reader.stats()


def bench_read(sizes: tuple[int, ...] = (32, 128, 256), paths: tuple[str, ...] = ("rasterio", "fast"),
               workers: tuple[int, ...] = (1, 2), threads_too: bool = True, rounds: int = 5, min_time: float = 1.0,
               samples: int = 64, profile: str = "sen12ms", scratch: Path | None = None, batch: int = 32,
               log=print) -> dict[str, Any]:
    """The whole comparison (see the module docstring); returns figures per size, ratios and goals."""
    configure_gdal()
    scratch = Path(scratch or "/tmp/esccs-bench-read")
    out: dict[str, Any] = {"profile": profile, "rounds": rounds, "min_time_s": min_time, "batch": batch,
                           "cores": default_threads(),
                           "load_average_before": list(os.getloadavg()), "sizes": {}}
    cpu = CpuScaling()
    for size in sizes:
        data = tile_data(scratch, size, samples, profile)
        jobs = open_tiles(data).jobs
        configs = [(p, w, "process" if w > 1 else "thread") for p in paths for w in workers]
        if threads_too:
            configs += [(p, w, "thread") for p in paths for w in workers if w > 1]
        runs = {c: ReadRun(jobs, size, *c, batch=batch) for c in configs}
        for run in runs.values():  # warm-up: page cache, worker start-up, first-file checks
            run.read(max(len(jobs), 2 * batch * max(workers)))
        rates: dict[tuple, list[float]] = {c: [] for c in configs}
        scaling: list[float] = []
        for r in range(rounds):
            order = configs if r % 2 == 0 else configs[::-1]  # alternate the order too
            for c in order:
                rates[c].append(runs[c].rate(min_time))
            scaling.append(cpu.measure())
            log(f"{size} px round {r + 1}/{rounds}: " + ", ".join(f"{_label(c)} {rates[c][-1]:.0f}" for c in configs)
                + f"; a CPU loop in 2 processes: {scaling[-1]}x")
        stats = {c: runs[c].close() for c in configs}
        rows = [{"path": c[0], "workers": c[1], "kind": c[2], "triples_per_s": round(statistics.median(rates[c]), 1),
                 "rounds": [round(v, 1) for v in rates[c]], "files": stats[c]["files"],
                 "declined": stats[c]["declined"], "signatures_checked": stats[c]["signatures_checked"]}
                for c in configs]
        out["sizes"][str(size)] = {"data": str(data), "tiles": len(jobs), "rows": rows, "ratios": _ratios(rows),
                                   "cpu_two_process_scaling": scaling}
    cpu.close()
    out["load_average_after"] = list(os.getloadavg())
    out["goals"] = read_goals(out)
    return out


def _spin(n: int) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t


class CpuScaling:
    """How much a second process gets on this machine right now: a pure-Python loop in 1 vs 2 processes.

    On a shared machine the reader's 2-worker figure cannot beat this; it is measured in every round beside them.
    """

    def __init__(self, n: int = 400_000) -> None:
        import multiprocessing as mp

        self.n = n
        self.pool = mp.get_context("spawn").Pool(2)
        self.pool.map(_spin, [10, 10])

    def measure(self) -> float:
        """2 x (time of one loop alone) / (time of two loops in two processes at once)."""
        one = self.pool.apply(_spin, (self.n,))
        t = time.perf_counter()
        self.pool.map(_spin, [self.n, self.n], chunksize=1)
        return round(2 * one / (time.perf_counter() - t), 2)

    def close(self) -> None:
        """Stop the two processes."""
        self.pool.close()
        self.pool.join()


def _label(c: tuple) -> str:
    return f"{c[0]}/{c[1]}{'t' if c[2] == 'thread' else 'p'}"


def _median_ratio(rows: list[dict], a: dict, b: dict) -> float:
    """Median over rounds of a/b (both measured in the same round), a steadier figure than a ratio of medians."""
    ra, rb = a["rounds"], b["rounds"]
    return round(statistics.median(x / y for x, y in zip(ra, rb)), 2)


def _ratios(rows: list[dict]) -> dict[str, float]:
    by = {(r["path"], r["workers"], r["kind"]): r for r in rows}
    out = {}
    for (p, w, k), r in by.items():
        if p == "fast" and ("rasterio", w, k) in by:
            out[f"fast/rasterio {w} {k}"] = _median_ratio(rows, r, by[("rasterio", w, k)])
        if w > 1 and (p, 1, "thread") in by:
            out[f"{p} {w} {k}/1 worker"] = _median_ratio(rows, r, by[(p, 1, "thread")])
    return out


def read_goals(report: dict) -> list[dict]:
    """Issue 15's reader goals, met or not, with the figures."""
    goals = []
    s256 = report["sizes"].get("256")
    if s256:
        v = s256["ratios"].get("fast/rasterio 1 thread")
        goals.append({"goal": "256 px, one worker: fast >= 4x the rasterio read rate", "value": v,
                      "met": v is not None and v >= GOAL_FAST_256})
    for size, s in report["sizes"].items():
        v = s["ratios"].get("fast 2 process/1 worker")
        if v is not None:
            goals.append({"goal": f"{size} px: 2 worker processes >= 1.7x one worker (fast path)", "value": v,
                          "met": v >= GOAL_TWO_WORKERS})
    return goals


def format_read(report: dict) -> str:
    """A Markdown table per size: triples/s per configuration (median, range) and the ratios."""
    lines = [f"Reader only, tile triples/s (S2 + S1 + cloud mask, {report['profile']} layout), median of "
             f"{report['rounds']} interleaved rounds of >= {report['min_time_s']} s; load average "
             f"{report['load_average_before'][0]:.1f} before, {report['load_average_after'][0]:.1f} after on "
             f"{report['cores']} cores.", ""]
    for size, s in report["sizes"].items():
        lines += [f"### {size} px ({s['tiles']} tiles round-robin)", "",
                  "| path | workers | triples/s | range | files fast / rasterio |", "|---|---|---:|---|---|"]
        for r in s["rows"]:
            lo, hi = min(r["rounds"]), max(r["rounds"])
            kind = r["kind"] + (("es" if r["kind"] == "process" else "s") if r["workers"] > 1 else "")
            lines.append(f"| {r['path']} | {r['workers']} {kind} | "
                         f"{r['triples_per_s']:.0f} | {lo:.0f}-{hi:.0f} | "
                         f"{r['files'].get('fast', 0)} / {r['files'].get('rasterio', 0)} |")
        lines += ["", "Ratios (median of per-round ratios): " + "; ".join(f"{k} = {v}" for k, v in s["ratios"].items()),
                  "", "What a second process got on this machine in the same rounds (a pure-Python loop, 2 processes "
                  f"vs 1; 2.0 = a free second core): {', '.join(map(str, s['cpu_two_process_scaling']))}", ""]
    lines += ["Goals:", ""] + [f"- {g['goal']}: {g['value']} -> {'MET' if g['met'] else 'NOT MET'}" + (
        "" if g.get("cpu_ceiling") is None else f" (CPU ceiling on this machine {g['cpu_ceiling']}x: "
        f"{'reachable' if g['reachable_here'] else 'unreachable'} here)") for g in report["goals"]]
    return "\n".join(lines) + "\n"


def e2e_goals(report: dict) -> list[dict]:
    """The end-to-end goal per size and reader-worker count (from ``report["end_to_end"]``)."""
    goals = []
    for size, e in report.get("end_to_end", {}).items():
        for w, row in e["by_workers"].items():
            v = row["e2e_over_min_parts"]
            c = row.get("cpu_ceiling_over_min_parts")
            goals.append({"goal": f"{size} px, {w} reader worker(s): esccs infer >= 0.9x min(reader-only, "
                                  "backend-only)", "value": v, "met": v >= GOAL_E2E, "cpu_ceiling": c,
                          "reachable_here": None if c is None else c >= GOAL_E2E})
    return goals


def format_e2e(report: dict) -> str:
    """Markdown: end to end vs its parts per size and worker count (medians of the rounds)."""
    if not report.get("end_to_end"):
        return ""
    lines = ["", "## esccs infer end to end vs reader-only vs backend-only", "",
             "| size | model | reader workers | backend-only tiles/s | reader-only triples/s | esccs infer tiles/s | "
             "e2e / min | per-round ratios | CPU ms per tile (backend + reader) | CPU ceiling / min |",
             "|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for size, e in report["end_to_end"].items():
        for w, row in e["by_workers"].items():
            lines.append(f"| {size} px | {Path(e['model']).stem} | {w} | {row['backend_only_tiles_per_s']:.0f} | "
                         f"{row['reader_only_triples_per_s']:.0f} | {row['end_to_end_tiles_per_s']:.0f} | "
                         f"{row['e2e_over_min_parts']:.2f} | {', '.join(map(str, row['rounds']['ratio']))} | "
                         + (f"{row['cpu_ms_per_tile']['backend']:.2f} + {row['cpu_ms_per_tile']['reader']:.2f} | "
                            f"{row['cpu_ceiling_over_min_parts']:.2f} |" if "cpu_ms_per_tile" in row
                            else "n/a | n/a |"))
    lines += ["", "End to end: `esccs infer` in a fresh process over "
              f"{next(iter(report['end_to_end'].values()))['tiles']} tiles (tiles/s of its processing loop; worker "
              "start-up included, model load excluded). Commands: " + "; ".join(
                  f"`{row['e2e_command']}`" for e in report["end_to_end"].values()
                  for row in e["by_workers"].values()), ""]
    return "\n".join(lines) + "\n"
