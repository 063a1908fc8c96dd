"""Quick-look PNG grids of samples: people look at remote-sensing data before they trust it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esccs._deps import lazy_import
from esccs.io.atomic import atomic_path
from esccs.spec import S2_RGB_BANDS

#: Cloud-mask colours: clear transparent-grey, thick white, thin light blue, shadow dark purple.
MASK_COLOURS = np.array([[40, 40, 40], [255, 255, 255], [140, 190, 255], [90, 40, 120]], np.uint8)


def true_colour(rgb: np.ndarray, lo: float = 0.0, hi: float = 3000.0) -> np.ndarray:
    """L1C DN ``(3, H, W)`` (B04, B03, B02) -> ``(H, W, 3)`` float in [0, 1] with a fixed stretch and gamma.

    A fixed stretch (not per-image percentiles) keeps clouds white and shows how they hide the ground.
    """
    return np.clip((rgb.transpose(1, 2, 0) - lo) / (hi - lo), 0, 1) ** (1 / 1.6)


def sar_false_colour(sar_db: np.ndarray) -> np.ndarray:
    """S1 dB ``(2, H, W)`` -> ``(H, W, 3)``: R = VV, G = VH, B = VV - VH, each stretched to a fixed range."""
    vv, vh = sar_db
    r = np.clip((vv + 25) / 25, 0, 1)
    g = np.clip((vh + 32) / 27, 0, 1)
    b = np.clip((vv - vh) / 15, 0, 1)
    return np.stack([r, g, b], -1)


def quicklook(root: str | Path, out: str | Path, part: str | None = "target", n: int = 6, seed: int = 0) -> Path:
    """Write a PNG grid (one row per sample) and return its path.

    Columns: true-colour clear S2, true-colour cloudy S2, SAR false colour, cloud mask; the title of each row gives
    the label and the cloud cover. A source part (no clouds) shows the clear image and SAR only.
    """
    plt = _pyplot()
    from esccs.data import open_dataset

    clear = open_dataset(root, part=part, optical="s2", bands=S2_RGB_BANDS)
    cloudy = None
    if any("s2_cloudy" in s.paths for s in clear.samples[:1]):
        cloudy = open_dataset(root, part=part, optical="s2_cloudy", bands=S2_RGB_BANDS)
    picks = _pick(clear, cloudy, n, seed)
    cols = ["clear S2 (B04,B03,B02)", "SAR (VV,VH,VV-VH)"]
    if cloudy is not None:
        cols[1:1] = ["cloudy S2"]
        cols.append("cloud mask")
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.3 * len(cols), 2.3 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        s = clear.read(i)
        panels = [true_colour(s["optical"])]
        if cloudy is not None:
            c = cloudy.read(i)
            panels += [true_colour(c["optical"]), sar_false_colour(s["sar"]), MASK_COLOURS[c["cloud_mask"]]]
        else:
            panels.append(sar_false_colour(s["sar"]))
        label = clear.classes[s["label"]] if "label" in s and np.ndim(s["label"]) == 0 else "unlabelled"
        cover = f", cloud {100 * c['coverage']:.0f}%" if cloudy is not None and "coverage" in c else ""
        for col, img in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[col], fontsize=8)
        axes[row][0].set_ylabel(f"{label}{cover}", fontsize=8)
    fig.suptitle(f"{Path(root).name}/{part or ''}: {len(clear)} samples", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def _pick(clear, cloudy, n: int, seed: int) -> list[int]:
    """A seeded pick of ``n`` samples; with clouds, spread evenly from the clearest to the cloudiest candidate."""
    rng = np.random.default_rng(seed)
    candidates = rng.permutation(len(clear))[: n * 8].tolist()
    if cloudy is None or len(candidates) <= n:
        return sorted(candidates[:n])
    cover = sorted(candidates, key=lambda i: cloudy.read(i).get("coverage", 0.0))
    return [cover[round(k * (len(cover) - 1) / max(n - 1, 1))] for k in range(n)]


def _pyplot():
    mpl = lazy_import("matplotlib", "quick-look pictures")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt
