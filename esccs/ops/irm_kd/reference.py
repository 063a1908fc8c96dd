"""``irm_kd`` specification in plain PyTorch: IRM weights and the weighted three-teacher KD + consensus CE.

Step 2 (docs/method.md) distils three frozen teachers -- source ``u``, optical auxiliary ``a_o``, SAR auxiliary
``a_s`` -- into the fused logits ``z``. Per row ``i``, with ``m`` in (src, o, s) (the paper's S, O, R; suffixes as in
:mod:`esccs.ops._common`) and all teacher quantities at temperature 1 unless stated:

- ``p^m = softmax(t_m)``; reference label ``ybar = argmax(p^src + p^o + p^s)`` (``reference="source"``:
  ``argmax p^src``);
- contribution ``c^m = p^m[ybar]`` (``score="entropy"``: ``c^m = clamp(1 - H(p^m) / log K, 0, 1)``, ``1`` if K = 1);
- discrepancy ratio ``rho = (c^o + eps) / (c^s + eps)``;
- teacher weights ``pi^m = (c^m)^gamma / sum_m' (c^m')^gamma`` (``1/3`` each when the sum is 0, e.g. all-uniform
  teachers under ``score="entropy"``);
- balancing ``k``: if ``rho > 1``: ``k_o = max(k_min, 1 - tanh(alpha (rho - 1)))``, ``k_s = 1``; else
  ``k_s = max(k_min, 1 - tanh(alpha (1/rho - 1)))``, ``k_o = 1`` (``form="ogm"``: ``alpha rho`` and ``alpha / rho``);
- ``loss_i = sum_m pi^m KD_T(z, t_m) + beta CE(z, ybar)``, ``KD_T(z, t) = T^2 KL(softmax(t/T) || softmax(z/T))``.

Teachers are constants: ``pi``, ``rho``, ``k`` carry no gradient and only ``z`` is differentiated. Everything is
computed in float32 (float64 when an input is float64), whatever the input dtype, as the Triton kernel does.
This module is also the CPU path and the ONNX-export path, so it avoids data-dependent Python control flow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from esccs.ops._common import check_logits, check_loss_args, kd_rows, reduce_rows

REFERENCES = ("consensus", "source")
SCORES = ("prob", "entropy")
FORMS = ("continuous", "ogm")


class IRMKDOutput(NamedTuple):
    """Result of :func:`irm_kd`.

    Attributes:
        loss: Scalar for ``reduction="mean"``/``"sum"``, ``(B,)`` for ``"none"``; differentiable wrt ``z``.
        pi: ``(B, 3)`` teacher weights in the order (source, optical auxiliary, SAR auxiliary); rows sum to 1.
        rho: ``(B,)`` discrepancy ratio ``(c^O + eps) / (c^R + eps)``; > 1 means optical superior on that sample.
        k: ``(B, 2)`` balancing coefficients ``(k_o, k_s)`` for the grad-scale ops on ``h_o`` and ``h_s``.
    """

    loss: torch.Tensor
    pi: torch.Tensor
    rho: torch.Tensor
    k: torch.Tensor


def validate_weight_args(gamma: float, reference: str, score: str, form: str) -> None:
    """Raise ``ValueError`` for an unknown option or a negative ``gamma`` (0**negative would be infinite)."""
    if reference not in REFERENCES:
        raise ValueError(f"irm_kd: reference must be one of {REFERENCES}, got {reference!r}")
    if score not in SCORES:
        raise ValueError(f"irm_kd: score must be one of {SCORES}, got {score!r}")
    if form not in FORMS:
        raise ValueError(f"irm_kd: form must be one of {FORMS}, got {form!r}")
    if gamma < 0:
        raise ValueError(f"irm_kd: gamma must be >= 0, got {gamma}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are upcast, as in the kernel)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _one_minus_tanh_clamped(x: torch.Tensor, k_min: float) -> torch.Tensor:
    return (1.0 - torch.tanh(x)).clamp_min(k_min)


def irm_weights_reference(
    u: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, *, gamma: float = 1.0, alpha: float = 0.5,
    k_min: float = 0.1, eps: float = 1e-6, reference: str = "consensus", score: str = "prob", form: str = "continuous",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """IRM (i), (ii-A) and (ii-B) from the frozen teachers' logits (no autograd).

    Args:
        u: ``(B, K)`` source-teacher logits.
        a_o: ``(B, K)`` optical-auxiliary logits.
        a_s: ``(B, K)`` SAR-auxiliary logits.
        gamma: Exponent of the contributions in the teacher weights (0: uniform, the "no IRM" ablation).
        alpha: Slope of the balancing coefficients.
        k_min: Floor of the balancing coefficients.
        eps: Stabiliser of the discrepancy ratio.
        reference: ``"consensus"`` (argmax of the summed teacher probabilities) or ``"source"`` (argmax ``p^src``).
        score: ``"prob"`` (``p^m[ybar]``) or ``"entropy"`` (``1 - H(p^m) / log K``).
        form: ``"continuous"`` (``1 - tanh(alpha (rho - 1))``) or ``"ogm"`` (``1 - tanh(alpha rho)``).

    Returns:
        ``(pi (B, 3), rho (B,), k (B, 2), ybar (B,) int64)``, in float32 (float64 for float64 inputs).
    """
    _, n_cls = check_logits("irm_kd", u=u, a_o=a_o, a_s=a_s)
    validate_weight_args(gamma, reference, score, form)
    with torch.no_grad():
        logits = torch.stack([u, a_o, a_s]).to(compute_dtype(u, a_o, a_s))  # (3, B, K)
        p = logits.softmax(-1)
        # Explicit left-to-right sum: the kernel adds in this order, so near-ties break the same way.
        ybar = (p[0] if reference == "source" else p[0] + p[1] + p[2]).argmax(-1)  # (B,), first index on ties
        if score == "prob":
            c = p.gather(2, ybar.view(1, -1, 1).expand(3, -1, 1)).squeeze(2).T  # (B, 3)
        elif n_cls == 1:
            c = torch.ones_like(p[:, :, 0].T)
        else:
            entropy = -(p * logits.log_softmax(-1)).sum(-1)  # (3, B); log_softmax is finite where p underflows
            c = (1.0 - entropy / math.log(n_cls)).clamp(0.0, 1.0).T
        rho = (c[:, 1] + eps) / (c[:, 2] + eps)
        w = c.pow(gamma)  # pow(0, 0) == 1, so gamma = 0 gives exactly 1/3 each
        total = w.sum(1, keepdim=True)
        pi = torch.where(total > 0, w / total, torch.full_like(w, 1.0 / 3.0))
        k = balance_from_rho(rho, alpha=alpha, k_min=k_min, form=form)
    return pi, rho, k, ybar


def balance_from_rho(rho: torch.Tensor, *, alpha: float = 0.5, k_min: float = 0.1,
                     form: str = "continuous") -> torch.Tensor:
    """IRM-B's balancing coefficients ``(B, 2)`` = ``(k_o, k_s)`` from the discrepancy ratio ``rho`` (``(B,)``).

    ``rho > 1``: ``k_o = max(k_min, 1 - tanh(alpha (rho - 1)))``, ``k_s = 1``; else ``k_s = max(k_min,
    1 - tanh(alpha (1/rho - 1)))``, ``k_o = 1`` (``form="ogm"``: ``alpha rho`` and ``alpha / rho``).
    """
    x_o, x_s = (alpha * rho, alpha / rho) if form == "ogm" else (alpha * (rho - 1.0), alpha * (1.0 / rho - 1.0))
    ones = torch.ones_like(rho)
    k_o = torch.where(rho > 1, _one_minus_tanh_clamped(x_o, k_min), ones)
    k_s = torch.where(rho > 1, ones, _one_minus_tanh_clamped(x_s, k_min))
    return torch.stack([k_o, k_s], 1)


def irm_kd_reference(
    z: torch.Tensor, u: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, *, temperature: float = 4.0,
    gamma: float = 1.0, beta: float = 0.5, alpha: float = 0.5, k_min: float = 0.1, eps: float = 1e-6,
    reference: str = "consensus", score: str = "prob", form: str = "continuous", reduction: str = "mean",
) -> IRMKDOutput:
    """Weighted three-teacher KD + ``beta`` consensus CE on the fused logits, with the IRM quantities.

    Args:
        z: ``(B, K)`` fused student logits (differentiable).
        u: ``(B, K)`` source-teacher logits (detached).
        a_o: ``(B, K)`` optical-auxiliary logits (detached).
        a_s: ``(B, K)`` SAR-auxiliary logits (detached).
        temperature: KD temperature ``T`` (> 0); the CE term and the IRM use ``T = 1``.
        beta: Weight of ``CE(z, ybar)``.
        gamma: Exponent of the contributions in the teacher weights (0: uniform, the "no IRM" ablation).
        alpha: Slope of the balancing coefficients.
        k_min: Floor of the balancing coefficients.
        eps: Stabiliser of the discrepancy ratio.
        reference: ``"consensus"`` (argmax of the summed teacher probabilities) or ``"source"`` (argmax ``p^src``).
        score: ``"prob"`` (``p^m[ybar]``) or ``"entropy"`` (``1 - H(p^m) / log K``).
        form: ``"continuous"`` (``1 - tanh(alpha (rho - 1))``) or ``"ogm"`` (``1 - tanh(alpha rho)``).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the per-row loss.

    Returns:
        :class:`IRMKDOutput` ``(loss, pi (B, 3), rho (B,), k (B, 2))``; the loss is float32 (float64 for float64
        inputs).
    """
    check_logits("irm_kd", z=z, u=u, a_o=a_o, a_s=a_s)
    check_loss_args("irm_kd", temperature, reduction)
    pi, rho, k, ybar = irm_weights_reference(u, a_o, a_s, gamma=gamma, alpha=alpha, k_min=k_min, eps=eps,
                                             reference=reference, score=score, form=form)
    dt = pi.dtype
    zt = z.to(dt)
    kd = torch.stack([kd_rows(zt, t.detach().to(dt), temperature) for t in (u, a_o, a_s)], 1)  # (B, 3)
    ce = -F.log_softmax(zt, dim=-1).gather(1, ybar.unsqueeze(1)).squeeze(1)
    rows = (pi * kd).sum(1) + beta * ce
    return IRMKDOutput(reduce_rows(rows, reduction), pi, rho, k)
