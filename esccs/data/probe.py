"""A quick probe of how much each modality tells about the class: per-band statistics + logistic regression.

Used to check that a data set is one where the transfer method matters: clear optical strongest, SAR weaker but
cloud-proof, cloudy optical falling as the cover grows. Pure numpy (no scikit-learn), a few seconds per probe.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from esccs.spec import S2_BANDS


def band_features(img: np.ndarray, log: bool = False) -> np.ndarray:
    """Per-band statistics of a ``(C, H, W)`` image -> ``(C * 6,)``: mean, std, p10, p50, p90, mean |gradient|."""
    x = np.log1p(np.maximum(img, 0)) if log else img
    flat = x.reshape(x.shape[0], -1)
    q = np.percentile(flat, [10, 50, 90], axis=1)
    grad = np.abs(np.diff(x, axis=-1)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=-2)).mean(axis=(1, 2))
    return np.concatenate([flat.mean(1), flat.std(1), *q, grad]).astype(np.float64)


def sar_features(sar_db: np.ndarray) -> np.ndarray:
    """SAR statistics ``(2, H, W)`` dB -> per-band stats plus bright-point fractions (double bounce)."""
    bright = [(sar_db[0] > t).mean() for t in (-5.0, 0.0)]
    return np.concatenate([band_features(sar_db), np.array(bright), [np.mean(sar_db[0] - sar_db[1])]])


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-3, steps: int = 600,
                 lr: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features by full-batch gradient descent with momentum.

    Returns:
        (weights (F, K), bias (K,), (mean, std) stacked (2, F)) for :func:`predict_logistic`.
    """
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros((z.shape[1], n_classes)), np.zeros(n_classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(n_classes)[y]
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        gw = z.T @ (p - onehot) / len(z) + l2 * w
        gb = (p - onehot).mean(0)
        vw, vb = 0.9 * vw - lr * gw, 0.9 * vb - lr * gb
        w, b = w + vw, b + vb
    return w, b, np.stack([mu, sd])


def predict_logistic(model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class predictions of a model from :func:`fit_logistic`."""
    w, b, (mu, sd) = model
    return np.argmax(((x - mu) / sd) @ w + b, axis=1)


def _read_features(root: Path, part: str, max_samples: int) -> dict:
    """Read the part once: clear, cloudy and SAR features, labels, splits and requested cloud levels."""
    from esccs.data import open_dataset

    clear = open_dataset(root, part=part, optical="s2", bands=S2_BANDS)
    cloudy = open_dataset(root, part=part, optical="s2_cloudy", bands=S2_BANDS)
    levels = _cloud_levels(Path(clear.root) / "clouds.csv")
    n = min(len(clear), max_samples)
    idx = np.random.default_rng(0).permutation(len(clear))[:n] if n < len(clear) else np.arange(n)
    feats: dict[str, list] = {"clear": [], "cloudy": [], "sar": [], "y": [], "split": [], "level": []}
    for i in idx:
        a, c = clear.read(int(i)), cloudy.read(int(i))
        feats["clear"].append(band_features(a["optical"], log=True))
        feats["cloudy"].append(band_features(c["optical"], log=True))
        feats["sar"].append(sar_features(a["sar"]))
        feats["y"].append(int(a["label"]))
        feats["split"].append(clear.samples[int(i)].split or "train")
        feats["level"].append(levels.get(a["id"], round(float(c.get("coverage", 0.0)), 2)))
    out = {k: np.asarray(v) for k, v in feats.items()}
    out["classes"] = list(clear.classes)
    return out


def _cloud_levels(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["id"]: float(row["level"]) for row in csv.DictReader(f)}


def run_probe(root: str | Path, part: str = "target", max_samples: int = 4000) -> dict:
    """Probe accuracy on held-out scenes for clear optical, cloudy optical, SAR and cloudy optical + SAR.

    Train on the part's ``train`` scenes, test on the others (``test`` / ``val``). Cloudy results are given per
    requested cloud level; ``clear->cloudy`` applies the clear-trained probe to cloudy images (what a source model
    trained on cloud-free optical faces).
    """
    f = _read_features(Path(root), part, max_samples)
    train, test = f["split"] == "train", f["split"] != "train"
    if not train.any() or not test.any():
        raise ValueError(f"{root}: the probe needs train and held-out scenes in part {part!r}")
    k = len(f["classes"])
    sets = {"clear optical": f["clear"], "cloudy optical": f["cloudy"], "SAR": f["sar"],
            "cloudy optical + SAR": np.hstack([f["cloudy"], f["sar"]]), "clear optical + SAR": np.hstack([f["clear"],
                                                                                                         f["sar"]])}
    result: dict = {"root": str(root), "part": part, "train": int(train.sum()), "test": int(test.sum()),
                    "chance": round(float(np.bincount(f["y"][test], minlength=k).max() / test.sum()), 4),
                    "accuracy": {}, "by_level": {}}
    models = {}
    for name, x in sets.items():
        models[name] = fit_logistic(x[train], f["y"][train], k)
        pred = predict_logistic(models[name], x[test])
        result["accuracy"][name] = round(float((pred == f["y"][test]).mean()), 4)
        if name.startswith("cloudy") or name == "SAR":
            result["by_level"][name] = _by_level(pred, f["y"][test], f["level"][test])
    pred = predict_logistic(models["clear optical"], f["cloudy"][test])
    result["by_level"]["clear-trained on cloudy"] = _by_level(pred, f["y"][test], f["level"][test])
    return result


def _by_level(pred: np.ndarray, y: np.ndarray, level: np.ndarray) -> dict[str, float]:
    return {f"{lvl:g}": round(float((pred[level == lvl] == y[level == lvl]).mean()), 4) for lvl in np.unique(level)}


def format_probe(result: dict) -> str:
    """A plain-text table of a probe result."""
    lines = [f"probe on {result['root']} [{result['part']}]: train {result['train']}, test {result['test']} "
             f"(held-out scenes), majority class {result['chance']:.2f}"]
    for name, acc in result["accuracy"].items():
        lines.append(f"  {name:28s} {acc:.3f}")
    levels = sorted({lvl for v in result["by_level"].values() for lvl in v}, key=float)
    lines.append("  by cloud level:             " + " ".join(f"{lvl:>6s}" for lvl in levels))
    for name, by in result["by_level"].items():
        lines.append(f"  {name:28s}" + " ".join(f"{by.get(lvl, float('nan')):6.3f}" for lvl in levels))
    return "\n".join(lines)
