"""A compact multi-band ResNet (BasicBlock: ResNet-10/18/34) that returns pooled features ``(B, d)``.

After He et al. 2016 ("Deep Residual Learning"), sized for 64-256 px remote-sensing patches with any band count.
The stem is an option because the ImageNet stem (7x7 stride 2 + max-pool, /4 before the first stage) throws away
most of a 64 px patch, while a full-resolution first stage costs ~(H/56)^2 x the ImageNet compute:

============  ======================================================  ==========  =====================
``stem``      layers                                                  stage-1 at  meant for
============  ======================================================  ==========  =====================
``basic``     3x3 conv stride 1                                       H           32-96 px patches
``deep``      3x3 s2 -> 3x3 -> 3x3 (ResNet-C without the max-pool)    H/2         128-256 px patches
``classic``   7x7 s2 + 3x3 max-pool s2 (torchvision / ImageNet)       H/4         comparison only
``patch``     4x4 conv stride 4 (patchify)                            H/4         cheap CPU runs
============  ======================================================  ==========  =====================

``resolve_stem("auto", patch_size)`` picks ``basic`` below 128 px and ``deep`` from 128 px up (a 128 px patch at
10 m is 1.28 km, already small, so no 7x7/max-pool by default). The network is channels_last friendly: no ``.view``
on activations, the pooled features come from a mean over the spatial axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

STEMS: tuple[str, ...] = ("basic", "deep", "classic", "patch")
#: blocks per stage of each depth (all BasicBlock, expansion 1)
DEPTHS: dict[int, tuple[int, int, int, int]] = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def resolve_stem(stem: str, patch_size: int) -> str:
    """Turn ``"auto"`` into ``"basic"`` (patches < 128 px) or ``"deep"`` (>= 128 px); check other names."""
    if stem == "auto":
        return "basic" if patch_size < 128 else "deep"
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(('auto', *STEMS))}")
    return stem


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


def make_stem(stem: str, in_chans: int, width: int) -> nn.Sequential:
    """Build the stem: ``(B, in_chans, H, W)`` -> ``(B, width, H / s, W / s)`` with ``s`` 1, 2 or 4 (see module)."""
    if stem == "basic":
        return nn.Sequential(*_conv_bn(in_chans, width, 3))
    if stem == "deep":
        mid = max(width // 2, 8)
        return nn.Sequential(*_conv_bn(in_chans, mid, 3, 2), *_conv_bn(mid, mid, 3), *_conv_bn(mid, width, 3))
    if stem == "classic":
        return nn.Sequential(*_conv_bn(in_chans, width, 7, 2), nn.MaxPool2d(3, 2, padding=1))
    if stem == "patch":
        return nn.Sequential(nn.Conv2d(in_chans, width, 4, 4, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN when the shape changes): ``(B, C, H, W)`` in and out."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, c_in, H, W)`` -> ``(B, c_out, H / stride, W / stride)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + shortcut)


class ResNet(nn.Module):
    """Multi-band ResNet encoder: ``(B, in_chans, H, W)`` -> features ``(B, num_features)``, ``num_features = 8 width``.

    Args:
        layers: BasicBlocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        in_chans: input bands (10 for the S2 land bands, 2 for S1 VV/VH).
        width: channels of the first stage (64 as in the paper family; 16/32 for CPU experiments); stages have
            ``width * (1, 2, 4, 8)`` channels.
        stem: one of :data:`STEMS` (``"auto"`` must be resolved first, see :func:`resolve_stem`).
        zero_init_last: start every residual branch at zero (last BN gamma = 0), so each block begins as the identity
            (Goyal et al. 2017); helps the short training runs of the later steps.

    Examples:
        >>> enc = ResNet((2, 2, 2, 2), in_chans=10, width=16)
        >>> enc(torch.zeros(2, 10, 64, 64)).shape
        torch.Size([2, 128])
    """

    def __init__(self, layers: Sequence[int], in_chans: int = 10, width: int = 64, stem: str = "basic",
                 zero_init_last: bool = True) -> None:
        super().__init__()
        self.in_chans, self.width, self.stem_name = in_chans, width, stem
        self.stem = make_stem(stem, in_chans, width)
        stages, c_in = [], width
        for i, n_blocks in enumerate(layers):
            c_out = width * 2**i
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1)
                      for j in range(n_blocks)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.num_features = c_in
        self.reset_parameters(zero_init_last)

    def reset_parameters(self, zero_init_last: bool = True) -> None:
        """Kaiming-normal convs (fan_out, ReLU), BN gamma 1 / beta 0, optionally the last BN of each branch at 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``(B, 8 width, H / s, W / s)`` (``s`` = 8 x the stem stride)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: ``(B, in_chans, H, W)`` -> ``(B, num_features)``; any H, W >= 8 px."""
        # NOTE: a mean over (H, W) rather than pool + view: works on channels_last maps and exports as ReduceMean.
        return self.forward_maps(x).mean(dim=(2, 3))


def resnet(depth: int, in_chans: int = 10, width: int = 64, stem: str = "basic", zero_init_last: bool = True) -> ResNet:
    """Build a ResNet-``depth`` encoder (``depth`` in :data:`DEPTHS`: 10, 18 or 34)."""
    if depth not in DEPTHS:
        raise ValueError(f"no ResNet-{depth}; depths: {sorted(DEPTHS)}")
    return ResNet(DEPTHS[depth], in_chans=in_chans, width=width, stem=stem, zero_init_last=zero_init_last)
