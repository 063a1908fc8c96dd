"""``UnimodalKDFunction``: the Triton kernel computes loss and logit gradients in forward; backward rescales them."""

from __future__ import annotations

import torch

from esccs.ops._common import reduce_rows


class UnimodalKDFunction(torch.autograd.Function):
    """Fused ``unimodal_kd``; gradients flow to ``z_o`` and ``z_s`` only (teachers and weights are constants).

    ``UnimodalKDFunction.apply(z_o, z_s, a_o, a_s, weights, temperature, reduction)``; shapes and semantics as in
    :func:`esccs.ops.unimodal_kd.reference.unimodal_kd_reference`.
    """

    @staticmethod
    def forward(ctx, z_o: torch.Tensor, z_s: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor,
                weights: torch.Tensor | None, temperature: float, reduction: str) -> torch.Tensor:
        """Run the kernel; save ``dz_o``, ``dz_s`` ``(B, K)``; return the reduced loss (scalar or ``(B,)``)."""
        from esccs.ops.unimodal_kd.kernels import unimodal_kd_forward

        with_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # The mean's 1/B is folded into the stored gradients, so backward is a no-op when grad_output == 1.
        g_scale = 1.0 / max(z_o.shape[0], 1) if reduction == "mean" else 1.0
        loss, dz_o, dz_s = unimodal_kd_forward(z_o, z_s, a_o, a_s, temperature, weights, g_scale, with_grad)
        ctx.reduction = reduction
        if with_grad:
            ctx.save_for_backward(dz_o, dz_s)
        return reduce_rows(loss, reduction)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        """Scale the saved gradients by ``grad_output`` (scalar, or ``(B,)`` for ``reduction="none"``)."""
        dz_o, dz_s = ctx.saved_tensors
        if ctx.reduction == "none":
            g = grad_output.view(-1, 1)
            dz_o, dz_s = dz_o * g.to(dz_o.dtype), dz_s * g.to(dz_s.dtype)
        elif not torch.equal(grad_output, torch.ones_like(grad_output)):  # "loss is the last layer" skips this
            dz_o, dz_s = dz_o * grad_output.to(dz_o.dtype), dz_s * grad_output.to(dz_s.dtype)
        return dz_o, dz_s, None, None, None, None, None
