"""Triton flash attention (forward and backward) with causal / block-causal masks computed in-kernel.

Same semantics as :func:`deltairis.ops.attention.attention_ref`: q, k, v are (B, H, T, D) with
D <= 128, scale 1/sqrt(D); query i sees key j when ``j <= i`` or (block-causal) when both lie in the
same block of ``block_size`` tokens. No mask tensor is materialised: each program derives the
visible key range of its query tile and masks the boundary tiles element-wise.

Forward: one program per (query tile, batch*head) with an online softmax in fp32 (exp2 domain),
storing the output and the log-sum-exp (base 2) for the backward pass. As in Triton's fused-attention
tutorial, each tile loop is one ``@triton.jit`` helper called for two ranges: the tiles every query
(key) of the program sees whole, with no visibility test (``MASKED=False``), and the tiles of the
diagonal band, masked element-wise. :mod:`attention_kvcache` reuses the forward's helpers.
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
def _head(H):
    """This program's (batch, head), as int64 for the pointer offsets, and its row of LSE / DELTA."""
    bh = tl.program_id(1)
    return (bh // H).to(tl.int64), (bh % H).to(tl.int64), bh.to(tl.int64)


@triton.jit
def _load_rows(base, pos, stride_t, stride_d, offs_d, row_ok, d_ok):
    """The (len(pos), BLOCK_D) tile of rows ``pos`` of one (T, D) matrix; zeros where masked."""
    return tl.load(
        base + pos[:, None] * stride_t + offs_d[None, :] * stride_d,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )


@triton.jit
def _store_rows(base, x, pos, stride_t, stride_d, offs_d, row_ok, d_ok):
    """Store ``x`` (fp32) as rows ``pos`` of one (T, D) matrix, in its element type."""
    tl.store(
        base + pos[:, None] * stride_t + offs_d[None, :] * stride_d,
        x.to(base.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q, q_pos,
    k_base, skt, skd, v_base, svt, svd,
    kn_base, sknt, sknd, vn_base, svnt, svnd,
    split, n_keys, start, stop, qk_scale, block_size, offs_d, d_ok,
    BLOCK_CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    TWO_SOURCES: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Online softmax of the queries ``q`` (at positions ``q_pos``) over the key tiles in [start, stop).

    Keys and values of positions [0, n_keys) are read from ``k_base`` / ``v_base``; with
    ``TWO_SOURCES`` only those below ``split``, the others from row ``pos - split`` of ``kn_base`` /
    ``vn_base`` (the KV cache's new tokens). ``MASKED=False`` (tiles below the diagonal band, every key
    of which exists and is visible from every query) skips the visibility test; ``MASKED=True``
    applies the causal / block-causal mask and the ``n_keys`` bound. Returns the updated
    (acc, l_i, m_i); scores are in log2 units (``qk_scale`` includes log2(e)).
    """
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(start, stop, BLOCK_N):
        k_pos = start_n + offs_n
        if TWO_SOURCES:
            old = k_pos < split
            new = (k_pos >= split) & (k_pos < n_keys)
            new_row = k_pos - split
            kt = tl.trans(_load_rows(k_base, k_pos, skt, skd, offs_d, old, d_ok))  # (BLOCK_D, BLOCK_N)
            kt += tl.trans(_load_rows(kn_base, new_row, sknt, sknd, offs_d, new, d_ok)).to(kt.dtype)
            v = _load_rows(v_base, k_pos, svt, svd, offs_d, old, d_ok)  # (BLOCK_N, BLOCK_D)
            v += _load_rows(vn_base, new_row, svnt, svnd, offs_d, new, d_ok).to(v.dtype)  # disjoint masks
        else:
            k_ok = k_pos < n_keys
            kt = tl.trans(_load_rows(k_base, k_pos, skt, skd, offs_d, k_ok, d_ok))
            v = _load_rows(v_base, k_pos, svt, svd, offs_d, k_ok, d_ok)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            vis = (
                _visible(q_pos[:, None], k_pos[None, :], block_size, BLOCK_CAUSAL) & (k_pos < n_keys)[None, :]
            )
            s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: key 0 is visible from every query
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_tile(
    q, q_first, q_last, q_pos,
    k_base, skt, skd, v_base, svt, svd,
    kn_base, sknt, sknd, vn_base, svnt, svnd,
    split, n_keys, qk_scale, block_size, offs_d, d_ok,
    BLOCK_CAUSAL: tl.constexpr,
    TWO_SOURCES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Attention of one query tile (positions q_first..q_last): the unmasked key tiles, then the
    masked ones of the diagonal band. Returns (out, m_i + log2(l_i)) in fp32."""
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Keys below _key_end(q_first) are visible from every query of the tile (and the later ones).
    mid = (_key_end(q_first, block_size, n_keys, BLOCK_CAUSAL) // BLOCK_N) * BLOCK_N
    hi = _key_end(q_last, block_size, n_keys, BLOCK_CAUSAL)
    for stage in tl.static_range(2):  # unmasked key tiles [0, mid), then the masked band [mid, hi)
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, q_pos,
            k_base, skt, skd, v_base, svt, svd, kn_base, sknt, sknd, vn_base, svnt, svnd,
            split, n_keys, 0 if stage == 0 else mid, mid if stage == 0 else hi, qk_scale, block_size,
            offs_d, d_ok, BLOCK_CAUSAL, stage == 1, TWO_SOURCES, BLOCK_N, DOT_PREC,
        )  # fmt: skip
    return acc / l_i[:, None], m_i + tl.log2(l_i)


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
    b, h, row = _head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < T
    q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqt, sqd, offs_d, m_ok, d_ok)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    q_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, T) - 1
    out, lse = _attn_fwd_tile(
        q, pid_m * BLOCK_M, q_last, offs_m,
        k_base, skt, skd, v_base, svt, svd, k_base, skt, skd, v_base, svt, svd,
        T, T, qk_scale, block_size, offs_d, d_ok,
        BLOCK_CAUSAL, False, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC,
    )  # fmt: skip
    _store_rows(O + b * sob + h * soh, out, offs_m, sot, sod, offs_d, m_ok, d_ok)
    tl.store(LSE + row * T + offs_m, lse, mask=m_ok)


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
    b, h, row = _head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    d_ok = offs_d < D
    o = _load_rows(O + b * sob + h * soh, offs_m, sot, sod, offs_d, m_ok, d_ok)
    do = _load_rows(DO + b * sdob + h * sdoh, offs_m, sdot, sdod, offs_d, m_ok, d_ok)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + row * T + offs_m, delta, mask=m_ok)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v, k_pos,
    q_base, sqt, sqd, do_base, sdot, sdod, lse_base, delta_base,
    T, start, stop, qk_scale, block_size, offs_d, d_ok,
    BLOCK_CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key tile (positions ``k_pos``) accumulated over the query tiles in [start, stop).

    ``MASKED=False``: queries that see every key of the tile (only the bound ``q < T`` is applied).
    """
    offs_m = tl.arange(0, BLOCK_M)
    for start_m in range(start, stop, BLOCK_M):
        q_pos = start_m + offs_m
        m_ok = q_pos < T
        q = _load_rows(q_base, q_pos, sqt, sqd, offs_d, m_ok, d_ok)
        do = _load_rows(do_base, q_pos, sdot, sdod, offs_d, m_ok, d_ok)
        lse = tl.load(lse_base + q_pos, mask=m_ok, other=0.0)
        delta = tl.load(delta_base + q_pos, mask=m_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        vis = m_ok[None, :]
        if MASKED:
            vis = vis & _visible(q_pos[None, :], k_pos[:, None], block_size, BLOCK_CAUSAL)
        pt = tl.where(vis, tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # (BLOCK_N, BLOCK_M)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


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
    b, h, row = _head(H)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    n_ok = offs_n < T
    k = _load_rows(K + b * skb + h * skh, offs_n, skt, skd, offs_d, n_ok, d_ok)
    v = _load_rows(V + b * svb + h * svh, offs_n, svt, svd, offs_d, n_ok, d_ok)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Query tiles from the first query that sees a key of this tile (the tile start, causal, or its
    # block start) are masked up to the first query that sees all of them (the last key, or its
    # block start); the later ones are not.
    first_q = pid_n * BLOCK_N
    all_q = tl.minimum(first_q + BLOCK_N, T) - 1
    if BLOCK_CAUSAL:
        first_q = (first_q // block_size) * block_size
        all_q = (all_q // block_size) * block_size
    lo = (first_q // BLOCK_M) * BLOCK_M
    mid = tl.cdiv(all_q, BLOCK_M) * BLOCK_M
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdob + h * sdoh
    for stage in tl.static_range(2):  # masked band [lo, mid), then the unmasked rest [mid, T)
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, offs_n, q_base, sqt, sqd, do_base, sdot, sdod, LSE + row * T, DELTA + row * T,
            T, lo if stage == 0 else mid, mid if stage == 0 else T, qk_scale, block_size, offs_d, d_ok,
            BLOCK_CAUSAL, stage == 0, BLOCK_M, DOT_PREC,
        )  # fmt: skip
    _store_rows(DK + b * sdkb + h * sdkh, dk * sm_scale, offs_n, sdkt, sdkd, offs_d, n_ok, d_ok)
    _store_rows(DV + b * sdvb + h * sdvh, dv, offs_n, sdvt, sdvd, offs_d, n_ok, d_ok)


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta, q_pos,
    k_base, skt, skd, v_base, svt, svd,
    T, start, stop, qk_scale, block_size, offs_d, d_ok,
    BLOCK_CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    """dQ of one query tile accumulated over the key tiles in [start, stop) (ranges as the forward's)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(start, stop, BLOCK_N):
        k_pos = start_n + offs_n
        k_ok = k_pos < T
        k = _load_rows(k_base, k_pos, skt, skd, offs_d, k_ok, d_ok)
        v = _load_rows(v_base, k_pos, svt, svd, offs_d, k_ok, d_ok)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        if MASKED:
            vis = _visible(q_pos[:, None], k_pos[None, :], block_size, BLOCK_CAUSAL) & k_ok[None, :]
            p = tl.where(vis, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


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
    b, h, row = _head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < T
    q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqt, sqd, offs_d, m_ok, d_ok)
    do = _load_rows(DO + b * sdob + h * sdoh, offs_m, sdot, sdod, offs_d, m_ok, d_ok)
    lse = tl.load(LSE + row * T + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + row * T + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    mid = (_key_end(pid_m * BLOCK_M, block_size, T, BLOCK_CAUSAL) // BLOCK_N) * BLOCK_N
    hi = _key_end(tl.minimum(pid_m * BLOCK_M + BLOCK_M, T) - 1, block_size, T, BLOCK_CAUSAL)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    for stage in tl.static_range(2):  # unmasked key tiles [0, mid), then the masked band [mid, hi)
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, offs_m, k_base, skt, skd, v_base, svt, svd,
            T, 0 if stage == 0 else mid, mid if stage == 0 else hi, qk_scale, block_size, offs_d, d_ok,
            BLOCK_CAUSAL, stage == 1, BLOCK_N, DOT_PREC,
        )  # fmt: skip
    _store_rows(DQ + b * sdqb + h * sdqh, dq * sm_scale, offs_m, sdqt, sdqd, offs_d, m_ok, d_ok)


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
