"""What the KD ops share, defined once: the per-row KD loss, the reductions and the argument checks.

Names in :mod:`esccs.ops` (and in the models and training code that call them) follow one rule: ``_o`` is the
optical modality, ``_s`` the SAR modality (``z_s``, ``a_s``, ``h_s``, ``k_s``), and the source teacher, whose logits
are ``u``, is ``_src`` (``pi_src``, ``c_src``). The paper's superscripts S / O / R (source / optical / radar) map to
``_src`` / ``_o`` / ``_s``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def kd_rows(z: torch.Tensor, t: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Per-row ``KD_T(z, t) = T^2 * KL(softmax(t / T) || softmax(z / T))``.

    Args:
        z: student logits ``(B, K)``.
        t: teacher logits ``(B, K)`` (not detached here: detach a frozen teacher before the call).
        temperature: softening temperature ``T > 0``.

    Returns:
        ``(B,)`` losses, in at least float32 (float64 stays float64, half precision is upcast).
    """
    dtype = torch.promote_types(z.dtype, torch.float32)
    log_q_z = F.log_softmax(z.to(dtype) / temperature, dim=-1)
    log_q_t = F.log_softmax(t.to(dtype) / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_q_z, log_q_t, log_target=True, reduction="none").sum(-1)


def reduce_rows(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to per-row losses ``(B,)``: the scalar mean or sum, or ``rows`` itself for ``none``."""
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def check_loss_args(op: str, temperature: float, reduction: str) -> None:
    """Raise ``ValueError`` (prefixed with ``op``) for a non-positive temperature or an unknown reduction."""
    if not temperature > 0:
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_logits(op: str, **logits: torch.Tensor) -> tuple[int, int]:
    """Raise ``ValueError`` unless every named tensor is ``(B, K)`` with one common shape and ``K >= 1``.

    Returns:
        ``(B, K)`` as Python ints (traced shapes are tensors, so every dimension goes through ``int``).
    """
    shapes = {name: tuple(int(d) for d in t.shape) for name, t in logits.items()}
    first, ref = next(iter(shapes.items()))
    if len(ref) != 2:
        raise ValueError(f"{op}: logits must be (B, K), got {first} of shape {ref}")
    bad = next((name for name, shape in shapes.items() if shape != ref), None)
    if bad is not None:
        raise ValueError(f"{op}: logits must all have one shape (B, K): {bad} is {shapes[bad]}, {first} is {ref}")
    if ref[1] < 1:
        raise ValueError(f"{op}: need K >= 1 classes, got shape {ref}")
    return ref


def check_row_weights(op: str, name: str, weights: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless the per-row tensor ``weights`` has exactly ``shape`` (e.g. ``(B,)``, ``(B, 2)``)."""
    if tuple(weights.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(weights.shape)}")
