"""Plots of a benchmark report as PNG bytes (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

import io
from typing import Any

STAGE_COLOURS = {"preprocess": "#e377c2", "h2d": "#7f7f7f", "compute": "#1f77b4", "d2h": "#bcbd22",
                 "postprocess": "#17becf"}
#: the end-to-end rows' stages (from the runtime's run summary), per batch
E2E_COLOURS = {"read_wait": "#8c564b", "backend": "#aec7e8", "other": "#ff7f0e"}


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _figure(w: float = 7.0, h: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok"]


def throughput_plot(rows: list[dict[str, Any]]) -> bytes:
    """Throughput (tiles/s) vs batch size per backend x precision: backend-only (solid) and end-to-end (dashed)."""
    fig, ax = _figure()
    series: dict[str, list[tuple[int, float, float | None]]] = {}
    for r in _ok(rows):
        e = r.get("e2e") or {}
        series.setdefault(f"{r['backend']} {r['precision']}", []).append(
            (r["batch"], r["throughput"], e.get("tiles_per_second") if e.get("status") == "ok" else None))
    for k, (name, pts) in enumerate(series.items()):
        pts.sort()
        colour = f"C{k % 10}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label=f"{name} backend-only")
        e2e = [(p[0], p[2]) for p in pts if p[2]]
        if e2e:
            ax.plot([p[0] for p in e2e], [p[1] for p in e2e], marker="s", ls="--", color=colour,
                    label=f"{name} end-to-end")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (tiles/s)")
    ax.set_title("Throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    return _png(fig)


def latency_batch(rows: list[dict[str, Any]]) -> int | None:
    """The batch size the latency plot shows: 32 when measured, else the largest measured."""
    sizes = {r["batch"] for r in _ok(rows)}
    return 32 if 32 in sizes else max(sizes, default=None)


def latency_plot(rows: list[dict[str, Any]], batch: int | None) -> bytes:
    """Box plot of per-batch latency (ms) per backend x precision at one batch size (backend-only)."""
    fig, ax = _figure()
    sel = [r for r in _ok(rows) if r["batch"] == batch and r.get("samples_ms")]
    if sel:
        ax.boxplot([r["samples_ms"] for r in sel], showfliers=True, whis=(1, 99))
        ax.set_xticks(range(1, len(sel) + 1), [f"{r['backend']}\n{r['precision']}" for r in sel], fontsize=8)
        ax.set_yscale("log")
    ax.set_ylabel("latency per batch (ms, h2d+compute+d2h)")
    ax.set_title(f"Latency distribution at batch {batch} (whiskers p1..p99)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return _png(fig)


def stages_plot(rows: list[dict[str, Any]]) -> bytes:
    """Stacked mean ms per tile: backend-only stages, and beside each the end-to-end split (read wait, backend)."""
    fig, ax = _figure(8.0, 4.5)
    bars: list[tuple[str, dict[str, float], dict[str, str]]] = []
    for r in _ok(rows):
        b = r["batch"]
        bars.append((f"{r['backend']} {r['precision']}\nb={b}",
                     {s: (v or 0.0) / b for s, v in (r.get("stages_mean_ms") or {}).items() if s in STAGE_COLOURS},
                     STAGE_COLOURS))
        e = r.get("e2e") or {}
        if e.get("status") == "ok":
            bars.append((f"(e2e) b={b}", {s: v / b for s, v in e["stages_mean_ms"].items()}, E2E_COLOURS))
    bottom = [0.0] * len(bars)
    labelled: set[str] = set()
    for i, (_, vals, colours) in enumerate(bars):
        for stage, colour in colours.items():
            v = vals.get(stage, 0.0)
            if v:
                name = stage if colours is STAGE_COLOURS else f"e2e {stage.replace('_', ' ')}"
                ax.bar(i, v, bottom=bottom[i], color=colour, label=None if name in labelled else name)
                labelled.add(name)
                bottom[i] += v
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=6, rotation=90)
    ax.set_ylabel("mean ms per tile")
    ax.set_title("Per-stage time per tile: backend-only and end-to-end")
    if labelled:
        ax.legend(fontsize=7)
    return _png(fig)
