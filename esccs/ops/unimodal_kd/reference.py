"""``unimodal_kd`` specification: temperature-scaled KD of both branch heads against their auxiliary teachers.

Branch distillation (docs/method.md) keeps both encoders informative: the optical head ``z^o`` follows the optical
auxiliary ``a^o`` and the SAR head ``z^s`` follows the SAR auxiliary ``a^s``. Pure PyTorch: the test oracle, the CPU
path and the export path of the fused kernel.
"""

from __future__ import annotations

import torch

from esccs.ops._common import Reduction, check_logits, check_loss_args, check_row_weights, kd_rows, reduce_rows


def check_args(z_o: torch.Tensor, z_s: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor,
               temperature: float, weights: torch.Tensor | None, reduction: str) -> None:
    """Raise ``ValueError`` on mismatched shapes, a non-positive temperature or an unknown reduction."""
    b, _ = check_logits("unimodal_kd", z_o=z_o, z_s=z_s, a_o=a_o, a_s=a_s)
    if weights is not None:
        check_row_weights("unimodal_kd", "weights", weights, (b, 2))
    check_loss_args("unimodal_kd", temperature, reduction)


def unimodal_kd_reference(z_o: torch.Tensor, z_s: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, *,
                          temperature: float = 4.0, weights: torch.Tensor | None = None,
                          reduction: Reduction = "mean") -> torch.Tensor:
    """``loss_i = w_o,i KD_T(z_o,i, a_o,i) + w_s,i KD_T(z_s,i, a_s,i)``, reduced over rows.

    Args:
        z_o: optical head logits ``(B, K)`` (differentiable).
        z_s: SAR head logits ``(B, K)`` (differentiable).
        a_o: frozen optical auxiliary logits ``(B, K)``; detached.
        a_s: frozen SAR auxiliary logits ``(B, K)``; detached.
        temperature: KD temperature ``T``.
        weights: optional per-sample branch weights ``(B, 2)`` (columns: optical, SAR); detached; default ones.
        reduction: ``mean`` over rows, ``sum``, or ``none`` for ``(B,)``.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``; float32 for half-precision inputs.
    """
    check_args(z_o, z_s, a_o, a_s, temperature, weights, reduction)
    kd_o = kd_rows(z_o, a_o.detach(), temperature)
    kd_s = kd_rows(z_s, a_s.detach(), temperature)
    if weights is not None:
        w = weights.detach().to(kd_o.dtype)
        kd_o, kd_s = w[:, 0] * kd_o, w[:, 1] * kd_s
    return reduce_rows(kd_o + kd_s, reduction)
