"""Triton kernel of ``unimodal_kd``: both branches' KD loss and logit gradients for one row per program.

One launch, grid ``(B,)``: program ``i`` reads rows ``z_o[i], a_o[i], z_s[i], a_s[i]`` and writes ``loss[i]`` and
``dz_o[i], dz_s[i]``. Everything is fp32 inside. Rows wider than ``BLOCK_K`` are walked in chunks with an online
(running-max) softmax, so ``K`` is unbounded. With ``x = z / T`` and ``y = a / T``::

    KD_T / T^2 = sum_k q_y,k (y_k - x_k) - lse(y) + lse(x),        dKD_T/dz = T (softmax(x) - softmax(y))

Pass 1 accumulates ``s_x = sum exp(x - m_x)``, ``s_y``, ``P = sum exp(y - m_y) (y - m_y)`` and
``Q = sum exp(y - m_y) (x - m_x)`` (rescaled whenever a running max moves), so that
``KD_T / T^2 = (P - Q) / s_y - log s_y + log s_x``; pass 2 re-reads the row (from cache for small ``K``) and writes
the gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Largest column block; rows wider than this are processed in chunks. Tests lower it to exercise chunking.
MAX_BLOCK_K = 4096


@triton.jit
def _kd_row(z_ptr, a_ptr, dz_ptr, K, inv_t, temperature, w, g_scale,
            WITH_GRAD: tl.constexpr, BLOCK_K: tl.constexpr):
    """``w * KD_T`` of one row (fp32 scalar); stores ``g_scale * w * T * (softmax(x) - softmax(y))`` if asked."""
    cols = tl.arange(0, BLOCK_K)
    # Start the running maxima at column 0 (not -inf) so no inf - inf appears in the rescaling below.
    m_x = tl.load(z_ptr).to(tl.float32) * inv_t
    m_y = tl.load(a_ptr).to(tl.float32) * inv_t
    s_x = tl.zeros([], tl.float32)  # sum_k exp(x_k - m_x)
    s_y = tl.zeros([], tl.float32)  # sum_k exp(y_k - m_y)
    # NOTE: accumulate sum_k e_y (y_k - m_y) and sum_k e_y (x_k - m_x) apart, against their own maxima, not
    # sum e_y (y_k - x_k): with a saturated teacher (margin 1e4) the latter cancels two O(1e4) terms in fp32.
    p_acc = tl.zeros([], tl.float32)
    q_acc = tl.zeros([], tl.float32)
    for start in range(0, K, BLOCK_K):
        mask = start + cols < K
        x = tl.load(z_ptr + start + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
        y = tl.load(a_ptr + start + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
        new_m_x = tl.maximum(m_x, tl.max(tl.where(mask, x, float("-inf")), axis=0))
        new_m_y = tl.maximum(m_y, tl.max(tl.where(mask, y, float("-inf")), axis=0))
        alpha = tl.exp(m_y - new_m_y)
        p_acc = alpha * (p_acc - (new_m_y - m_y) * s_y)
        q_acc = alpha * (q_acc - (new_m_x - m_x) * s_y)
        e_y = tl.where(mask, tl.exp(y - new_m_y), 0.0)
        p_acc += tl.sum(tl.where(mask, e_y * (y - new_m_y), 0.0), axis=0)
        q_acc += tl.sum(tl.where(mask, e_y * (x - new_m_x), 0.0), axis=0)
        s_y = s_y * alpha + tl.sum(e_y, axis=0)
        s_x = s_x * tl.exp(m_x - new_m_x) + tl.sum(tl.where(mask, tl.exp(x - new_m_x), 0.0), axis=0)
        m_x = new_m_x
        m_y = new_m_y
    lse_x = m_x + tl.log(s_x)
    lse_y = m_y + tl.log(s_y)
    loss = w * temperature * temperature * ((p_acc - q_acc) / s_y - tl.log(s_y) + tl.log(s_x))
    if WITH_GRAD:
        g = g_scale * w * temperature
        for start in range(0, K, BLOCK_K):
            mask = start + cols < K
            x = tl.load(z_ptr + start + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
            y = tl.load(a_ptr + start + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
            dz = g * (tl.exp(x - lse_x) - tl.exp(y - lse_y))
            tl.store(dz_ptr + start + cols, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    return loss


@triton.jit
def _unimodal_kd_kernel(
    zo_ptr,  # (B, K) optical head logits, any float dtype
    zs_ptr,  # (B, K) SAR head logits
    ao_ptr,  # (B, K) optical auxiliary logits
    as_ptr,  # (B, K) SAR auxiliary logits
    w_ptr,  # (B, 2) float32 branch weights; unused unless HAS_WEIGHTS
    loss_ptr,  # (B,) float32 per-row loss
    dzo_ptr,  # (B, K) gradient of loss_i w.r.t. z_o[i], z_o's dtype; unused unless WITH_GRAD
    dzs_ptr,  # (B, K) same for z_s
    K,  # classes
    inv_t,  # 1 / T
    temperature,  # T
    g_scale,  # factor folded into the stored gradients (1 / B for reduction="mean")
    HAS_WEIGHTS: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = row * K
    w_o = 1.0
    w_s = 1.0
    if HAS_WEIGHTS:
        w_o = tl.load(w_ptr + 2 * row)
        w_s = tl.load(w_ptr + 2 * row + 1)
    loss_o = _kd_row(zo_ptr + base, ao_ptr + base, dzo_ptr + base, K, inv_t, temperature, w_o, g_scale,
                     WITH_GRAD, BLOCK_K)
    loss_s = _kd_row(zs_ptr + base, as_ptr + base, dzs_ptr + base, K, inv_t, temperature, w_s, g_scale,
                     WITH_GRAD, BLOCK_K)
    tl.store(loss_ptr + row, loss_o + loss_s)


def unimodal_kd_forward(z_o: torch.Tensor, z_s: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor,
                        temperature: float, weights: torch.Tensor | None, g_scale: float, with_grad: bool,
                        block_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the kernel once for both branches.

    Args:
        z_o: optical head logits ``(B, K)``.
        z_s: SAR head logits ``(B, K)``.
        a_o: optical auxiliary logits ``(B, K)``.
        a_s: SAR auxiliary logits ``(B, K)``.
        temperature: KD temperature ``T``.
        weights: optional ``(B, 2)`` branch weights.
        g_scale: factor folded into the gradients (``1 / B`` for a mean reduction).
        with_grad: also write the gradients.
        block_k: column block (power of two); default ``min(MAX_BLOCK_K, next_power_of_2(K))``.

    Returns:
        ``loss`` ``(B,)`` float32, and ``dz_o``, ``dz_s`` ``(B, K)`` in the logits' dtypes (``None`` without grad).
    """
    z_o, z_s, a_o, a_s = (t.contiguous() for t in (z_o, z_s, a_o, a_s))
    b, k = z_o.shape
    loss = torch.empty(b, dtype=torch.float32, device=z_o.device)
    dz_o = torch.empty_like(z_o) if with_grad else None
    dz_s = torch.empty_like(z_s) if with_grad else None
    if b == 0 or k == 0:
        return loss.zero_(), dz_o, dz_s
    block = block_k or min(MAX_BLOCK_K, triton.next_power_of_2(k))
    w = weights.detach().float().contiguous() if weights is not None else loss  # placeholder pointer when unused
    _unimodal_kd_kernel[(b,)](
        z_o, z_s, a_o, a_s, w, loss,
        dz_o if with_grad else z_o, dz_s if with_grad else z_s,  # never written without grad
        k, 1.0 / temperature, float(temperature), float(g_scale),
        HAS_WEIGHTS=weights is not None, WITH_GRAD=with_grad, BLOCK_K=block,
        num_warps=4 if block <= 2048 else 8,
    )
    return loss, dz_o, dz_s
