"""Reports over trained runs: the accuracy table (methods x cloud strata, mean and spread over seeds) and plots.

Input: one or more run folders (``RUN/results/<method>.json``, one folder per seed). Output: Markdown + JSON, and
PNGs (accuracy vs cloud cover per method, IRM weights vs cover, confusion matrix of one method).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from esccs.io.atomic import atomic_path, write_json, write_text
from esccs.metrics import COVERAGE_BINS

STRATA = ("clear", "partial", "complete")


def collect(runs: list[Path]) -> dict[str, list[dict]]:
    """``{method: [results of each seed]}`` from run folders (a folder of ``seed*`` folders counts as its seeds)."""
    folders = []
    for r in runs:
        r = Path(r)
        seeds = sorted(p for p in r.glob("seed*") if (p / "results").is_dir())
        folders += seeds or [r]
    out: dict[str, list[dict]] = {}
    for f in folders:
        for p in sorted((f / "results").glob("*.json")):
            res = json.loads(p.read_text())
            out.setdefault(res["method"], []).append(res)
    if not out:
        raise FileNotFoundError(f"no results/*.json under {', '.join(map(str, runs))}")
    return out


def _stat(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and not np.isnan(x)], np.float64)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else (float("nan"), 0.0)


def aggregate(results: dict[str, list[dict]]) -> dict:
    """Mean and standard deviation over seeds of OA and macro F1, overall, per stratum and per coverage bin."""
    table = {}
    for method, runs in results.items():
        row = {"seeds": sorted(r.get("seed", 0) for r in runs)}
        for key in ("oa", "macro_f1", "kappa"):
            row[key] = _stat([r["overall"][key] for r in runs])
            for group in ("strata", "bins"):
                names = STRATA if group == "strata" else [b[0] for b in COVERAGE_BINS]
                for s in names:
                    row[f"{key}:{s}"] = _stat([r.get(group, {}).get(s, {}).get(key, float("nan")) for r in runs])
        diag = [r.get("diagnostics", {}) for r in runs]
        for name in ("w_o", "acc_o", "acc_s"):
            if all(name in d for d in diag):
                row[name] = {b[0]: _stat([d[name].get(b[0], float("nan")) for d in diag]) for b in COVERAGE_BINS}
        if all("pi" in d for d in diag):
            row["pi_sar"] = {b[0]: _stat([d["pi"].get(b[0], [np.nan] * 3)[2] for d in diag]) for b in COVERAGE_BINS}
        table[method] = row
    return table


def _cell(stat: tuple[float, float]) -> str:
    m, s = stat
    return "n/a" if np.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


def markdown(table: dict, title: str = "Accuracy by cloud stratum", notes: str = "") -> str:
    """The comparison table: methods x (overall, clear, partial, complete), OA and macro F1 in %, mean ± std."""
    head = "| method | seeds | OA | macro F1 | " + " | ".join(f"OA {s}" for s in STRATA) + " | " + \
        " | ".join(f"F1 {s}" for s in STRATA) + " |"
    lines = [f"# {title}", "", notes, "", head, "|" + "---|" * (4 + 2 * len(STRATA))]
    order = sorted(table, key=lambda m: -table[m]["oa"][0])
    for m in order:
        r = table[m]
        cells = [_cell(r["oa"]), _cell(r["macro_f1"])] + [_cell(r[f"oa:{s}"]) for s in STRATA] + \
            [_cell(r[f"macro_f1:{s}"]) for s in STRATA]
        lines.append(f"| {m} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    bins = [b[0] for b in COVERAGE_BINS]
    lines += ["", "OA by finer cloud-cover bin (%):", "", "| method | " + " | ".join(bins) + " |",
              "|" + "---|" * (1 + len(bins))]
    for m in order:
        lines.append(f"| {m} | " + " | ".join(_cell(table[m][f"oa:{b}"]) for b in bins) + " |")
    irm = [m for m in order if "pi_sar" in table[m]]
    if irm:
        lines += ["", "IRM diagnostics of the dual models by cloud-cover bin: mean SAR teacher weight pi^R and "
                  "mean SAR modality weight w^s = 1 - w^o:", "", "| method | quantity | " + " | ".join(bins) + " |",
                  "|" + "---|" * (2 + len(bins))]
        for m in irm:
            lines.append(f"| {m} | pi^R | " + " | ".join(f"{table[m]['pi_sar'][b][0]:.2f}" for b in bins) + " |")
            if "w_o" in table[m]:
                lines.append(f"| {m} | w^s | " + " | ".join(f"{1 - table[m]['w_o'][b][0]:.2f}" for b in bins) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(table: dict, out: Path) -> Path:
    """Accuracy vs cloud-cover bin, one line per method (mean over seeds, bars = std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b[0] for b in COVERAGE_BINS]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    groups = {"methods": [m for m in table if not m.startswith("ablation:")],
              "ESCCS ablations": ["esccs"] + [m for m in table if m.startswith("ablation:")]}
    colors = plt.get_cmap("tab20").colors
    for ax, (title, names) in zip(axes, groups.items()):
        for k, m in enumerate(sorted(names, key=lambda m: -table[m]["oa"][0])):
            mean = [100 * table[m][f"oa:{b}"][0] for b in bins]
            std = [100 * table[m][f"oa:{b}"][1] for b in bins]
            ax.errorbar(range(len(bins)), mean, yerr=std, marker="os^Dv<>"[k % 7], capsize=2,
                        lw=2.6 if m == "esccs" else 1, color="black" if m == "esccs" else colors[k % len(colors)],
                        label=m.replace("ablation:", ""))
        ax.set_xticks(range(len(bins)), bins)
        ax.set_xlabel("cloud cover of the target patch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("overall accuracy (%), mean ± std over seeds")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)


def plot_irm(table: dict, out: Path, method: str = "esccs") -> Path | None:
    """IRM weights vs cloud cover for one method: pi^R (SAR teacher weight) and w^s (SAR modality weight)."""
    if method not in table or "pi_sar" not in table[method]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b[0] for b in COVERAGE_BINS]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(bins, [table[method]["pi_sar"][b][0] for b in bins], marker="o", label="pi^R (SAR teacher weight)")
    if "w_o" in table[method]:
        ax.plot(bins, [1 - table[method]["w_o"][b][0] for b in bins], marker="s", label="w^s (SAR modality weight)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("cloud cover")
    ax.set_title(f"{method}: IRM weights move toward SAR as clouds grow")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)


def plot_confusion(res: dict, out: Path) -> Path:
    """Confusion matrix (row-normalised) of one evaluation result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(res["overall"]["confusion"], np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    classes = res.get("classes", [str(i) for i in range(len(cm))])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{res.get('method', '')}: OA {100 * res['overall']['oa']:.1f} %")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)


def write_table(runs: list[Path], out_md: Path, notes: str = "") -> dict:
    """Aggregate runs into ``out_md`` (+ ``.json`` and plots beside it); returns the table."""
    table = aggregate(collect(runs))
    out_md = Path(out_md)
    write_text(out_md, markdown(table, notes=notes))
    write_json(out_md.with_suffix(".json"), table)
    plot_accuracy(table, out_md.with_name(out_md.stem + "_by_cover.png"))
    plot_irm(table, out_md.with_name(out_md.stem + "_irm.png"))
    return table
