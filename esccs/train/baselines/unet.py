"""Shared pieces of the baselines: a small U-Net, SSIM, and train-or-load for networks outside the model registry.

The SPL cloud-removal net, the CycIT translator and the GDL network are not registered architectures (the registry
in :mod:`esccs.models.factory` is for classifiers and dual targets), so :func:`train_or_load` saves their weights
itself: ``<folder>/net.safetensors`` (weights, written first) + ``<folder>/net.json`` (config; written last, so
its presence marks a finished stage). A stage whose two files exist is loaded instead of trained, like
:func:`esccs.train.stages.run_stage`; an interrupted one resumes from the loop's ``last.*`` state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from esccs.errors import DataError
from esccs.io.atomic import atomic_path, write_json
from esccs.train import distributed as ddp
from esccs.train.config import LoopConfig
from esccs.train.loop import Trainer

WEIGHTS, META = "net.safetensors", "net.json"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class UNet(nn.Module):
    """A two-level U-Net ``(B, c_in, H, W) -> (B, c_out, H, W)`` for any ``H, W >= 4``.

    Args:
        c_in: input channels.
        c_out: output channels.
        width: channels of the first level (doubled per level).
        residual: add the input to the output (needs ``c_in == c_out``): the net learns a correction, so clear
            pixels pass through unchanged from the start (cloud removal).
    """

    def __init__(self, c_in: int, c_out: int, width: int = 16, residual: bool = False) -> None:
        super().__init__()
        if residual and c_in != c_out:
            raise ValueError(f"a residual U-Net needs c_in == c_out, got {c_in} and {c_out}")
        w = width
        self.residual = residual
        self.enc1, self.enc2, self.mid = _block(c_in, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.dec2, self.dec1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.out = nn.Conv2d(w, c_out, 1)
        if residual:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` to the output image of the same size."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        y = self.out(d1)
        return x + y if self.residual else y


def _gauss_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float | None = None, window: int = 7,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of two ``(B, C, H, W)`` batches, Gaussian window, no padding.

    Args:
        x: images (the prediction).
        y: reference images.
        data_range: the value range ``L`` in ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``; default ``max(y) - min(y)``
            of the batch (normalised images have no fixed range).
        window: Gaussian window size (clipped to the image size).
        sigma: Gaussian window standard deviation.

    Returns:
        A scalar, 1 for identical images.
    """
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    with torch.autocast(x.device.type, enabled=False):  # variances need float32, also under bf16 autocast
        x, y = x.float(), y.float()
        if data_range is None:
            data_range = float((y.amax() - y.amin()).clamp_min(1e-6))
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        w = _gauss_window(window, sigma, c, x)
        mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
        sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
        syy = F.conv2d(y * y, w, groups=c) - mu_y**2
        sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
        den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
        return (num / den).mean()


@torch.no_grad()
def apply_net(net: nn.Module, x: torch.Tensor, batch: int = 256, device: str = "cpu") -> torch.Tensor:
    """Run an image-to-image net in eval mode over ``x`` in batches; returns a CPU tensor.

    Under torchrun each rank runs its block of the rows and all get every row back, in order.
    """
    net.eval().to(device)
    lo, hi = ddp.shard_range(len(x))
    x = x[lo:hi] if ddp.active() else x
    y = torch.cat([net(x[s:s + batch].to(device)).float().cpu() for s in range(0, max(len(x), 1), batch)])
    return ddp.gather_rows({"y": y})["y"]


def is_saved(folder: Path) -> bool:
    """Whether :func:`train_or_load` finished a stage in ``folder``."""
    return (Path(folder) / WEIGHTS).exists() and (Path(folder) / META).exists()


def save_net(folder: Path, net: nn.Module, config: dict) -> None:
    """Save ``net``'s weights and a JSON config, atomically (weights first, the JSON marks completion)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(Path(folder) / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(Path(folder) / META, {"format": "esccs-baseline-net", "config": config})


def load_net(folder: Path, net: nn.Module, config: dict) -> nn.Module:
    """Load weights saved by :func:`save_net` into ``net`` (built from the same ``config``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    saved = json.loads((folder / META).read_text()).get("config")
    if saved != json.loads(json.dumps(config)):
        raise DataError(folder / META, f"saved with another configuration ({saved}); delete the folder to retrain")
    try:
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(folder / WEIGHTS, f"cannot load ({str(e).splitlines()[0][:120]})") from None
    return net


def train_or_load(folder: Path, build: Callable[[], nn.Module], data: dict, step, loop: LoopConfig,
                  config: dict, progress: bool = True, trainer: type[Trainer] = Trainer, **kw) -> nn.Module:
    """Build a net after seeding, then load it from ``folder`` if saved there, else train it and save it.

    Args:
        folder: the stage folder (``RUN/<method>/<part>``).
        build: makes the fresh net (seeded with ``loop.seed`` first, so the init is reproducible).
        data: the training tensors for :class:`~esccs.train.loop.Trainer`.
        step: the loop's step function.
        loop: loop settings.
        config: JSON-ready description of the net, saved beside it and checked on load.
        progress: show progress bars.
        trainer: the trainer class (a subclass may change the data per epoch).
        **kw: more keyword arguments of ``trainer``.

    Returns:
        The net in eval mode on ``loop.device``.
    """
    folder = Path(folder)
    torch.manual_seed(loop.seed)
    net = build()
    if is_saved(folder):
        return load_net(folder, net, config).to(loop.device).eval()
    net = trainer(net, data, step, loop, folder, folder.parent.name + "/" + folder.name, progress, **kw).fit()
    ddp.on_main(save_net, folder, net.cpu(), config)  # torchrun: rank 0 writes, the others wait
    return net.to(loop.device).eval()
