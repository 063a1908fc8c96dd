"""``esccs benchmark infer --engine ray``: Ray Data with 1 and 2 actors against the local engine, on the same tiles.

One process, one local Ray (started once: its start-up is reported, as ``ray.init`` and as the first dataset's time
to its first result, i.e. actor start plus model load). Then interleaved rounds, the order rotating each round:
the local engine (``run_inference``, the backend on every core), Ray with 1 actor holding every core, Ray with as
many 1-CPU actors as cores. Figures per configuration are medians over the rounds:

- local: tiles/s over the processing loop (model load excluded), as ``esccs infer`` reports it;
- Ray: steady tiles/s once every actor had its model loaded (tiles done after the last actor was ready, over that
  time), and end to end (all tiles over the whole run, actor start-up included).

Every Ray round's CSV is compared with the local engine's byte for byte (same rows, same order, same digits).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from esccs.benchmarks.infer import tile_folder
from esccs.benchmarks.sysinfo import environment
from esccs.runtime import InferOptions, load_model, open_tiles, run_inference
from esccs.runtime.model import default_threads
from esccs.runtime.ray_engine import RayOptions, connect, import_ray, run_inference_ray


def bench_ray(model_path: Path, data: Path, n: int = 4000, batch: int = 32, rounds: int = 3,
              scratch: Path | None = None, log=print) -> dict[str, Any]:
    """Local engine vs Ray (1 actor x all cores, N actors x 1 core) over ``n`` tiles; see the module docstring."""
    ray = import_ray()
    scratch = Path(scratch or "/tmp/esccs-bench-ray")
    scratch.mkdir(parents=True, exist_ok=True)
    folder = tile_folder(data, n, scratch)
    cores = default_threads()
    load_before = os.getloadavg()
    link = connect(None, cores, 5.0)
    log(f"ray.init (local, {cores} CPUs): {link['startup_seconds']} s")
    try:
        model = load_model(model_path, threads=cores)
        source = open_tiles(folder)
        configs = {"local": None, "ray_1_actor": RayOptions(actors=1, cpus_per_actor=cores)}
        if cores > 1:
            configs[f"ray_{cores}_actors"] = RayOptions(actors=cores, cpus_per_actor=1)
        out = scratch / "out"
        # warm the page cache and the local path; the first Ray dataset also times Ray's cold start
        run_inference(source, model, [out / "warm.csv"], InferOptions(batch_size=batch, overwrite=True,
                                                                      progress=False))
        t = time.perf_counter()
        cold = run_inference_ray(source, model, [out / "cold.csv"], InferOptions(batch_size=batch, overwrite=True,
                                                                                 progress=False),
                                 RayOptions(actors=1, cpus_per_actor=cores))
        startup = {"ray_init_seconds": link["startup_seconds"],
                   "first_dataset_first_result_seconds": cold["ray"]["first_result_seconds"],
                   "first_dataset_seconds": round(time.perf_counter() - t, 3)}
        log(f"first Ray dataset: first result after {startup['first_dataset_first_result_seconds']} s")
        runs: dict[str, list[dict]] = {k: [] for k in configs}
        names = list(configs)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                csv = out / f"{name}.csv"
                opts = InferOptions(batch_size=batch, overwrite=True, progress=False)
                t = time.perf_counter()
                if configs[name] is None:
                    s = run_inference(source, model, [csv], opts)
                    row = {"tiles_per_second": s["tiles_per_second"], "seconds": s["seconds"]}
                else:
                    s = run_inference_ray(source, model, [csv], opts, configs[name])
                    row = {"tiles_per_second": s["ray"]["steady_tiles_per_second"],
                           "end_to_end_tiles_per_second": s["tiles_per_second"], "seconds": s["seconds"],
                           "first_result_seconds": s["ray"]["first_result_seconds"],
                           "actors": [{k: a[k] for k in ("tiles", "tiles_per_second", "waiting_for_reads_seconds",
                                                         "backend_seconds")} for a in s["actors"]],
                           "identical_to_local": csv.read_bytes() == (out / "local.csv").read_bytes()
                           if (out / "local.csv").exists() else None}
                row.update(round=r, wall_seconds=round(time.perf_counter() - t, 3), classified=s["classified"])
                runs[name].append(row)
                log(f"round {r + 1}/{rounds} {name}: {row['tiles_per_second']} tiles/s"
                    + (f" steady, {row['end_to_end_tiles_per_second']} end to end" if configs[name] else ""))
        model.close()
    finally:
        if link["started_local"]:
            ray.shutdown()
    # the first local round may come after a Ray round: parity is checked again against the final local CSV
    local_csv = (out / "local.csv").read_bytes()
    identical = all((out / f"{k}.csv").read_bytes() == local_csv for k in configs if k != "local")
    med = {k: statistics.median(x["tiles_per_second"] for x in v) for k, v in runs.items()}
    summary = {}
    for k, v in runs.items():
        summary[k] = {"median_tiles_per_second": round(med[k], 2),
                      "ratio_to_local": round(med[k] / med["local"], 3)}
        if configs[k] is not None:
            e2e = statistics.median(x["end_to_end_tiles_per_second"] for x in v)
            summary[k].update(median_end_to_end_tiles_per_second=round(e2e, 2),
                              end_to_end_ratio_to_local=round(e2e / med["local"], 3),
                              median_first_result_seconds=round(statistics.median(x["first_result_seconds"]
                                                                                  for x in v), 3))
    top = f"ray_{cores}_actors" if cores > 1 else "ray_1_actor"
    return {"model": str(model_path), "data": str(data), "tiles": n, "tile_folder": str(folder), "batch_size": batch,
            "rounds": rounds, "cores": cores, "ray_version": ray.__version__, "startup": startup,
            "summary": summary, "runs": runs, "predictions_identical_to_local": identical,
            "goals": {f"{top}_over_local_after_startup": {"goal": 0.85, "value": summary[top]["ratio_to_local"],
                                                          "met": summary[top]["ratio_to_local"] >= 0.85},
                      "predictions_identical": {"goal": True, "value": identical, "met": identical}},
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "machine_note": "a shared machine: other jobs (a training run, other agents' tests) ran during the "
                            "measurement, so only the ratios of interleaved rounds are meaningful",
            "environment": environment()}


def markdown(r: dict[str, Any], command: str) -> str:
    """The result as a short Markdown report."""
    lines = [f"# `esccs infer --engine ray` vs the local engine ({r['cores']} cores, CPU)", "",
             f"Command: `{command}`", "",
             f"{r['tiles']} tiles ({r['tile_folder']}), batch {r['batch_size']}, {r['rounds']} interleaved rounds, "
             f"ray {r['ray_version']}, model `{Path(r['model']).name}`. {r['machine_note'].capitalize()} "
             f"(load average {r['load_average_before']} before, {r['load_average_after']} after).", "",
             "| engine | tiles/s (median) | x local | tiles/s incl. actor start-up | x local | first result (s) |",
             "|---|---|---|---|---|---|"]
    for k, s in r["summary"].items():
        lines.append(f"| {k} | {s['median_tiles_per_second']} | {s['ratio_to_local']} | "
                     f"{s.get('median_end_to_end_tiles_per_second', '-')} | {s.get('end_to_end_ratio_to_local', '-')}"
                     f" | {s.get('median_first_result_seconds', '-')} |")
    st = r["startup"]
    lines += ["", f"Ray start-up: `ray.init` {st['ray_init_seconds']} s; the first dataset's first result after "
              f"{st['first_dataset_first_result_seconds']} s (actor process start + model load), "
              f"{st['first_dataset_seconds']} s for the whole first dataset.", "",
              "Local: tiles/s over `esccs infer`'s processing loop (model load excluded). Ray: steady tiles/s once "
              "every actor had loaded its model; the end-to-end column includes starting the actors each run.", "",
              "Goals:"]
    for name, g in r["goals"].items():
        lines.append(f"- {name}: goal {g['goal']}, measured {g['value']}: {'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"
