"""``unimodal_kd`` specification: temperature-scaled KD of both branch heads against their auxiliary teachers.

Branch distillation (method.md) keeps both encoders informative: the optical head ``z^o`` follows the optical
auxiliary ``a^o`` and the SAR head ``z^s`` follows the SAR auxiliary ``a^s``. Pure PyTorch: the test oracle, the CPU
path and the export path of the fused kernel.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")


def kd_rows(z: torch.Tensor, t: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Per-row ``KD_T(z, t) = T^2 * KL(softmax(t / T) || softmax(z / T))``.

    Args:
        z: student logits ``(B, K)``.
        t: teacher logits ``(B, K)``.
        temperature: softening temperature ``T > 0``.

    Returns:
        ``(B,)`` losses, in at least float32 (float64 stays float64).
    """
    dtype = torch.promote_types(z.dtype, torch.float32)
    log_q_z = F.log_softmax(z.to(dtype) / temperature, dim=-1)
    log_q_t = F.log_softmax(t.to(dtype) / temperature, dim=-1)
    # NOTE: kl_div's xlogy-style convention makes 0 * log 0 = 0 for saturated (one-hot-like) teachers.
    return temperature**2 * F.kl_div(log_q_z, log_q_t, log_target=True, reduction="none").sum(-1)


def check_args(z_o: torch.Tensor, z_s: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor,
               temperature: float, weights: torch.Tensor | None, reduction: str) -> None:
    """Raise ``ValueError`` on mismatched shapes, a non-positive temperature or an unknown reduction."""
    if z_o.dim() != 2:
        raise ValueError(f"unimodal_kd: logits must be (B, K), got {tuple(z_o.shape)}")
    for name, t in (("z_s", z_s), ("a_o", a_o), ("a_s", a_s)):
        if t.shape != z_o.shape:
            raise ValueError(f"unimodal_kd: {name} must have z_o's shape {tuple(z_o.shape)}, got {tuple(t.shape)}")
    if weights is not None and weights.shape != (z_o.shape[0], 2):
        raise ValueError(f"unimodal_kd: weights must have shape ({z_o.shape[0]}, 2), got {tuple(weights.shape)}")
    if not temperature > 0:
        raise ValueError(f"unimodal_kd: temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unimodal_kd: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` (``mean`` | ``sum`` | ``none``) to per-row losses ``(B,)``."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


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
    return reduce(kd_o + kd_s, reduction)
