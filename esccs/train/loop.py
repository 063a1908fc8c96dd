"""One small training loop shared by every stage and baseline.

SGD with momentum (backbone and head learning rates), warm-up + cosine schedule, gradient clipping, bf16 autocast on
CUDA, channels_last, per-epoch seeding (so a resumed run replays exactly the batches and augmentations it would have
seen), a progress bar with loss and accuracy, a CSV log (optional TensorBoard), a resumable state after every epoch
(``last.safetensors`` + ``last.json``), and the final checkpoint (``model.safetensors`` + ``model.json``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from esccs.errors import DataError
from esccs.io.atomic import atomic_path, write_json
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
                 area: tuple[float, float] = (0.05, 1.0)) -> torch.Tensor:
    """Erase one rectangle per sample with probability ``p``; fill each band with a value uniform in [lo, hi].

    Args:
        x: ``(B, C, H, W)`` normalised images (not modified).
        gen: the epoch's generator (resume replays the same rectangles).
        p: probability per sample.
        lo: ``(C,)`` lower end of each band's valid range in normalised units.
        hi: ``(C,)`` upper end.
        area: range of the erased fraction of the image.
    """
    x = x.clone()
    n, c, h, w = x.shape
    for i in range(n):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        a = float(torch.empty(1).uniform_(*area, generator=gen)) * h * w
        r = float(torch.empty(1).uniform_(0.3, 3.3, generator=gen))
        eh, ew = min(h, max(1, round((a * r) ** 0.5))), min(w, max(1, round((a / r) ** 0.5)))
        y0 = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
        fill = lo + (hi - lo) * torch.rand(c, generator=gen)
        x[i, :, y0:y0 + eh, x0:x0 + ew] = fill.view(c, 1, 1).to(x.dtype)
    return x


def augment(batch: dict, gen: torch.Generator, keys=("optical", "sar", "clear")) -> dict:
    """Random dihedral transform (rot90 x flip) per sample, the same for every image key of that sample."""
    n = len(next(iter(batch.values())))
    code = torch.randint(0, 8, (n,), generator=gen)
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
                 name: str, progress: bool = True, erase_range: tuple | None = None) -> None:
        self.model, self.data, self.step_fn, self.cfg = model, data, step_fn, cfg
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

    # -------------------------------------------------------------------------------------------- state on disk
    def _save_state(self, epoch: int) -> None:
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        for i, p in enumerate(p for g in self.opt.param_groups for p in g["params"]):
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"opt.{i}"] = buf.detach().cpu().contiguous()
        with atomic_path(self.dir / "last.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(self.dir / "last.json", {"epoch": epoch, "name": self.name, "epochs": self.cfg.epochs})

    def _load_state(self) -> int:
        """Restore ``last.*``; return the next epoch to run (0 when there is nothing to resume)."""
        meta, weights = self.dir / "last.json", self.dir / "last.safetensors"
        if not (meta.exists() and weights.exists()):
            return 0
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            epoch = int(json.loads(meta.read_text())["epoch"])
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
        log_path = self.dir / "log.csv"
        new_log = not log_path.exists() or start == 0
        with open(log_path, "w" if new_log else "a", newline="") as f:
            writer = csv.writer(f)
            if new_log:
                writer.writerow(["epoch", "loss", "acc", "lr", "seconds", "samples_per_s"])
            for epoch in range(start, self.cfg.epochs):
                row = self._epoch(epoch)
                writer.writerow([epoch, f"{row['loss']:.5f}", f"{row['acc']:.4f}", f"{row['lr']:.5f}",
                                 f"{row['seconds']:.2f}", f"{row['samples_per_s']:.1f}"])
                f.flush()
                self._save_state(epoch)
        return self.model.eval()

    def _epoch(self, epoch: int) -> dict:
        gen = seed_everything(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=gen)
        self.model.train()
        tot = {"loss": 0.0, "correct": 0, "seen": 0}
        t0 = time.perf_counter()
        from tqdm.auto import tqdm

        bar = tqdm(range(self.steps), desc=f"{self.name} {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=None if self.progress else True, unit="batch")  # None: off when piped
        for s in bar:
            idx = order[s * self.cfg.batch_size:(s + 1) * self.cfg.batch_size]
            batch = {k: v[idx] for k, v in self.data.items()}
            if self.cfg.augment:
                batch = augment(batch, gen)
            if self.cfg.erase_p > 0 and self.erase_range is not None and "optical" in batch:
                batch["optical"] = random_erase(batch["optical"], gen, self.cfg.erase_p, *self.erase_range,
                                                area=(0.05, self.cfg.erase_max))
            lr = self._set_lr(epoch, s)
            loss, logits, _ = self._step(batch)
            tot["loss"] += float(loss) * len(idx)
            tot["seen"] += len(idx)
            if logits is not None and "target" in batch:
                tot["correct"] += int((logits.argmax(1).cpu() == batch["target"]).sum())
            bar.set_postfix(loss=f"{tot['loss'] / tot['seen']:.3f}", acc=f"{tot['correct'] / tot['seen']:.3f}")
        dt = time.perf_counter() - t0
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
            loss, logits, extras = self.step_fn(self.model, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.opt.step()
        return loss.detach(), (logits.detach() if logits is not None else None), extras
