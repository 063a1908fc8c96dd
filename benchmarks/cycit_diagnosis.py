"""Where CycIT's translation loses accuracy: its stage-2 classifier trained on different SAR-like source images.

Each variant trains CycIT's stage-2 classifier (same DANN + centre loss + AdaBN, same loop and config) on one fixed
SAR-like version of the labelled source-train images and prints its OA on target-test SAR. The images go in as the
loop's ``sar`` input, so the loop's random turns and flips apply to them (CycIT turns only the residual):

  mu           the translator's mean images
  resid        mu + the residual (real - mu) of a random translator pair
  resid-class  mu + the residual of a pair whose step-1 pseudo-label is the image's label (CycIT's translation,
               one draw; CycIT draws anew every epoch)
Diagnoses that read the source images' own SAR, which no method does (the data generator writes it, as SEN12MS):
  offset       mu + the real per-image level offset
  texture      the real SAR with the mean images' level
  ideal        the real SAR (a perfect translator)

Usage (a data set from `esccs data synth` and a run folder; the translator is trained there if missing):
  python benchmarks/cycit_diagnosis.py DATA RUN --seed S [--variants mu,resid,...] [--config configs/table_cpu.yaml]
Figures in docs/method.md (cycit) came from `--seed 100` plain and `--seed 101 --shift season+sensor` data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from esccs.train import run as R
from esccs.train import stages as st
from esccs.train.baselines import cycit as C
from esccs.train.baselines.unet import apply_net
from esccs.train.config import load_config
from esccs.train.methods import Context

VARIANTS = ("mu", "resid", "resid-class", "offset", "texture", "ideal")


def images(variant: str, mu: torch.Tensor, real: torch.Tensor, resid: torch.Tensor, pools: torch.Tensor,
           gen: torch.Generator) -> torch.Tensor:
    """One SAR-like version of the source images (see the module docstring)."""
    if variant == "mu":
        return mu
    if variant == "resid":
        return mu + resid[torch.randint(len(resid), (len(mu),), generator=gen)]
    if variant == "resid-class":
        return C.translate(mu, resid, pools, C.draw_choices(len(mu), pools.shape[1], mu.shape[-1] == mu.shape[-2],
                                                            gen))
    offset = (real - mu).mean((2, 3), keepdim=True)
    return {"offset": mu + offset, "texture": real - offset, "ideal": real}[variant]


def stats(x: torch.Tensor) -> dict:
    """Within-image std, spread of image means, and bright tail (99th percentile - median) per channel."""
    f = x.flatten(2)
    return {"within_std": [round(v, 3) for v in C.within_var(x).sqrt().tolist()],
            "offset_std": [round(v, 3) for v in x.mean((2, 3)).std(0).tolist()],
            "tail": [round(v, 3) for v in (f.quantile(0.99, 2) - f.median(2).values).mean(0).tolist()]}


def main() -> None:
    """Train the variants' classifiers and print their target-test OA and image statistics."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="configs/table_cpu.yaml")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    variants = a.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    cfg = load_config(a.config, {"data": a.data, "out": a.run, "seed": a.seed})
    src, tgt, test = R.load_banks(cfg, False)
    fit, held = R.split_target_train(cfg, tgt)
    ctx = Context(cfg, Path(a.run), src, fit, False, tval=held)
    translator = C.train_translator(ctx)
    s = src.where("train")
    gen = torch.Generator().manual_seed(a.seed)
    mu = apply_net(translator, s.optical)
    resid = C.residual_bank(translator, C.translator_pairs(ctx.tgt))
    pools = C.residual_pools(s.labels, C.pair_classes(ctx), C.POOL, gen)
    print("real source SAR", json.dumps(stats(s.sar)), flush=True)
    for v in variants:
        x = images(v, mu, s.sar, resid, pools, gen)
        data = {"sar": x, "target": s.labels, "sar_t": C.target_rows(ctx, len(x), gen)}
        clf, _ = C.fit_classifier(ctx, data, C.dann_step, Path(a.run) / "cycit_diagnosis" / v, f"diagnosis/{v}")
        oa = float((st.predict(clf, test.sar)["logits"].argmax(1) == test.labels).float().mean())
        print(f"{v:12s} target-test OA {100 * oa:5.1f} %  {json.dumps(stats(x))}", flush=True)


if __name__ == "__main__":
    main()
