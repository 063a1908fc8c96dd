"""``irm_kd``: the IRM-weighted three-teacher KD + consensus CE of step 2, fused with its gradient.

One pass per row gives the teacher weights, the discrepancy ratio, the balancing coefficients, the per-row loss and
its gradient wrt the fused logits (docs/method.md, "Step 2" and "Fused ops").
"""

from __future__ import annotations

import torch
from torch import nn

from esccs.ops._common import check_logits, check_loss_args, reduce_rows
from esccs.ops._dispatch import use_fused
from esccs.ops.irm_kd.reference import (
    IRMKDOutput,
    balance_from_rho,
    irm_kd_reference,
    irm_weights_reference,
    validate_weight_args,
)


def irm_kd(
    z: torch.Tensor, u: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, *, temperature: float = 4.0,
    gamma: float = 1.0, beta: float = 0.5, alpha: float = 0.5, k_min: float = 0.1, eps: float = 1e-6,
    reference: str = "consensus", score: str = "prob", form: str = "continuous", reduction: str = "mean",
) -> IRMKDOutput:
    """IRM-weighted KD of ``z`` from three frozen teachers plus ``beta`` CE on their consensus label.

    Fused (Triton) when the dispatcher allows it, else :func:`irm_kd_reference` (the specification; also the CPU and
    ONNX-export path). float64 inputs always take the reference: the kernel computes in float32.

    Args:
        z: ``(B, K)`` fused student logits (differentiable).
        u: ``(B, K)`` source-teacher logits (detached, like the other two teachers).
        a_o: ``(B, K)`` optical-auxiliary logits.
        a_s: ``(B, K)`` SAR-auxiliary logits.
        temperature: KD temperature ``T`` (> 0).
        gamma: Sharpness of the teacher weights (0: uniform, the "no IRM" ablation).
        beta: Weight of the CE term on the reference label.
        alpha: Slope of the balancing coefficients.
        k_min: Floor of the balancing coefficients.
        eps: Stabiliser of the discrepancy ratio.
        reference: ``"consensus"`` (argmax of the summed teacher probabilities) or ``"source"``.
        score: ``"prob"`` (probability of the reference label) or ``"entropy"`` (``1 - H / log K``).
        form: ``"continuous"`` (``1 - tanh(alpha (rho - 1))``) or ``"ogm"`` (``1 - tanh(alpha rho)``).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the per-row loss.

    Returns:
        :class:`IRMKDOutput` ``(loss, pi (B, 3), rho (B,), k (B, 2))``; ``pi``, ``rho``, ``k`` carry no gradient.
    """
    check_logits("irm_kd", z=z, u=u, a_o=a_o, a_s=a_s)
    check_loss_args("irm_kd", temperature, reduction)
    validate_weight_args(gamma, reference, score, form)
    u, a_o, a_s = u.detach(), a_o.detach(), a_s.detach()
    if z.dtype != torch.float64 and use_fused("irm_kd", z, u, a_o, a_s):
        from esccs.ops.irm_kd.function import IRMKDFunction

        rows, pi, rho, k = IRMKDFunction.apply(z, u, a_o, a_s, float(temperature), float(gamma), float(beta),
                                               float(alpha), float(k_min), float(eps), reference == "source",
                                               score == "entropy", form == "ogm")
        return IRMKDOutput(reduce_rows(rows, reduction), pi, rho, k)
    return irm_kd_reference(z, u, a_o, a_s, temperature=temperature, gamma=gamma, beta=beta, alpha=alpha,
                            k_min=k_min, eps=eps, reference=reference, score=score, form=form, reduction=reduction)


class IRMKDLoss(nn.Module):
    """Module form of :func:`irm_kd`: holds the configuration; ``IRMKDLoss(beta=0.5)(z, u, a_o, a_s)``.

    Shape:
        z, u, a_o, a_s: ``(B, K)``. Output: :class:`IRMKDOutput` (``loss`` scalar, or ``(B,)`` for
        ``reduction="none"``).
    """

    def __init__(self, *, temperature: float = 4.0, gamma: float = 1.0, beta: float = 0.5, alpha: float = 0.5,
                 k_min: float = 0.1, eps: float = 1e-6, reference: str = "consensus", score: str = "prob",
                 form: str = "continuous", reduction: str = "mean") -> None:
        super().__init__()
        check_loss_args("irm_kd", temperature, reduction)
        validate_weight_args(gamma, reference, score, form)
        self.config = {"temperature": temperature, "gamma": gamma, "beta": beta, "alpha": alpha, "k_min": k_min,
                       "eps": eps, "reference": reference, "score": score, "form": form, "reduction": reduction}

    def forward(self, z: torch.Tensor, u: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor) -> IRMKDOutput:
        """See :func:`irm_kd`."""
        return irm_kd(z, u, a_o, a_s, **self.config)

    def extra_repr(self) -> str:
        """The configuration, as ``nn.Module`` prints it."""
        return ", ".join(f"{key}={value!r}" for key, value in self.config.items())


__all__ = ["IRMKDOutput", "irm_kd", "IRMKDLoss", "irm_kd_reference", "irm_weights_reference", "balance_from_rho"]
