"""Render a benchmark report: Markdown (tables + environment), JSON, and one self-contained HTML page.

The HTML page has no external resources: tables are plain HTML and the plots are PNGs embedded as base64 data URIs
(without matplotlib the page is written without plots and says so). All three files are written atomically
(temporary file + rename).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from esccs.io.atomic import write_text

STATUS_MARK = {"met": "met", "not met": "NOT MET"}
METHOD = [
    "Throughput = tiles / total host walltime of the timed batches (trtexec's definition); every timed step "
    "includes the host-side preprocessing and the postprocessing (class, confidence, top-3).",
    "Latency per batch = H2D + compute + D2H (trtexec). On CPU there are no transfers, so latency = compute. The "
    "runtime's backends (onnxruntime, TensorRT) take and return host arrays: their transfers are inside compute.",
    "Preprocess = the runtime's numpy normalisation of raw tiles (0 when the graph has it baked in; the torch "
    "engines carry it in the module, inside compute).",
    "Warm-up (seconds, at least one batch) is discarded; then batches run for at least --min-time seconds and "
    "at least the minimum count. Load time and the first batch are reported apart from steady state.",
    "CPU timing with time.perf_counter_ns; GPU timing of the torch engines with CUDA events on their working stream, "
    "one batch in flight; enqueue = host time to issue the compute. Runtime backends synchronise inside their call "
    "and are timed on the host clock.",
    "Statistics: median (p50), p90, p99, mean and MAD; 'unstable' when the coefficient of variation > 2.5 %.",
    "Backend-only: one batch of real raw tiles preloaded in host memory (pinned on CUDA), staged once. "
    "End-to-end: the runtime's own pipeline (esccs.runtime.run_inference, what esccs infer runs) over the data "
    "folder's GeoTIFFs with the same loaded model and batch size, outputs to a temporary folder, after one untimed "
    "warm-up pass (warm page cache); its tiles/s is the pipeline's processing loop (model load excluded). Only "
    "the backends esccs infer runs (onnxruntime, TensorRT) have end-to-end figures; torch rows are backend-only.",
    "Accuracy: OA and Cohen's kappa (esccs.metrics) on the labelled tiles of the data set; parity = OA difference, "
    "top-1 agreement and max |d prob| against the torch fp32 reference on the same tiles.",
    "Speedup = throughput / torch eager fp32 throughput at the same batch size, measured in the same run.",
    "Peak RSS is per backend (the RSS high-water mark is reset before each backend loads and before each "
    "end-to-end measurement); delta = peak minus the RSS before loading. GPU memory: torch max_memory_allocated "
    "for the torch engines, NVML (device-wide) for the other backends.",
]


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _sci(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1e}"


def _stage(r: dict, s: str, key: str = "stages_p50_ms") -> str:
    v = (r.get(key) or {}).get(s)
    return "n/a" if v is None else f"{v:.3f}"


def _e2e(r: dict) -> dict:
    e = r.get("e2e") or {}
    return e if e.get("status") == "ok" else {}


def results_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per backend x precision x batch size, failures included with their error."""
    head = ["backend", "precision", "batch", "status", "p50 ms", "p90 ms", "p99 ms", "mean ms", "p50 ms/tile",
            "mean ms/tile", "tiles/s", "speedup vs torch fp32", "e2e tiles/s", "e2e / backend-only", "OA %",
            "kappa", "top-1 agree", "error"]
    out = []
    for r in report["rows"]:
        if r["status"] != "ok":
            out.append([r["backend"], _f(r.get("precision")), _f(r.get("batch")), "error"] + ["n/a"] * 13
                       + [r.get("error") or ""])
            continue
        lat, pt, e = r["latency_ms"], r["latency_per_tile_ms"], _e2e(r)
        e_err = (r.get("e2e") or {}).get("error")
        out.append([r["backend"], r["precision"], str(r["batch"]), "ok", _f(lat["p50"], 3), _f(lat["p90"], 3),
                    _f(lat["p99"], 3), _f(lat["mean"], 3), _f(pt["p50"], 3), _f(pt["mean"], 3),
                    _f(r["throughput"], 1), _f(r.get("speedup_vs_torch")), _f(e.get("tiles_per_second"), 1),
                    _f(e.get("ratio_to_backend_only")), _f(100 * r["oa"] if r.get("oa") is not None else None),
                    _f(r.get("kappa"), 3), _f(r.get("top1_agreement"), 3),
                    f"end-to-end: {e_err}" if e_err else ""])
    return head, out


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of every table, shared by the Markdown and HTML renderers."""
    rows = report["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    goals = [[g["goal"], STATUS_MARK.get(g["status"], g["status"]), _f(g.get("value"), 2), _f(g.get("target")),
              g.get("why", "")] for g in report["goals"]]
    st_head = ["backend", "precision", "batch", "preprocess", "H2D", "compute", "D2H", "postprocess", "enqueue",
               "iterations", "CoV %", "first batch ms", "load s", "load + first batch s", "peak RSS MB",
               "RSS delta MB", "GPU MB", "GPU MB source"]
    st = []
    for r in ok:
        enq = r.get("enqueue_ms")
        st.append([r["backend"], r["precision"], str(r["batch"]), _stage(r, "preprocess"), _stage(r, "h2d"),
                   _stage(r, "compute"), _stage(r, "d2h"), _stage(r, "postprocess"),
                   _f(enq["p50"], 3) if enq else "n/a", str(r["iterations"]),
                   _f(100 * r["latency_ms"]["cov"], 1) + (" (unstable)" if r["unstable"] else ""),
                   _f(r["first_batch_ms"], 1), _f(r["load_s"], 3), _f(r["load_plus_first_batch_s"], 3),
                   _f(r["peak_rss_mb"], 0), _f(r["rss_delta_mb"], 0), _f(r["gpu_mem_mb"], 0),
                   r.get("gpu_mem_source") or "n/a"])
    e_head = ["backend", "precision", "batch", "backend-only tiles/s", "end-to-end tiles/s", "ratio",
              "backend tiles/s inside the pipeline", "read wait ms/batch",
              "backend ms/batch", "other ms/batch", "passes x tiles", "readers", "peak RSS MB", "error"]
    e2e = []
    for r in ok:
        raw = r.get("e2e")
        if not raw:
            continue
        e = _e2e(r)
        if not e:
            e2e.append([r["backend"], r["precision"], str(r["batch"]), _f(r["throughput"], 1)] + ["n/a"] * 9
                       + [raw.get("error") or ""])
            continue
        sm = e["stages_mean_ms"]
        e2e.append([r["backend"], r["precision"], str(r["batch"]), _f(r["throughput"], 1),
                    _f(e["tiles_per_second"], 1), _f(e["ratio_to_backend_only"], 3),
                    _f(e.get("backend_tiles_per_second_in_pipeline"), 1), _f(sm["read_wait"], 3),
                    _f(sm["backend"], 3), _f(sm["other"], 3), f"{e['passes']} x {e['tiles_per_pass']}",
                    str(e["readers"]), _f(e.get("peak_rss_mb"), 0), ""])
    par_head = ["backend", "precision", "OA %", "OA vs torch fp32 (points)", "kappa", "top-1 agreement",
                "max |d prob|", "labelled tiles"]
    par, seen = [], set()
    for r in ok:
        key = (r["backend"], r["precision"])
        if key in seen:
            continue
        seen.add(key)
        par.append([r["backend"], r["precision"], _f(100 * r["oa"] if r.get("oa") is not None else None),
                    _f(r.get("oa_delta_points"), 2), _f(r.get("kappa"), 3), _f(r.get("top1_agreement"), 4),
                    _sci(r.get("max_abs_prob_diff")), _f(r.get("eval_tiles"))])
    engines: dict[tuple, dict] = {}
    for r in rows:
        if r.get("engine") and (r["backend"], r["precision"]) not in engines:
            engines[(r["backend"], r["precision"])] = r["engine"]
    eng = [[b, p, "; ".join(f"{k}={v}" for k, v in e.items())] for (b, p), e in engines.items()]
    return [("Goals", ["goal", "status", "value", "target", "why"], goals),
            ("Results (latency per batch = H2D + compute + D2H; tiles/s and e2e side by side)", *results_table(report)),
            ("Accuracy and parity against torch eager fp32 (same labelled tiles)", par_head, par),
            ("End-to-end (esccs infer's pipeline) vs backend-only, same model and batch size", e_head, e2e),
            ("Per-stage breakdown (medians, ms per batch) and memory, backend-only", st_head, st),
            ("Backend settings", ["backend", "precision", "settings"], eng)]


def environment_lines(report: dict[str, Any]) -> list[str]:
    """The environment block as ``key: value`` lines."""
    env = report["environment"]
    gpu = env.get("gpu")
    gpu_line = (f"{gpu['name']}, driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}, {gpu.get('memory_gb')} GB"
                if gpu else "none")
    lines = [f"cpu: {env['cpu']} ({', '.join(env.get('cpu_flags') or []) or 'no AVX2/AVX-512 flags seen'})",
             f"cores: os.cpu_count={env['threads'].get('os_cpu_count')}, "
             f"affinity={env['threads'].get('affinity_cores')}",
             f"load average (1/5/15 min, at the end): {env.get('load_average_1_5_15')}",
             f"gpu: {gpu_line}",
             f"os: {env['os']} {env['machine']}, python {env['python']}",
             "libraries: " + ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v),
             "threads: " + ", ".join(f"{k}={v}" for k, v in env["threads"].items()),
             f"peak RSS method: {env.get('peak_rss_method')}"]
    d = report.get("data", {})
    lines.append(f"data: {d.get('source')}: {d.get('tiles')} tiles ({d.get('labelled')} labelled), "
                 f"shapes {d.get('tile_shape')}, read in {d.get('read_s')} s")
    rc = d.get("read_cost") or {}
    if rc.get("read_ms_per_tile") is not None:
        lines.append(f"read cost (runtime reader, 1 thread, warm cache): {rc['read_ms_per_tile']:.3f} ms per tile")
    cfg = report["config"]
    lines.append(f"checkpoint: {cfg.get('checkpoint')} ({report.get('checkpoint_source')})")
    lines.append(f"run: {report.get('seconds')} s in total; min-time {cfg['min_time']} s, warm-up {cfg['warmup']} s, "
                 f"min batches {cfg['min_iters']}, threads {cfg.get('threads') or 'all cores'}, "
                 f"end-to-end readers {cfg.get('readers')}")
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in esc])


def terminal_text(report: dict[str, Any]) -> str:
    """What the command prints: the results table and the goals, as Markdown."""
    head, rows = results_table(report)
    goals = next(t for t in tables(report) if t[0] == "Goals")
    return "\n".join([_md_table(head, rows), "", _md_table(goals[1], goals[2])])


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: command, tables, method and environment."""
    cfg = report["config"]
    parts = ["# esccs benchmark", "", f"Command: `{report.get('command') or 'esccs benchmark (API call)'}`", "",
             f"Device: {cfg['device']}; model: `{cfg['model']}`; checkpoint: `{cfg.get('checkpoint')}`; "
             f"data: `{cfg['data']}`.", ""]
    for title, header, rows in tables(report):
        parts += [f"## {title}", "", _md_table(header, rows) if rows else "(none)", ""]
    parts += ["## Method", ""] + [f"- {m}" for m in METHOD] + [""]
    parts += ["## Environment", "", "```", *environment_lines(report), "```", ""]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(alt)}">'


def _plots(report: dict[str, Any]) -> list[str]:
    """The plot section: embedded PNGs, or one line saying why there are none."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ["<p class='no-plots'>No plots: matplotlib is not installed (pip install 'esccs[viz]').</p>"]
    from esccs.benchmarks.plots import latency_batch, latency_plot, stages_plot, throughput_plot

    rows = report["rows"]
    b = latency_batch(rows)
    return [_img(throughput_plot(rows), "throughput vs batch size per backend"),
            _img(latency_plot(rows, b), f"latency distribution at batch {b}"),
            _img(stages_plot(rows), "per-stage time per tile")]


def to_html(report: dict[str, Any]) -> str:
    """A self-contained page: tables, embedded plots (base64 PNG), method and the environment block."""
    style = ("body{font-family:sans-serif;margin:2em;max-width:1800px}table{border-collapse:collapse;font-size:12px;"
             "margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
             "td:first-child,td:nth-child(2){text-align:left}pre{background:#f6f6f6;padding:1em}img{max-width:100%}")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>esccs benchmark</title><style>{style}</style>"
           "</head><body><h1>esccs benchmark</h1>",
           f"<p>Command: <code>{html.escape(report.get('command') or 'esccs benchmark (API call)')}</code></p>"]
    for title, header, rows in tables(report):
        out += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows) if rows else "<p>(none)</p>"]
    out += ["<h2>Plots</h2>", *_plots(report)]
    out += ["<h2>Method</h2><ul>"] + [f"<li>{html.escape(m)}</li>" for m in METHOD] + ["</ul>"]
    out += ["<h2>Environment</h2>", '<pre class="environment">',
            html.escape("\n".join(environment_lines(report))), "</pre></body></html>"]
    return "\n".join(out)


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``report.html`` into the folder ``out`` (each atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "html": out / "report.html"}
    write_text(paths["json"], json.dumps(report, indent=1, default=str) + "\n")
    write_text(paths["md"], to_markdown(report))
    write_text(paths["html"], to_html(report))
    return paths
