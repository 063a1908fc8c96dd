"""``grad_scale`` specification: identity forward, row-wise gradient scaling backward (pure PyTorch).

IRM-B (docs/method.md) multiplies the fused-path gradient of sample ``i``'s modality features by ``k_i``: the encoder of
the modality that is superior on that sample gets a smaller share, so the other encoder must explain the label.
"""

from __future__ import annotations

import torch

from esccs.ops._common import check_row_weights


class GradScaleReference(torch.autograd.Function):
    """``y = x``; ``dL/dx[i] = k[i] * dL/dy[i]``. ``k`` gets no gradient (it comes from frozen teachers)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Identity; remember ``k`` for backward."""
        ctx.save_for_backward(k)
        return x.view_as(x)

    @staticmethod
    def symbolic(g, x, k):
        """ONNX (TorchScript exporter): the identity, no node."""
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """Scale row ``i`` of the gradient by ``k[i]``."""
        (k,) = ctx.saved_tensors
        return grad * k.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1))), None


def grad_scale_reference(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Identity on ``x`` ``(B, ...)``; its gradient row ``i`` is scaled by ``k`` ``(B,)``."""
    check_row_weights("grad_scale", "k", k, (x.shape[0],))
    if not x.requires_grad:
        return x
    return GradScaleReference.apply(x, k.detach())
