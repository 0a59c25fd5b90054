"""Triton flash attention (forward and backward) with causal / block-causal masks computed in-kernel.

Same semantics as :func:`deltairis.ops.attention.attention_ref`: q, k, v are (B, H, T, D) with
D <= 128, scale 1/sqrt(D); query i sees key j when ``j <= i`` or (block-causal) when both lie in the
same block of ``block_size`` tokens. No mask tensor is materialised: each program derives the
visible key range of its query tile and masks the boundary tiles element-wise.

Forward: one program per (query tile, batch*head) with an online softmax in fp32 (exp2 domain),
storing the output and the log-sum-exp (base 2) for the backward pass.
Backward (FlashAttention-2 style, no atomics, deterministic): a pre-pass computes
``delta = rowsum(dO * O)``, one kernel accumulates dK and dV per key tile over the query tiles that
see it, and one kernel accumulates dQ per query tile over its visible keys.
Inputs may be strided (e.g. a transposed (B, T, H, D) projection); fp32 inputs use IEEE fp32 dots
(no TF32), fp16/bf16 inputs use tensor cores with fp32 accumulation.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634


@triton.jit
def _visible(q_pos, k_pos, block_size, BLOCK_CAUSAL: tl.constexpr):
    """Boolean mask (broadcast of q_pos and k_pos): key visible from query."""
    vis = k_pos <= q_pos
    if BLOCK_CAUSAL:
        vis = vis | ((k_pos // block_size) == (q_pos // block_size))
    return vis


@triton.jit
def _key_end(q_last, block_size, n_keys, BLOCK_CAUSAL: tl.constexpr):
    """One past the last key visible from any query at positions <= q_last (clamped to n_keys)."""
    if BLOCK_CAUSAL:
        end = (q_last // block_size + 1) * block_size
    else:
        end = q_last + 1
    return tl.minimum(end, n_keys)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqh, sqt, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    sob, soh, sot, sod,
    H, T, D, qk_scale, block_size,
    BLOCK_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :] * sqd,
        mask=(offs_m[:, None] < T) & d_ok[None, :],
        other=0.0,
    )
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    q_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, T) - 1
    hi = _key_end(q_last, block_size, T, BLOCK_CAUSAL)
    for start_n in range(0, hi, BLOCK_N):
        k_pos = start_n + offs_n
        k_ok = k_pos < T
        kt = tl.load(
            k_base + k_pos[None, :] * skt + offs_d[:, None] * skd,
            mask=k_ok[None, :] & d_ok[:, None],
            other=0.0,
        )  # (BLOCK_D, BLOCK_N)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        vis = _visible(offs_m[:, None], k_pos[None, :], block_size, BLOCK_CAUSAL) & k_ok[None, :]
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: key 0 is visible from every query
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + k_pos[:, None] * svt + offs_d[None, :] * svd,
            mask=k_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    row_ok = offs_m < T
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :] * sod,
        out.to(O.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _attn_bwd_delta_kernel(
    O, DO, DELTA,
    sob, soh, sot, sod,
    sdob, sdoh, sdot, sdod,
    H, T, D,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :] * sod, mask=ok, other=0.0)
    do = tl.load(
        DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :] * sdod, mask=ok, other=0.0
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqt, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    sdob, sdoh, sdot, sdod,
    sdkb, sdkh, sdkt, sdkd,
    sdvb, sdvh, sdvt, sdvd,
    H, T, D, qk_scale, sm_scale, block_size,
    BLOCK_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    n_ok = offs_n < T
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(
        K + b * skb + h * skh + offs_n[:, None] * skt + offs_d[None, :] * skd, mask=kv_mask, other=0.0
    )
    v = tl.load(
        V + b * svb + h * svh + offs_n[:, None] * svt + offs_d[None, :] * svd, mask=kv_mask, other=0.0
    )
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdob + h * sdoh
    row_base = bh.to(tl.int64) * T
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # The first query that sees a key of this tile: the tile start (causal) or its block start.
    first_q = pid_n * BLOCK_N
    if BLOCK_CAUSAL:
        first_q = (first_q // block_size) * block_size
    lo = (first_q // BLOCK_M) * BLOCK_M
    for start_m in range(lo, T, BLOCK_M):
        q_pos = start_m + offs_m
        m_ok = q_pos < T
        qd_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + q_pos[:, None] * sqt + offs_d[None, :] * sqd, mask=qd_mask, other=0.0)
        do = tl.load(do_base + q_pos[:, None] * sdot + offs_d[None, :] * sdod, mask=qd_mask, other=0.0)
        lse = tl.load(LSE + row_base + q_pos, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + row_base + q_pos, mask=m_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        vis = (
            _visible(q_pos[None, :], offs_n[:, None], block_size, BLOCK_CAUSAL)
            & m_ok[None, :]
            & n_ok[:, None]
        )
        pt = tl.where(vis, tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # (BLOCK_N, BLOCK_M)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PREC)
    dk = dk * sm_scale
    tl.store(
        DK + b * sdkb + h * sdkh + offs_n[:, None] * sdkt + offs_d[None, :] * sdkd,
        dk.to(DK.dtype.element_ty),
        mask=kv_mask,
    )
    tl.store(
        DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvt + offs_d[None, :] * sdvd,
        dv.to(DV.dtype.element_ty),
        mask=kv_mask,
    )


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sqb, sqh, sqt, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    sdob, sdoh, sdot, sdod,
    sdqb, sdqh, sdqt, sdqd,
    H, T, D, qk_scale, sm_scale, block_size,
    BLOCK_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < T
    qd_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :] * sqd, mask=qd_mask, other=0.0
    )
    do = tl.load(
        DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :] * sdod, mask=qd_mask, other=0.0
    )
    row_base = bh.to(tl.int64) * T
    lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    q_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, T) - 1
    hi = _key_end(q_last, block_size, T, BLOCK_CAUSAL)
    for start_n in range(0, hi, BLOCK_N):
        k_pos = start_n + offs_n
        k_ok = k_pos < T
        kd_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + k_pos[:, None] * skt + offs_d[None, :] * skd, mask=kd_mask, other=0.0)
        v = tl.load(v_base + k_pos[:, None] * svt + offs_d[None, :] * svd, mask=kd_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        vis = (
            _visible(offs_m[:, None], k_pos[None, :], block_size, BLOCK_CAUSAL)
            & k_ok[None, :]
            & m_ok[:, None]
        )
        p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    dq = dq * sm_scale
    tl.store(
        DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqt + offs_d[None, :] * sdqd,
        dq.to(DQ.dtype.element_ty),
        mask=qd_mask,
    )


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _config(dtype: torch.dtype, head_dim: int) -> dict[str, object]:
    """Tile sizes and launch options for one dtype / head dim."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    prec = "ieee" if dtype == torch.float32 else None  # fp32: no TF32 rounding; 16-bit: default
    if INTERPRETED:
        return {
            "BLOCK_M": 16,
            "BLOCK_N": 16,
            "BLOCK_D": block_d,
            "DOT_PREC": prec,
            "num_warps": 1,
            "num_stages": 1,
        }
    big = 64 if (dtype != torch.float32 and block_d <= 64) else 32
    return {
        "BLOCK_M": big,
        "BLOCK_N": big,
        "BLOCK_D": block_d,
        "DOT_PREC": prec,
        "num_warps": 4,
        "num_stages": 2,
    }


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_causal: bool, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, t, d = q.shape
    out = torch.empty_like(q)  # keeps q's memory layout; strides are passed to the kernel
    lse = torch.empty((b * h, t), device=q.device, dtype=torch.float32)  # log2-sum-exp per query
    cfg = _config(q.dtype, d)
    sm_scale = 1.0 / math.sqrt(d)
    grid = (triton.cdiv(t, cfg["BLOCK_M"]), b * h)
    _attn_fwd_kernel[grid](
        q, k, v, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        h, t, d, sm_scale * LOG2E, block_size,
        BLOCK_CAUSAL=block_causal,
        **cfg,
    )  # fmt: skip
    return out, lse


def _backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    block_causal: bool,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, t, d = q.shape
    cfg = _config(q.dtype, d)
    sm_scale = 1.0 / math.sqrt(d)
    delta = torch.empty_like(lse)  # (B*H, T)
    _attn_bwd_delta_kernel[(triton.cdiv(t, cfg["BLOCK_M"]), b * h)](
        out, do, delta, *_strides(out), *_strides(do), h, t, d,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    # Gradients keep the inputs' layout when it is dense (empty_like), else are contiguous; the
    # kernels take their strides explicitly either way.
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    _attn_bwd_dkdv_kernel[(triton.cdiv(t, cfg["BLOCK_N"]), b * h)](
        q, k, v, do, lse, delta, dk, dv,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
        h, t, d, sm_scale * LOG2E, sm_scale, block_size,
        BLOCK_CAUSAL=block_causal,
        **cfg,
    )  # fmt: skip
    _attn_bwd_dq_kernel[(triton.cdiv(t, cfg["BLOCK_M"]), b * h)](
        q, k, v, do, lse, delta, dq,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        h, t, d, sm_scale * LOG2E, sm_scale, block_size,
        BLOCK_CAUSAL=block_causal,
        **cfg,
    )  # fmt: skip
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        block_causal: bool,
        block_size: int,
    ) -> torch.Tensor:
        out, lse = _forward(q, k, v, block_causal, block_size)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.block_causal = block_causal
        ctx.block_size = block_size
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, do: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, out, lse, ctx.block_causal, ctx.block_size)
        return dq, dk, dv, None, None


def attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: str = "causal", block_size: int = 6
) -> torch.Tensor:
    """Flash attention over (B, H, T, D) (differentiable). Inputs are validated by deltairis.ops."""
    if q.size(2) == 0:
        return torch.empty_like(q)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"attention_triton: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _FlashAttention.apply(q, k, v, mask == "block_causal", int(block_size))
    out, _ = _forward(q, k, v, mask == "block_causal", int(block_size))
    return out
