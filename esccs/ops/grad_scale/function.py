"""``GradScaleFunction``: identity forward; the Triton kernel scales the gradient rows backward."""

from __future__ import annotations

import torch


class GradScaleFunction(torch.autograd.Function):
    """Fused ``grad_scale``: ``y = x``; ``dx[i] = k[i] * dy[i]`` by :func:`kernels.grad_scale_backward`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Identity; remember ``k`` for backward."""
        ctx.save_for_backward(k)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """Scale row ``i`` of the gradient by ``k[i]`` in one Triton launch."""
        from esccs.ops.grad_scale.kernels import grad_scale_backward

        (k,) = ctx.saved_tensors
        return grad_scale_backward(grad, k), None
