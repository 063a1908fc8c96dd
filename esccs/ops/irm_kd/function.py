"""``IRMKDFunction``: the Triton forward writes the per-row loss and its gradient; backward rescales that gradient."""

from __future__ import annotations

import torch

from esccs.ops.irm_kd.kernels import irm_kd_forward


class IRMKDFunction(torch.autograd.Function):
    """Fused ``irm_kd`` on per-row losses: forward ``(loss_rows, pi, rho, k)``, backward ``grad_z * g[:, None]``.

    The reduction is left to torch ops after ``apply`` (mean sends ``g = 1/B`` per row), so this Function has one
    backward for every reduction. No "grad_output == 1" shortcut: the multiply is one ``B x K`` pass, and skipping it
    would cost a device sync to detect.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, u: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, temperature: float,
                gamma: float, beta: float, alpha: float, k_min: float, eps: float, reference_is_source: bool,
                score_is_entropy: bool, form_is_ogm: bool):
        """Run the kernel on ``(B, K)`` logits; returns ``loss_rows (B,)``, ``pi (B, 3)``, ``rho (B,)``, ``k (B, 2)``.

        The option arguments are those of :func:`~esccs.ops.irm_kd.kernels.irm_kd_forward`.
        """
        loss, pi, rho, k, grad = irm_kd_forward(
            z, u, a_o, a_s, temperature=temperature, gamma=gamma, beta=beta, alpha=alpha, k_min=k_min, eps=eps,
            reference_is_source=reference_is_source, score_is_entropy=score_is_entropy, form_is_ogm=form_is_ogm,
            need_grad=ctx.needs_input_grad[0],
        )
        ctx.mark_non_differentiable(pi, rho, k)
        ctx.save_for_backward(grad)
        return loss, pi, rho, k

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, *_unused: torch.Tensor):
        """``d/dz = grad_z * grad_loss[:, None]`` (in fp32, stored in z's dtype); teachers and options get None."""
        (grad,) = ctx.saved_tensors
        dz = None
        if ctx.needs_input_grad[0]:
            dz = (grad.float() * grad_loss.float().unsqueeze(1)).to(grad.dtype)
        return (dz,) + (None,) * 12
