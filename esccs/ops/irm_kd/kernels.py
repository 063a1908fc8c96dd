"""Triton forward kernel of ``irm_kd``: IRM weights, per-row loss and ``d loss_i / d z_i`` in one launch.

One program per row. The row is walked in ``BLOCK_K`` chunks, so any ``K`` works (K = 1000 with the default cap runs
in one chunk; tests force ``BLOCK_K = 16`` to exercise the multi-chunk paths):

1. per input, an online max and the softmax denominators at ``T = 1`` and at ``T`` (rescaled when the max grows);
2. the reference label ``ybar`` (first index of the maximum, as ``torch.argmax``) over ``p^src + p^o + p^s``;
3. (``score="entropy"`` only) one more pass per teacher for its entropy;
4. the weighted KD + CE loss and the gradient
   ``T (softmax(z/T) - sum_m pi^m softmax(t_m/T)) + beta (softmax(z) - onehot(ybar))``, stored in ``z``'s dtype.

Every quantity is computed in float32 whatever the input dtypes. There is no backward kernel: the gradient is
already in memory after the forward, and backward is ``grad_z * grad_output[:, None]``, a single elementwise multiply
that torch does at bandwidth (see :mod:`esccs.ops.irm_kd.function`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

#: Upper bound of the chunk width; read at call time so tests can lower it to force several chunks per row.
MAX_BLOCK_K = 2048


@triton.jit
def _softmax_stats(row_ptr, K, inv_t, BLOCK_K: tl.constexpr):
    """Max ``m`` and ``sum exp(x - m)``, ``sum exp((x - m) / T)`` of one row, online over chunks."""
    m = float("-inf")
    s1 = 0.0
    st = 0.0
    for start in range(0, K, BLOCK_K):
        offs = start + tl.arange(0, BLOCK_K)
        x = tl.load(row_ptr + offs, mask=offs < K, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s1 = s1 * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        st = st * tl.exp((m - m_new) * inv_t) + tl.sum(tl.exp((x - m_new) * inv_t), axis=0)
        m = m_new
    return m, s1, st


@triton.jit
def _reference_label(u_row, o_row, s_row, mu, su, mo, so, ms, ss, K,
                     SOURCE_REF: tl.constexpr, BLOCK_K: tl.constexpr):
    """``argmax(p^src + p^o + p^s)`` (or ``argmax p^src``), lowest index among equal maxima."""
    best = float("-inf")
    ybar = 0
    for start in range(0, K, BLOCK_K):
        offs = start + tl.arange(0, BLOCK_K)
        mask = offs < K
        score = tl.exp(tl.load(u_row + offs, mask=mask, other=0.0).to(tl.float32) - mu) / su
        if not SOURCE_REF:  # same left-to-right order as the reference, so near-ties round the same way
            score = score + tl.exp(tl.load(o_row + offs, mask=mask, other=0.0).to(tl.float32) - mo) / so
            score = score + tl.exp(tl.load(s_row + offs, mask=mask, other=0.0).to(tl.float32) - ms) / ss
        score = tl.where(mask, score, -1.0)
        cmax = tl.max(score, axis=0)
        cidx = tl.min(tl.where(score == cmax, offs, K), axis=0)
        take = cmax > best  # strict: an equal maximum in a later chunk keeps the earlier index
        ybar = tl.where(take, cidx, ybar)
        best = tl.where(take, cmax, best)
    return ybar


@triton.jit
def _entropy_score(row_ptr, m, s, K, inv_log_k, BLOCK_K: tl.constexpr):
    """``clamp(1 - H(p) / log K, 0, 1)`` with ``H = log s - sum e^(x-m) (x-m) / s``; 1 for K = 1 (inv_log_k = 0)."""
    acc = 0.0
    for start in range(0, K, BLOCK_K):
        offs = start + tl.arange(0, BLOCK_K)
        mask = offs < K
        xm = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32) - m
        acc += tl.sum(tl.where(mask, tl.exp(xm) * xm, 0.0), axis=0)
    entropy = tl.log(s) - acc / s
    return tl.minimum(tl.maximum(1.0 - entropy * inv_log_k, 0.0), 1.0)


@triton.jit
def _pow(c, gamma):
    """``c ** gamma`` for ``c >= 0``, with ``0 ** 0 = 1`` and an exact ``gamma = 1``, like ``torch.pow``."""
    safe = tl.where(c > 0, c, 1.0)
    w = tl.where(c > 0, tl.exp(gamma * tl.log(safe)), 0.0)
    w = tl.where(gamma == 1.0, c, w)
    return tl.where(gamma == 0.0, 1.0, w)


@triton.jit
def _one_minus_tanh(x):
    """``1 - tanh(x) = 2 / (1 + e^2x)``, exact at 0, with ``x`` clamped to +-40 so that ``e^2x`` never overflows.

    At the clamp the value is 3.6e-35 (or 2), which float32 ``1 - tanh`` rounds to 0 (or 2) anyway.
    """
    return 2.0 / (1.0 + tl.exp(2.0 * tl.minimum(tl.maximum(x, -40.0), 40.0)))


@triton.jit
def _irm_weights(c_src, c_o, c_s, gamma, alpha, k_min, eps, OGM: tl.constexpr):
    """``pi`` (three scalars), ``rho`` and ``(k_o, k_s)`` from the contributions ``c_src, c_o, c_s``."""
    w_src = _pow(c_src, gamma)
    w_o = _pow(c_o, gamma)
    w_s = _pow(c_s, gamma)
    total = w_src + w_o + w_s
    safe = tl.where(total > 0, total, 1.0)
    third = 1.0 / 3.0
    rho = (c_o + eps) / (c_s + eps)
    if OGM:
        x_o = alpha * rho
        x_s = alpha / rho
    else:
        x_o = alpha * (rho - 1.0)
        x_s = alpha * (1.0 / rho - 1.0)
    k_o = tl.where(rho > 1.0, tl.maximum(_one_minus_tanh(x_o), k_min), 1.0)
    k_s = tl.where(rho > 1.0, 1.0, tl.maximum(_one_minus_tanh(x_s), k_min))
    pi_src = tl.where(total > 0, w_src / safe, third)
    pi_o = tl.where(total > 0, w_o / safe, third)
    pi_s = tl.where(total > 0, w_s / safe, third)
    return pi_src, pi_o, pi_s, rho, k_o, k_s


@triton.jit
def _log_q(row_ptr, offs, mask, m, log_denom, inv_t):
    """``log softmax(x / T)`` on one chunk (masked lanes hold finite garbage, excluded by the caller)."""
    return (tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32) - m) * inv_t - log_denom


@triton.jit
def _loss_and_grad(z_row, u_row, o_row, s_row, g_row, mz, sz1, szt, mu, sut, mo, sot, ms, sst,
                   pi_src, pi_o, pi_s, ybar, K, inv_t, temperature, beta,
                   WRITE_GRAD: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-row loss ``T^2 sum_m pi^m KL_m + beta CE``; writes ``d loss / d z`` when ``WRITE_GRAD``."""
    kd_u = 0.0
    kd_o = 0.0
    kd_s = 0.0
    for start in range(0, K, BLOCK_K):
        offs = start + tl.arange(0, BLOCK_K)
        mask = offs < K
        log_qz = _log_q(z_row, offs, mask, mz, tl.log(szt), inv_t)
        log_qu = _log_q(u_row, offs, mask, mu, tl.log(sut), inv_t)
        log_qo = _log_q(o_row, offs, mask, mo, tl.log(sot), inv_t)
        log_qs = _log_q(s_row, offs, mask, ms, tl.log(sst), inv_t)
        qu = tl.exp(log_qu)
        qo = tl.exp(log_qo)
        qs = tl.exp(log_qs)
        kd_u += tl.sum(tl.where(mask, qu * (log_qu - log_qz), 0.0), axis=0)
        kd_o += tl.sum(tl.where(mask, qo * (log_qo - log_qz), 0.0), axis=0)
        kd_s += tl.sum(tl.where(mask, qs * (log_qs - log_qz), 0.0), axis=0)
        if WRITE_GRAD:
            z = tl.load(z_row + offs, mask=mask, other=0.0).to(tl.float32)
            p1 = tl.exp(z - mz) / sz1
            onehot = tl.where(offs == ybar, 1.0, 0.0)
            grad = temperature * (tl.exp(log_qz) - (pi_src * qu + pi_o * qo + pi_s * qs)) + beta * (p1 - onehot)
            tl.store(g_row + offs, grad.to(g_row.dtype.element_ty), mask=mask)
    ce = tl.log(sz1) - (tl.load(z_row + ybar).to(tl.float32) - mz)
    return temperature * temperature * (pi_src * kd_u + pi_o * kd_o + pi_s * kd_s) + beta * ce


@triton.jit
def _irm_kd_fwd_kernel(
    z_ptr,  # (B, K) fused student logits, fp32/fp16/bf16
    u_ptr,  # (B, K) source-teacher logits
    o_ptr,  # (B, K) optical-auxiliary logits
    s_ptr,  # (B, K) SAR-auxiliary logits
    loss_ptr,  # (B,) float32 per-row loss
    pi_ptr,  # (B, 3) float32 teacher weights (src, o, s)
    rho_ptr,  # (B,) float32 discrepancy ratio
    k_ptr,  # (B, 2) float32 balancing coefficients (k_o, k_s)
    grad_ptr,  # (B, K) z's dtype: d loss_i / d z_i (unused unless WRITE_GRAD)
    K, inv_t, temperature, gamma, beta, alpha, k_min, eps, inv_log_k,
    SOURCE_REF: tl.constexpr, ENTROPY: tl.constexpr, OGM: tl.constexpr, WRITE_GRAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * K overflows int32 on large batches of wide rows
    base = row * K
    z_row, u_row, o_row, s_row = z_ptr + base, u_ptr + base, o_ptr + base, s_ptr + base
    mz, sz1, szt = _softmax_stats(z_row, K, inv_t, BLOCK_K)
    mu, su1, sut = _softmax_stats(u_row, K, inv_t, BLOCK_K)
    mo, so1, sot = _softmax_stats(o_row, K, inv_t, BLOCK_K)
    ms, ss1, sst = _softmax_stats(s_row, K, inv_t, BLOCK_K)
    ybar = _reference_label(u_row, o_row, s_row, mu, su1, mo, so1, ms, ss1, K, SOURCE_REF, BLOCK_K)
    if ENTROPY:
        c_src = _entropy_score(u_row, mu, su1, K, inv_log_k, BLOCK_K)
        c_o = _entropy_score(o_row, mo, so1, K, inv_log_k, BLOCK_K)
        c_s = _entropy_score(s_row, ms, ss1, K, inv_log_k, BLOCK_K)
    else:
        c_src = tl.exp(tl.load(u_row + ybar).to(tl.float32) - mu) / su1
        c_o = tl.exp(tl.load(o_row + ybar).to(tl.float32) - mo) / so1
        c_s = tl.exp(tl.load(s_row + ybar).to(tl.float32) - ms) / ss1
    pi_src, pi_o, pi_s, rho, k_o, k_s = _irm_weights(c_src, c_o, c_s, gamma, alpha, k_min, eps, OGM)
    loss = _loss_and_grad(z_row, u_row, o_row, s_row, grad_ptr + base, mz, sz1, szt, mu, sut, mo, sot, ms, sst,
                          pi_src, pi_o, pi_s, ybar, K, inv_t, temperature, beta, WRITE_GRAD, BLOCK_K)
    tl.store(loss_ptr + row, loss)
    tl.store(pi_ptr + row * 3, pi_src)
    tl.store(pi_ptr + row * 3 + 1, pi_o)
    tl.store(pi_ptr + row * 3 + 2, pi_s)
    tl.store(rho_ptr + row, rho)
    tl.store(k_ptr + row * 2, k_o)
    tl.store(k_ptr + row * 2 + 1, k_s)


def _settings(n_cls: int, block_k: int | None) -> tuple[int, int]:
    """``(BLOCK_K, num_warps)``: one chunk up to ``MAX_BLOCK_K``; one warp covers typical scene-class counts."""
    block = block_k or max(16, min(MAX_BLOCK_K, triton.next_power_of_2(n_cls)))
    if block & (block - 1):
        raise ValueError(f"irm_kd: block_k must be a power of two, got {block}")
    return block, 1 if block <= 128 else 2 if block <= 512 else 4 if block <= 1024 else 8


def irm_kd_forward(
    z: torch.Tensor, u: torch.Tensor, a_o: torch.Tensor, a_s: torch.Tensor, *, temperature: float = 4.0,
    gamma: float = 1.0, beta: float = 0.5, alpha: float = 0.5, k_min: float = 0.1, eps: float = 1e-6,
    reference_is_source: bool = False, score_is_entropy: bool = False, form_is_ogm: bool = False,
    need_grad: bool = True, block_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel (arguments as :func:`~esccs.ops.irm_kd.reference.irm_kd_reference`).

    Args:
        z: ``(B, K)`` fused student logits (fp32/fp16/bf16).
        u: ``(B, K)`` source-teacher logits (any float dtype; all math is float32).
        a_o: ``(B, K)`` optical-auxiliary logits.
        a_s: ``(B, K)`` SAR-auxiliary logits.
        temperature: KD temperature ``T`` (> 0).
        gamma: Exponent of the contributions in the teacher weights.
        beta: Weight of the CE term.
        alpha: Slope of the balancing coefficients.
        k_min: Floor of the balancing coefficients.
        eps: Stabiliser of the discrepancy ratio.
        reference_is_source: ``ybar = argmax p^src`` instead of the consensus.
        score_is_entropy: Contributions ``1 - H / log K`` instead of ``p^m[ybar]``.
        form_is_ogm: Balancing ``1 - tanh(alpha rho)`` instead of ``1 - tanh(alpha (rho - 1))``.
        need_grad: Write ``grad_z``; without it the kernel skips the gradient stores and ``None`` is returned.
        block_k: Chunk width (a power of two); default ``min(MAX_BLOCK_K, next_power_of_2(K))``, at least 16.

    Returns:
        ``(loss_rows (B,) fp32, pi (B, 3) fp32, rho (B,) fp32, k (B, 2) fp32, grad_z (B, K) z.dtype or None)``.
    """
    z, u, a_o, a_s = (t.contiguous() for t in (z, u, a_o, a_s))
    b, n_cls = z.shape
    out = {"device": z.device, "dtype": torch.float32}
    loss, pi, rho, k = (torch.empty(b, **out), torch.empty(b, 3, **out), torch.empty(b, **out),
                        torch.empty(b, 2, **out))
    grad = torch.empty_like(z) if need_grad else None
    if b == 0:
        return loss, pi, rho, k, grad
    block, num_warps = _settings(n_cls, block_k)
    _irm_kd_fwd_kernel[(b,)](
        z, u, a_o, a_s, loss, pi, rho, k, grad if need_grad else z,
        n_cls, 1.0 / temperature, float(temperature), float(gamma), float(beta), float(alpha), float(k_min),
        float(eps), 1.0 / math.log(n_cls) if n_cls > 1 else 0.0,
        SOURCE_REF=bool(reference_is_source), ENTROPY=bool(score_is_entropy), OGM=bool(form_is_ogm),
        WRITE_GRAD=bool(need_grad), BLOCK_K=block, num_warps=num_warps,
    )
    return loss, pi, rho, k, grad
