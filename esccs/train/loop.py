"""One small training loop shared by every stage and baseline.

SGD with momentum (backbone and head learning rates), warm-up + cosine schedule, gradient clipping, bf16 autocast on
CUDA, channels_last, per-epoch seeding (so a resumed run replays exactly the batches and augmentations it would have
seen), a progress bar with loss and accuracy, a CSV log (optional TensorBoard), a resumable state after every epoch
(``last.safetensors`` + ``last.json``), and the final checkpoint (``model.safetensors`` + ``model.json``).

Checkpoint selection (``LoopConfig.select``): after every epoch the model is scored on the stage's validation data
(the same step function in eval mode, no augmentation; the validation ``target`` is the true label for the source
stage, the stage's own pseudo-label for target stages). ``val-loss`` (the default) keeps the epoch of lowest loss,
``val`` the most accurate one (ties broken by the lower loss); the best epoch's weights (``best.safetensors``, kept
across a resume) become the stage's model.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from esccs.errors import DataError
from esccs.io.atomic import atomic_path, write_json
from esccs.train import distributed as ddp
from esccs.train.config import LoopConfig

StepFn = Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor | None, dict]]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (and return a CPU generator for shuffling) so a run is reproducible."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_at(cfg: LoopConfig, epoch: int, step: int, steps: int) -> float:
    """Multiplier of the base learning rates: linear warm-up, then cosine decay to zero."""
    t = epoch + step / max(steps, 1)
    if t < cfg.warmup_epochs:
        return (t + 1 / max(steps, 1)) / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return 0.5 * (1 + math.cos(math.pi * min((t - cfg.warmup_epochs) / span, 1.0)))


def make_optimizer(model: nn.Module, cfg: LoopConfig) -> torch.optim.SGD:
    """SGD with two groups: the classification head(s) at ``lr_head``, everything else at ``lr``."""
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.split(".")[0] in ("head", "fc") else body).append(p)
    groups = [{"params": body, "lr": cfg.lr, "base_lr": cfg.lr}, {"params": head, "lr": cfg.lr_head,
                                                                   "base_lr": cfg.lr_head}]
    return torch.optim.SGD([g for g in groups if g["params"]], momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def random_erase(x: torch.Tensor, gen: torch.Generator, p: float, lo: torch.Tensor, hi: torch.Tensor,
                 area: tuple[float, float] = (0.05, 1.0), part: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Erase one rectangle per sample with probability ``p``; fill each band with a value uniform in [lo, hi].

    Vectorised over the batch: area fraction uniform in ``area``, aspect ratio uniform in [0.3, 3.3], position
    uniform among the positions where the rectangle fits.

    Args:
        x: ``(B, C, H, W)`` normalised images (not modified).
        gen: the epoch's generator (resume replays the same rectangles).
        p: probability per sample.
        lo: ``(C,)`` lower end of each band's valid range in normalised units.
        hi: ``(C,)`` upper end.
        area: range of the erased fraction of the image.
        part: ``(start, stop, total)``: ``x`` holds rows ``start:stop`` of a global batch of ``total`` (one rank's
            share); the draws are made for the whole batch, so each row gets what it gets in one process.
    """
    n, c, h, w = x.shape
    if part is not None:
        n = part[2]
    apply = torch.rand(n, generator=gen) < p
    a = torch.empty(n).uniform_(*area, generator=gen) * h * w
    r = torch.empty(n).uniform_(0.3, 3.3, generator=gen)
    eh = (a * r).sqrt().round().clamp(1, h).long()
    ew = (a / r).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=gen) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=gen) * (w - ew + 1)).long()
    fill = lo + (hi - lo) * torch.rand(n, c, generator=gen)
    if part is not None:
        apply, eh, ew, y0, x0, fill = (t[part[0]:part[1]] for t in (apply, eh, ew, y0, x0, fill))
    rows, cols = torch.arange(h), torch.arange(w)
    in_r = (rows[None] >= y0[:, None]) & (rows[None] < (y0 + eh)[:, None])  # (n, h)
    in_c = (cols[None] >= x0[:, None]) & (cols[None] < (x0 + ew)[:, None])  # (n, w)
    mask = (in_r[:, :, None] & in_c[:, None, :] & apply[:, None, None])[:, None]  # (n, 1, h, w)
    return torch.where(mask.to(x.device), fill.to(x.dtype).to(x.device)[:, :, None, None], x)


def augment(batch: dict, gen: torch.Generator, keys=("optical", "sar", "clear"),
            part: tuple[int, int, int] | None = None) -> dict:
    """Random dihedral transform (rot90 x flip) per sample, the same for every image key of that sample.

    ``part = (start, stop, total)``: the batch is rows ``start:stop`` of a global batch of ``total`` (one rank's
    share); the codes are drawn for the whole batch and sliced.
    """
    n = len(next(iter(batch.values()))) if part is None else part[2]
    code = torch.randint(0, 8, (n,), generator=gen)
    if part is not None:
        code = code[part[0]:part[1]]
    out = dict(batch)
    for key in keys:
        if key not in batch or batch[key] is None:
            continue
        x = batch[key].clone()
        for c in range(8):
            m = code == c
            if m.any():
                y = torch.rot90(batch[key][m], c % 4, dims=(-2, -1))
                x[m] = torch.flip(y, dims=(-1,)) if c >= 4 else y
        out[key] = x
    return out


class Trainer:
    """Trains ``model`` with ``step_fn`` over ``data`` (a dict of equally long tensors) into ``out_dir``."""

    def __init__(self, model: nn.Module, data: dict, step_fn: StepFn, cfg: LoopConfig, out_dir: Path,
                 name: str, progress: bool = True, erase_range: tuple | None = None, val: dict | None = None) -> None:
        self.model, self.data, self.step_fn, self.cfg = model, data, step_fn, cfg
        self.val = val if (val and cfg.select != "last" and len(next(iter(val.values()))) > 0) else None
        self.best: dict = {"epoch": -1, "acc": -1.0, "loss": math.inf}
        self.erase_range = erase_range
        self.dir, self.name, self.progress = Path(out_dir), name, progress
        self.device = torch.device(cfg.device)
        # channels_last pays off on CUDA tensor cores; on CPU it brings no speed here, and oneDNN's channels_last
        # convolution backward corrupted the heap at odd batch sizes under TRITON_INTERPRET=1 (seen in our tests).
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.n = len(next(iter(data.values())))
        if self.n == 0:
            raise DataError(out_dir, f"{name}: no training samples")
        self.steps = max(1, self.n // cfg.batch_size)
        self.opt = make_optimizer(model, cfg)
        # data-parallel (torchrun): self.net is the DDP-wrapped model while fit() runs; each rank trains on its
        # rows of every global batch (ddp.batch_part refuses a batch smaller than the number of ranks)
        self.net, self.world, self.loss_weight = model, ddp.world(), None
        if self.world > 1:
            ddp.batch_part(min(cfg.batch_size, self.n))

    # -------------------------------------------------------------------------------------------- state on disk
    def _save_state(self, epoch: int) -> None:
        if not ddp.is_main():
            return
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        for i, p in enumerate(p for g in self.opt.param_groups for p in g["params"]):
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"opt.{i}"] = buf.detach().cpu().contiguous()
        with atomic_path(self.dir / "last.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(self.dir / "last.json", {"epoch": epoch, "name": self.name, "epochs": self.cfg.epochs,
                                            "best": self.best})

    def _load_state(self) -> int:
        """Restore ``last.*``; return the next epoch to run (0 when there is nothing to resume)."""
        meta, weights = self.dir / "last.json", self.dir / "last.safetensors"
        if not (meta.exists() and weights.exists()):
            return 0
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            info = json.loads(meta.read_text())
            epoch = int(info["epoch"])
            self.best = dict(info.get("best") or self.best)
            tensors = load_file(str(weights))
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise DataError(weights, f"cannot resume: corrupted training state ({str(e).splitlines()[0][:100]}); "
                                     "delete it to restart this stage") from None
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            why = str(e).splitlines()[0]
            raise DataError(weights, f"cannot resume: state does not fit this model ({why})") from None
        for i, p in enumerate(p for g in self.opt.param_groups for p in g["params"]):
            if f"opt.{i}" in tensors:
                self.opt.state[p]["momentum_buffer"] = tensors[f"opt.{i}"].to(p.device)
        return epoch + 1

    # -------------------------------------------------------------------------------------------------- training
    def fit(self) -> nn.Module:
        """Run the remaining epochs; returns the trained model (in eval mode)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        start = self._load_state()
        self.net = ddp.wrap(self.model, self.device)  # one process: the model itself
        if self.net is not self.model:
            self.model = self.net.module  # SyncBatchNorm (CUDA) replaced layers: the module DDP trains
            if ddp.is_main():
                print(f"  {self.name}: {ddp.describe(self.cfg.batch_size, self.model, self.device)}", flush=True)
        log_path = self.dir / "log.csv"
        new_log = not log_path.exists() or start == 0
        main = ddp.is_main()  # only rank 0 writes the log and the state; the others wait at its barrier
        with (open(log_path, "w" if new_log else "a", newline="") if main else open(os.devnull, "w")) as f:
            writer = csv.writer(f)
            if new_log:
                writer.writerow(["epoch", "loss", "acc", "lr", "seconds", "samples_per_s", "val_loss", "val_acc"])
            for epoch in range(start, self.cfg.epochs):
                ddp.fault_point(self.name, epoch)
                row = self._epoch(epoch)
                v = self._validate(epoch)
                writer.writerow([epoch, f"{row['loss']:.5f}", f"{row['acc']:.4f}", f"{row['lr']:.5f}",
                                 f"{row['seconds']:.2f}", f"{row['samples_per_s']:.1f}",
                                 "" if v is None else f"{v['loss']:.5f}", "" if v is None else f"{v['acc']:.4f}"])
                f.flush()
                self._save_state(epoch)
                ddp.barrier()
        self.model = ddp.unwrap(self.net)
        self.net = self.model
        if self.val is not None and (self.dir / "best.safetensors").exists():
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(self.dir / "best.safetensors")))
        return self.model.eval()

    def summary(self) -> dict:
        """What the stage did: epochs, SGD steps, the selected epoch and its validation scores (for model.json)."""
        last = self.cfg.epochs - 1
        sel = self.best["epoch"] if self.val is not None and self.best["epoch"] >= 0 else last
        return {"epochs": self.cfg.epochs, "steps": self.cfg.epochs * self.steps, "selected_epoch": sel,
                "select": self.cfg.select if self.val is not None else "last",
                "val_acc": self.best["acc"] if self.val is not None else None,
                "val_loss": self.best["loss"] if self.val is not None else None,
                "n_train": self.n, "n_val": 0 if self.val is None else len(next(iter(self.val.values())))}

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict | None:
        """Score the model on the validation data; keep its weights when they are the best so far."""
        if self.val is None:
            return None
        self.model.eval()
        n = len(next(iter(self.val.values())))
        loss_sum, correct = 0.0, 0
        has_target = "target" in self.val
        lo, hi = ddp.shard_range(n)  # this rank's block of the validation rows (all of them in one process)
        for s in range(lo, hi, 256):
            batch = {k: v[s:min(s + 256, hi)].to(self.device) if torch.is_tensor(v) else v
                     for k, v in self.val.items()}
            amp = self.cfg.amp and self.device.type == "cuda"
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                loss, logits, _ = self.step_fn(self.model, batch)
            m = len(next(iter(batch.values())))
            loss_sum += float(loss) * m
            if has_target and logits is not None:
                correct += int((logits.argmax(1) == batch["target"]).sum())
        if self.world > 1:
            loss_sum, correct = ddp.all_sum([loss_sum, correct])
        v = {"loss": loss_sum / n, "acc": correct / n if has_target else 0.0}
        key = (lambda b: -b["loss"]) if self.cfg.select == "val-loss" else (lambda b: (b["acc"], -b["loss"]))
        if key(v) > key(self.best):
            self.best = {"epoch": epoch, **v}
            from safetensors.torch import save_file

            if ddp.is_main():  # the barrier after the epoch's state orders it before any read
                with atomic_path(self.dir / "best.safetensors") as tmp:
                    save_file({k: t.detach().cpu().contiguous() for k, t in self.model.state_dict().items()},
                              str(tmp))
        return v

    def _epoch(self, epoch: int) -> dict:
        gen = seed_everything(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=gen)
        self.model.train()
        tot = {"loss": 0.0, "correct": 0, "seen": 0}
        t0 = time.perf_counter()
        from tqdm.auto import tqdm

        bar = tqdm(range(self.steps), desc=f"{self.name} {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=None if self.progress and ddp.is_main() else True, unit="batch")  # None: off when piped
        part = None
        for s in bar:
            idx = order[s * self.cfg.batch_size:(s + 1) * self.cfg.batch_size]
            if self.world > 1:  # this rank's slice of the global batch; augmentation drawn for all of it
                a, b = ddp.batch_part(len(idx))
                part, share = (a, b, len(idx)), (b - a) * self.world / len(idx)
                self.loss_weight = None if share == 1.0 else share
                idx = idx[a:b]
            batch = {k: v[idx] for k, v in self.data.items()}
            if self.cfg.augment:
                batch = augment(batch, gen, part=part)
            if self.cfg.erase_p > 0 and self.erase_range is not None and "optical" in batch:
                batch["optical"] = random_erase(batch["optical"], gen, self.cfg.erase_p, *self.erase_range,
                                                area=(0.05, self.cfg.erase_max), part=part)
            lr = self._set_lr(epoch, s)
            loss, logits, _ = self._step(batch)
            tot["loss"] += float(loss) * len(idx)
            tot["seen"] += len(idx)
            if logits is not None and "target" in batch:
                tot["correct"] += int((logits.argmax(1).cpu() == batch["target"]).sum())
            bar.set_postfix(loss=f"{tot['loss'] / tot['seen']:.3f}", acc=f"{tot['correct'] / tot['seen']:.3f}")
        dt = time.perf_counter() - t0
        if self.world > 1:  # the epoch's figures over every rank's rows
            tot["loss"], tot["correct"], tot["seen"] = ddp.all_sum([tot["loss"], tot["correct"], tot["seen"]])
            tot["correct"], tot["seen"] = int(tot["correct"]), int(tot["seen"])
        return {"loss": tot["loss"] / tot["seen"], "acc": tot["correct"] / tot["seen"], "lr": lr, "seconds": dt,
                "samples_per_s": tot["seen"] / dt}

    def _set_lr(self, epoch: int, step: int) -> float:
        mult = lr_at(self.cfg, epoch, step, self.steps)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * mult
        return self.opt.param_groups[0]["lr"]

    def _step(self, batch: dict):
        batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if self.channels_last:
            batch = {k: (v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4
                         else v) for k, v in batch.items()}
        amp = self.cfg.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logits, extras = self.step_fn(self.net, batch)
        self.opt.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients; an uneven share of the global batch weighs as many rows as it holds
        (loss if self.loss_weight is None else loss * self.loss_weight).backward()
        if self.cfg.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.opt.step()
        return loss.detach(), (logits.detach() if logits is not None else None), extras
