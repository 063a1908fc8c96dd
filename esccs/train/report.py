"""Reports over trained runs: the accuracy table (methods x cloud strata, mean and spread over runs) and plots.

Input: one or more run folders (``RUN/results/<method>.json``; a folder of ``seed*`` folders counts as its seeds).
Runs are grouped by data option (the data set's ``shift``); within a group each run is one (data seed, training
seed). Output: Markdown + JSON, and PNGs (accuracy vs cloud cover per method, IRM weights vs cover).

The comparison table of each data option has the methods, then the **oracle rows** (trained WITH target labels:
upper bounds, never methods), then the ablations; a **gap closed** column per method,
``(OA - OA_source-only) / (OA_oracle-dual - OA_source-only)`` overall and per stratum (means over the row's own
runs); and for
ESCCS against every other row the **paired difference with a 95 % bootstrap interval** (:mod:`esccs.train.stats`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from esccs.io.atomic import atomic_path, write_json, write_text
from esccs.metrics import COVERAGE_BINS

STRATA = ("clear", "partial", "complete")


def run_folders(runs: list[Path]) -> list[Path]:
    """The run folders below ``runs`` (a folder of ``seed*`` folders counts as its seeds)."""
    folders = []
    for r in runs:
        r = Path(r)
        seeds = sorted(p for p in r.glob("seed*") if (p / "results").is_dir())
        folders += seeds or [r]
    return folders


def collect(runs: list[Path]) -> dict[str, list[dict]]:
    """``{method: [results of each run]}`` from run folders; each result gets ``run`` = its folder."""
    out: dict[str, list[dict]] = {}
    for f in run_folders(runs):
        for p in sorted((f / "results").glob("*.json")):
            res = json.loads(p.read_text())
            res["run"] = str(f)
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


REFERENCE, ORACLE, FLOOR = "esccs", "oracle-dual", "source-only"
# the optical -> SAR transfers and the building block they contain (f_R, trained on step 1's pseudo-labels alone)
TRANSFERS, BLOCK = ("ttl", "cycit"), "sar-only"


def data_option(res: dict) -> str:
    """The data option a result belongs to: ``plain`` or the synthetic data set's shift (``season+sensor``, ...)."""
    shift = (res.get("data") or {}).get("shift") or "none"
    return "plain" if shift == "none" else f"shift {shift}"


def _correct(res: dict, stratum: str | None = None) -> np.ndarray:
    """0/1 correctness per test patch of a result (optionally of one stratum), in the order of ``ids``."""
    from esccs.spec import CLOUD_STRATA

    y = np.asarray(res["labels"]) if "labels" in res else None
    pred = np.asarray(res["pred"])
    if y is None:
        raise KeyError("result has no per-sample labels")
    ok = (pred == y).astype(np.float64)
    if stratum is None:
        return ok
    cov = np.asarray(res["coverage"], np.float64)
    lo, hi = next((a, b) for n, a, b in CLOUD_STRATA if n == stratum)
    return ok[(cov >= lo) & (cov < hi)]


def paired_rows(group: dict[str, list[dict]], reference: str = REFERENCE, n_boot: int = 2000) -> dict:
    """``{method: {"all"|stratum: interval}}``: reference minus method, paired by run and test patch."""
    from esccs.train.stats import paired_bootstrap

    if reference not in group:
        return {}
    ref = {r["run"]: r for r in group[reference] if "pred" in r}
    out = {}
    for method, results in group.items():
        if method == reference:
            continue
        pairs = [(ref[r["run"]], r) for r in results if r["run"] in ref and "pred" in r]
        pairs = [(a, b) for a, b in pairs if a["ids"] == b["ids"]]
        if not pairs:
            continue
        out[method] = {s: paired_bootstrap([(_correct(a, None if s == "all" else s),
                                             _correct(b, None if s == "all" else s)) for a, b in pairs],
                                           n_boot=n_boot, seed=0) for s in ("all", *STRATA)}
    return out


def gap_closed(row: dict, floor: dict, oracle: dict) -> dict:
    """``(OA - OA_floor) / (OA_oracle - OA_floor)`` overall and per stratum (None where the gap is not positive)."""
    out = {}
    for key in ("oa", *(f"oa:{s}" for s in STRATA)):
        gap = oracle[key][0] - floor[key][0]
        out[key] = (row[key][0] - floor[key][0]) / gap if gap > 1e-9 else None
    return out


def comparison(results: dict[str, list[dict]]) -> dict:
    """``{data option: {"table", "paired", "gap", "runs"}}`` over collected results."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for method, rs in results.items():
        for r in rs:
            groups.setdefault(data_option(r), {}).setdefault(method, []).append(r)
    out = {}
    for name, group in sorted(groups.items()):
        table = aggregate(group)
        for m, rs in group.items():
            table[m]["oracle"] = bool(rs[0].get("oracle")) or m.startswith("oracle-")
            table[m]["strata_mean"] = _stat([float(np.mean([r["strata"][s]["oa"] for s in STRATA]))
                                             for r in rs if all(s in r.get("strata", {}) for s in STRATA)])
        gaps = {}
        if FLOOR in table and ORACLE in table:
            for m in table:  # floor and oracle averaged over the same runs as the row (a row may have fewer runs)
                if table[m]["oracle"]:
                    continue
                runs = {r["run"] for r in group[m]}
                same = {k: [r for r in group[k] if r["run"] in runs] for k in (FLOOR, ORACLE)}
                if all(same.values()):
                    ref = aggregate(same)
                    gaps[m] = gap_closed(table[m], ref[FLOOR], ref[ORACLE])
        transfers = {m: paired_rows({m: group[m], BLOCK: group[BLOCK]}, reference=m).get(BLOCK)
                     for m in TRANSFERS if m in group and BLOCK in group}
        out[name] = {"table": table, "paired": paired_rows(group), "gap": gaps,
                     "transfers": {m: iv for m, iv in transfers.items() if iv},
                     "runs": sorted({r["run"] for rs in group.values() for r in rs})}
    return out


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.0f} %"


def _ci(iv: dict | None) -> str:
    if not iv or iv["runs"] == 0:
        return ""
    star = "" if iv["lo"] <= 0 <= iv["hi"] else " *"
    return f"{100 * iv['diff']:+.1f} [{100 * iv['lo']:+.1f}, {100 * iv['hi']:+.1f}]{star}"


def comparison_markdown(comp: dict, title: str = "Accuracy by cloud stratum", notes: str = "") -> str:
    """One section per data option: methods, oracle rows (upper bounds), ablations; gap closed; paired CIs."""
    lines = [f"# {title}", "", notes, ""]
    head = ("| row | runs | OA | OA clear | OA partial | OA complete | strata mean | gap closed (all / clear / partial "
            "/ complete) | ESCCS − row, OA points [95 % CI] | ... clear | ... partial | ... complete |")
    for name, sec in comp.items():
        t, paired, gaps = sec["table"], sec["paired"], sec["gap"]
        lines += [f"## {name} data ({len(sec['runs'])} runs)", "",
                  "OA in %, mean ± std over runs; `*` marks an interval that excludes zero (paired bootstrap "
                  "over test patches within each run, runs averaged).", "", head, "|" + "---|" * 12]
        parts = [("methods", [m for m in t if not t[m]["oracle"] and not m.startswith("ablation:")]),
                 ("upper bounds: trained WITH target labels (oracles, not methods)", [m for m in t if t[m]["oracle"]]),
                 ("ablations of ESCCS", [m for m in t if m.startswith("ablation:")])]
        for label, names in parts:
            if not names:
                continue
            lines.append(f"| **{label}** |" + " |" * 11)
            for m in sorted(names, key=lambda m: -t[m]["oa"][0]):
                r = t[m]
                g = gaps.get(m)
                gap = " / ".join(_pct(g[k]) for k in ("oa", *(f"oa:{s}" for s in STRATA))) if g else ""
                iv = paired.get(m, {})
                name_cell = f"{m} (oracle)" if r["oracle"] else (f"**{m}**" if m == REFERENCE else m)
                lines.append(f"| {name_cell} | {len(r['seeds'])} | {_cell(r['oa'])} | "
                             + " | ".join(_cell(r[f"oa:{s}"]) for s in STRATA) + f" | {_cell(r['strata_mean'])} | "
                             f"{gap} | {_ci(iv.get('all'))} | " + " | ".join(_ci(iv.get(s)) for s in STRATA) + " |")
        lines.append("")
        transfers = sec.get("transfers", {})
        if transfers:
            lines += [f"Optical -> SAR transfers against the building block they contain, `{BLOCK}` (row − {BLOCK}, "
                      "OA points [95 % CI], paired as above):", "",
                      "| row | runs | all | clear | partial | complete |", "|" + "---|" * 6]
            for m, iv in transfers.items():
                lines.append(f"| {m} | {iv['all']['runs']} | " + " | ".join(_ci(iv[s]) for s in ("all", *STRATA))
                             + " |")
            lines.append("")
        bins = [b[0] for b in COVERAGE_BINS]
        lines += ["OA by finer cloud-cover bin (%):", "", "| row | " + " | ".join(bins) + " |",
                  "|" + "---|" * (1 + len(bins))]
        for m in sorted(t, key=lambda m: -t[m]["oa"][0]):
            lines.append(f"| {m} | " + " | ".join(_cell(t[m][f"oa:{b}"]) for b in bins) + " |")
        irm = [m for m in t if "pi_sar" in t[m] and not m.startswith("ablation:")]
        if irm:
            lines += ["", "IRM diagnostics by cloud-cover bin: mean SAR teacher weight pi^R and mean SAR modality "
                      "weight w^s = 1 - w^o:", "", "| row | quantity | " + " | ".join(bins) + " |",
                      "|" + "---|" * (2 + len(bins))]
            for m in irm:
                lines.append(f"| {m} | pi^R | " + " | ".join(f"{t[m]['pi_sar'][b][0]:.2f}" for b in bins) + " |")
                if "w_o" in t[m]:
                    lines.append(f"| {m} | w^s | " + " | ".join(f"{1 - t[m]['w_o'][b][0]:.2f}" for b in bins)
                                 + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_table(runs: list[Path], out_md: Path, notes: str = "") -> dict:
    """Aggregate runs into ``out_md`` (+ ``.json`` and plots beside it); returns ``{data option: section}``."""
    comp = comparison(collect(runs))
    out_md = Path(out_md)
    write_text(out_md, comparison_markdown(comp, notes=notes))
    write_json(out_md.with_suffix(".json"), {k: {kk: vv for kk, vv in v.items()} for k, v in comp.items()})
    for name, sec in comp.items():
        slug = "" if name == "plain" else "_" + name.replace(" ", "_").replace("+", "_")
        plot_accuracy(sec["table"], out_md.with_name(out_md.stem + f"{slug}_by_cover.png"))
        plot_irm(sec["table"], out_md.with_name(out_md.stem + f"{slug}_irm.png"))
    return comp
