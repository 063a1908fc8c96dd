"""Dual-branch optical + SAR target model f_T with decomposed unimodal logits and per-sample modality weights.

Late fusion by concatenation (docs/method.md, step 2): ``z = W_o h_o + W_s h_s + b`` with one linear head whose weight
is split by columns into ``W_o`` and ``W_s``. The unimodal logits follow the OGM-GE convention (``GeWu-Lab/OGM-GE``):
``z_o = W_o h_o + b/2``, ``z_s = W_s h_s + b/2``, so ``z = z_o + z_s`` and the split costs no parameters. During
step 2 the IRM-B factors ``k`` (``(B, 2)``) scale, per sample, the gradient that the *fused* logits send into each
encoder (:func:`esccs.ops.grad_scale.grad_scale`); ``z_o`` and ``z_s`` read the unscaled features, so branch
distillation still reaches both encoders in full.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esccs.ops.grad_scale import grad_scale
from esccs.spec import OUTPUT_NAMES


def modality_weights(logits: torch.Tensor, logits_o: torch.Tensor, logits_s: torch.Tensor) -> torch.Tensor:
    """Per-sample modality weights ``(B,)`` of the optical branch (``w_s = 1 - w_o``).

    With ``yhat = argmax z``: ``w_o = p_o[yhat] / (p_o[yhat] + p_s[yhat])``, ``p_m = softmax(z_m)``. Computed as
    ``sigmoid(log p_o[yhat] - log p_s[yhat])`` (the same value) so that it never divides 0 by 0; the index is
    taken with ``gather`` so that both ONNX exporters trace it without control flow.

    Args:
        logits: fused logits ``(B, K)``.
        logits_o: optical-branch logits ``(B, K)``.
        logits_s: SAR-branch logits ``(B, K)``.
    """
    yhat = logits.argmax(dim=1, keepdim=True)  # (B, 1)
    lp_o = F.log_softmax(logits_o, dim=1).gather(1, yhat)  # (B, 1)
    lp_s = F.log_softmax(logits_s, dim=1).gather(1, yhat)
    return torch.sigmoid(lp_o - lp_s).squeeze(1)


class DualBranchNet(nn.Module):
    """Optical encoder + SAR encoder + one linear head on the concatenated features.

    Args:
        opt_encoder: ``(B, C_o, H, W)`` -> ``h_o`` ``(B, d_o)``; needs a ``num_features`` attribute.
        sar_encoder: ``(B, C_s, H, W)`` -> ``h_s`` ``(B, d_s)``; needs a ``num_features`` attribute.
        n_classes: number of classes ``K``.

    The head is ``head = nn.Linear(d_o + d_s, K)``; ``W_o = head.weight[:, :d_o]``, ``W_s = head.weight[:, d_o:]``.

    Examples:
        >>> from esccs.models.resnet import resnet
        >>> net = DualBranchNet(resnet(18, 10, width=8), resnet(18, 2, width=8), n_classes=10)
        >>> out = net(torch.zeros(4, 10, 32, 32), torch.zeros(4, 2, 32, 32))
        >>> out["logits"].shape, out["w_o"].shape
        (torch.Size([4, 10]), torch.Size([4]))
    """

    def __init__(self, opt_encoder: nn.Module, sar_encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.opt_encoder, self.sar_encoder = opt_encoder, sar_encoder
        self.d_o, self.d_s = int(opt_encoder.num_features), int(sar_encoder.num_features)
        self.num_features = self.d_o + self.d_s
        self.n_classes = n_classes
        self.head = nn.Linear(self.num_features, n_classes)

    def branch_logits(self, h_o: torch.Tensor, h_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal logits ``z_o = W_o h_o + b/2`` and ``z_s = W_s h_s + b/2``, each ``(B, K)``."""
        w, b = self.head.weight, self.head.bias * 0.5
        return F.linear(h_o, w[:, : self.d_o], b), F.linear(h_s, w[:, self.d_o :], b)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor,
                k: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run both branches and the fused head.

        Args:
            optical: cloudy optical ``(B, C_o, H, W)``.
            sar: SAR ``(B, C_s, H, W)`` on the same grid (any size; the branches pool independently).
            k: IRM-B gradient factors ``(B, 2)`` (``k[:, 0]`` optical, ``k[:, 1]`` SAR), training step 2 only. The
                forward values do not depend on ``k``; only the fused-path gradient into ``h_o``/``h_s`` does.

        Returns:
            ``logits`` ``(B, K)`` = ``logits_o + logits_s``; ``probs`` = softmax(logits) ``(B, K)``; ``logits_o``,
            ``logits_s`` ``(B, K)`` from the unscaled features; ``w_o``, ``w_s`` ``(B,)`` modality weights
            (:func:`modality_weights`); ``h_o`` ``(B, d_o)`` and ``h_s`` ``(B, d_s)``, the features.
        """
        h_o, h_s = self.opt_encoder(optical), self.sar_encoder(sar)
        z_o, z_s = self.branch_logits(h_o, h_s)
        if k is None:
            z = z_o + z_s
        else:
            if k.shape != (h_o.shape[0], 2):
                raise ValueError(f"DualBranchNet: k must have shape ({h_o.shape[0]}, 2), got {tuple(k.shape)}")
            # Same values as z_o + z_s; only the gradient reaching each encoder through z is scaled per row.
            g_o, g_s = self.branch_logits(grad_scale(h_o, k[:, 0]), grad_scale(h_s, k[:, 1]))
            z = g_o + g_s
        w_o = modality_weights(z, z_o, z_s)
        return {"logits": z, "probs": torch.softmax(z, dim=1), "logits_o": z_o, "logits_s": z_s,
                "w_o": w_o, "w_s": 1.0 - w_o, "h_o": h_o, "h_s": h_s}


class ExportWrapper(nn.Module):
    """ONNX face of a :class:`DualBranchNet`: ``(optical, sar)`` -> ``(logits, probs, modality_weights)``.

    ``logits`` and ``probs`` are ``(B, K)``; ``modality_weights`` is ``(B, 2)`` = ``[w_o, w_s]`` per sample.
    """

    output_names: tuple[str, ...] = OUTPUT_NAMES

    def __init__(self, model: DualBranchNet) -> None:
        super().__init__()
        self.model = model
        # NOTE: a new Module starts in train mode; exporters restore that mode recursively afterwards, which would
        # silently flip an eval-mode model back to batch statistics. Mirror the wrapped model's mode instead.
        self.train(model.training)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See the class docstring; ``optical`` ``(B, C_o, H, W)``, ``sar`` ``(B, C_s, H, W)``."""
        out = self.model(optical, sar)
        return out["logits"], out["probs"], torch.stack((out["w_o"], out["w_s"]), dim=1)
