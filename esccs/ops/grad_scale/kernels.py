"""Triton kernel of ``grad_scale``'s backward: ``dx[i, :] = k[i] * dy[i, :]`` over rows of ``N`` elements."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _grad_scale_bwd_kernel(
    dy_ptr,  # (B, N) contiguous, any float dtype
    k_ptr,  # (B,) float32
    dx_ptr,  # (B, N) same dtype as dy
    N,  # elements per row
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(k_ptr + row)
    base = row.to(tl.int64) * N
    dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0)
    tl.store(dx_ptr + base + offs, (dy.to(tl.float32) * k).to(dy.dtype), mask=mask)


def grad_scale_backward(dy: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Launch the kernel on ``dy`` ``(B, ...)`` with ``k`` ``(B,)``; returns ``dx`` of ``dy``'s shape and dtype."""
    dy2 = dy.contiguous().view(dy.shape[0], -1)
    b, n = dy2.shape
    dx = torch.empty_like(dy2)
    if dy2.numel() == 0:
        return dx.view_as(dy)
    block = min(4096, triton.next_power_of_2(n))
    _grad_scale_bwd_kernel[(b, triton.cdiv(n, block))](dy2, k.float().contiguous(), dx, n, BLOCK=block,
                                                       num_warps=4 if block <= 2048 else 8)
    return dx.view_as(dy)
