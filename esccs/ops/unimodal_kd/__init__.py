"""``unimodal_kd``: temperature-scaled KD of both branch heads against their auxiliary teachers, in one launch."""

from __future__ import annotations

import torch
from torch import nn

from esccs.ops._common import Reduction
from esccs.ops._dispatch import use_fused
from esccs.ops.unimodal_kd.reference import check_args, unimodal_kd_reference


def unimodal_kd(z_o: torch.Tensor, z_s: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, *,
                temperature: float = 4.0, weights: torch.Tensor | None = None,
                reduction: Reduction = "mean") -> torch.Tensor:
    """Branch distillation ``loss_i = w_o,i KD_T(z_o,i, a_o,i) + w_s,i KD_T(z_s,i, a_s,i)``, reduced over rows.

    ``KD_T(z, t) = T^2 * KL(softmax(t / T) || softmax(z / T))``. Fused (one Triton launch for both branches) when
    the dispatcher allows it, else the pure-PyTorch reference; both give the same values and gradients.

    Args:
        z_o: optical head logits ``(B, K)`` (differentiable).
        z_s: SAR head logits ``(B, K)`` (differentiable).
        a_o: frozen optical auxiliary logits ``(B, K)``; receives no gradient.
        a_s: frozen SAR auxiliary logits ``(B, K)``; receives no gradient.
        temperature: KD temperature ``T`` (method default 4).
        weights: optional per-sample branch weights ``(B, 2)`` (``irm_apply=loss``); no gradient; default ones.
        reduction: ``mean`` over rows, ``sum``, or ``none`` for ``(B,)``.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``; float32 for half-precision inputs.

    Raises:
        ValueError: on mismatched shapes, ``temperature <= 0`` or an unknown reduction.

    Examples:
        >>> z_o, z_s, a_o, a_s = torch.randn(4, 8, 10).unbind(0)
        >>> unimodal_kd(z_o, z_s, a_o, a_s, temperature=4.0).shape
        torch.Size([])
    """
    check_args(z_o, z_s, a_o, a_s, temperature, weights, reduction)
    if use_fused("unimodal_kd", z_o, z_s, a_o, a_s):
        from esccs.ops.unimodal_kd.function import UnimodalKDFunction

        w = weights.detach() if weights is not None else None
        return UnimodalKDFunction.apply(z_o, z_s, a_o.detach(), a_s.detach(), w, float(temperature), reduction)
    return unimodal_kd_reference(z_o, z_s, a_o, a_s, temperature=temperature, weights=weights, reduction=reduction)


class UnimodalKDLoss(nn.Module):
    """Module form of :func:`unimodal_kd`: ``UnimodalKDLoss(temperature=4.0)(z_o, z_s, a_o, a_s, weights=None)``.

    Args:
        temperature: KD temperature ``T``.
        reduction: ``mean``, ``sum`` or ``none``.
    """

    def __init__(self, temperature: float = 4.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, z_o: torch.Tensor, z_s: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """See :func:`unimodal_kd`; inputs ``(B, K)``, optional ``weights`` ``(B, 2)``."""
        return unimodal_kd(z_o, z_s, a_o, a_s, temperature=self.temperature, weights=weights,
                           reduction=self.reduction)

    def extra_repr(self) -> str:
        """Show the temperature and reduction."""
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


__all__ = ["unimodal_kd", "UnimodalKDLoss", "unimodal_kd_reference"]
