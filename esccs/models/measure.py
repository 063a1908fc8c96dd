"""Model size and cost: parameter counts and FLOPs (``torch.utils.flop_counter``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_flops(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """FLOPs of one forward pass on ``inputs`` (a tensor, or a tuple of positional tensors).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`: a multiply-add counts 2; convs and matmuls only.

    The model runs in eval mode under ``no_grad`` (BN statistics stay untouched); its mode is restored afterwards.
    Divide by the batch size for a per-sample figure.

    Examples:
        >>> from esccs.models import create_model
        >>> model_flops(create_model("resnet10", width=8, patch_size=32), torch.zeros(1, 10, 32, 32)) > 0
        True
    """
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(*args)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
