"""Single-modality scene classifier: an encoder plus a linear head (source model, optical and SAR auxiliaries)."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """``encoder`` -> features ``(B, d)`` -> linear head -> logits ``(B, K)``.

    Used for the source model f_S and the optical auxiliary f_O (10 S2 land bands by default) and for the SAR
    auxiliary f_R (2 channels, VV and VH).

    Args:
        encoder: a module mapping ``(B, C, H, W)`` to ``(B, d)`` with a ``num_features`` attribute (``d``).
        n_classes: number of classes ``K``.

    Examples:
        >>> from esccs.models.resnet import resnet
        >>> model = Classifier(resnet(18, in_chans=2, width=8), n_classes=10)
        >>> model(torch.zeros(4, 2, 32, 32)).shape
        torch.Size([4, 10])
    """

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = int(encoder.num_features)
        self.n_classes = n_classes
        self.head = nn.Linear(self.num_features, n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, d)`` of ``x`` ``(B, C, H, W)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of ``x`` ``(B, C, H, W)``."""
        return self.head(self.encoder(x))
