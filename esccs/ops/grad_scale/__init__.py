"""``grad_scale``: identity forward, per-sample gradient scaling backward (IRM-B); exports as identity."""

from __future__ import annotations

import torch
from torch import nn

from esccs.ops._common import check_row_weights
from esccs.ops._dispatch import exporting, use_fused
from esccs.ops.grad_scale.reference import grad_scale_reference


def grad_scale(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Return ``x`` ``(B, ...)`` unchanged; in backward multiply gradient row ``i`` by ``k[i]`` (``k``: ``(B,)``).

    Fused (Triton) when the dispatcher allows it, else the pure-PyTorch reference. Under ONNX export both reduce to
    the identity (no node at all).
    """
    check_row_weights("grad_scale", "k", k, (x.shape[0],))
    if not x.requires_grad or not torch.is_grad_enabled() or exporting():
        return x  # nothing to scale; under export the op leaves no node at all
    if use_fused("grad_scale", x):
        from esccs.ops.grad_scale.function import GradScaleFunction

        return GradScaleFunction.apply(x, k.detach())
    return grad_scale_reference(x, k)


class GradScale(nn.Module):
    """Module form of :func:`grad_scale`: ``GradScale()(x, k)``."""

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """See :func:`grad_scale`."""
        return grad_scale(x, k)


__all__ = ["grad_scale", "GradScale", "grad_scale_reference"]
