"""Triton fused KV-cache write + attention for incremental decoding (forward only).

Same semantics as :func:`deltairis.ops.attention.attention_kvcache_ref`: row b's ``Tq`` new tokens sit
at absolute positions ``cache_lens[b] + [0, Tq)``; their keys/values are written into the caches at
those positions, and each query attends over positions ``< cache_lens[b] + Tq`` with the causal /
block-causal mask on absolute positions (scale 1/sqrt(D)).

One program per (query tile, batch*head). Each program writes only the new rows of its own query
tile into the caches, and reads keys at positions ``>= cache_lens[b]`` straight from ``k_new`` /
``v_new`` (older positions from the cache), so programs of one row never read what another one is
writing: the write and the attention are race-free inside one launch. ``cache_lens`` is read on the
device (no host synchronisation), which keeps the op capturable in a CUDA graph. Rows whose
``cache_lens[b] + Tq`` exceeds the cache capacity are not written past the end (their output is
unspecified); the host-side checks in :mod:`deltairis.ops` reject them for CPU tensors.
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
def _attn_kvcache_kernel(
    Q, KN, VN, KC, VC, LENS, O,
    sqb, sqh, sqt, sqd,
    sknb, sknh, sknt, sknd,
    svnb, svnh, svnt, svnd,
    skcb, skch, skct, skcd,
    svcb, svch, svct, svcd,
    sob, soh, sot, sod,
    H, TQ, TMAX, D, qk_scale, block_size,
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
    cache_len = tl.load(LENS + b)
    n_written = tl.minimum(cache_len + TQ, TMAX)  # keys at positions >= n_written are never visible
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of the new tokens
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < TQ
    md_mask = m_ok[:, None] & d_ok[None, :]
    kn_base = KN + b * sknb + h * sknh
    vn_base = VN + b * svnb + h * svnh
    kc_base = KC + b * skcb + h * skch
    vc_base = VC + b * svcb + h * svch

    # 1) Write this tile's new keys/values at their absolute positions.
    q_pos = cache_len + offs_m
    w_mask = md_mask & (q_pos[:, None] < TMAX)
    k_rows = tl.load(kn_base + offs_m[:, None] * sknt + offs_d[None, :] * sknd, mask=md_mask, other=0.0)
    v_rows = tl.load(vn_base + offs_m[:, None] * svnt + offs_d[None, :] * svnd, mask=md_mask, other=0.0)
    tl.store(
        kc_base + q_pos[:, None] * skct + offs_d[None, :] * skcd, k_rows.to(KC.dtype.element_ty), mask=w_mask
    )
    tl.store(
        vc_base + q_pos[:, None] * svct + offs_d[None, :] * svcd, v_rows.to(VC.dtype.element_ty), mask=w_mask
    )

    # 2) Attend over [0, n_written): old keys from the cache, new ones from k_new / v_new.
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :] * sqd, mask=md_mask, other=0.0
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    q_last = cache_len + tl.minimum(pid_m * BLOCK_M + BLOCK_M, TQ) - 1
    if BLOCK_CAUSAL:
        hi = (q_last // block_size + 1) * block_size
    else:
        hi = q_last + 1
    hi = tl.minimum(hi, n_written)
    for start_n in range(0, hi, BLOCK_N):
        k_pos = start_n + offs_n
        old = k_pos < cache_len
        new = (k_pos >= cache_len) & (k_pos < n_written)
        new_row = k_pos - cache_len
        kt = tl.load(
            kc_base + k_pos[None, :] * skct + offs_d[:, None] * skcd,
            mask=old[None, :] & d_ok[:, None],
            other=0.0,
        )
        kt += tl.load(
            kn_base + new_row[None, :] * sknt + offs_d[:, None] * sknd,
            mask=new[None, :] & d_ok[:, None],
            other=0.0,
        ).to(kt.dtype)  # (BLOCK_D, BLOCK_N); the two masks are disjoint
        s = tl.dot(q.to(kt.dtype), kt, input_precision=DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        vis = (k_pos[None, :] <= q_pos[:, None]) & (old | new)[None, :]
        if BLOCK_CAUSAL:
            vis = vis | (
                ((k_pos[None, :] // block_size) == (q_pos[:, None] // block_size)) & (old | new)[None, :]
            )
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: key 0 is visible from every query
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            vc_base + k_pos[:, None] * svct + offs_d[None, :] * svcd,
            mask=old[:, None] & d_ok[None, :],
            other=0.0,
        )
        v += tl.load(
            vn_base + new_row[:, None] * svnt + offs_d[None, :] * svnd,
            mask=new[:, None] & d_ok[None, :],
            other=0.0,
        ).to(v.dtype)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :] * sod,
        out.to(O.dtype.element_ty),
        mask=md_mask,
    )


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def attention_kvcache_triton(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    *,
    mask: str = "causal",
    block_size: int = 6,
) -> torch.Tensor:
    """Write k_new/v_new into the caches at ``cache_lens`` and attend; returns (B, H, Tq, D).

    Inputs are validated by :func:`deltairis.ops.attention_kvcache`; the caches are updated in place.
    """
    b, h, tq, d = q.shape
    out = torch.empty_like(q)
    if tq == 0 or b * h == 0:
        return out
    if not cache_lens.is_contiguous():
        cache_lens = cache_lens.contiguous()
    block_d = max(16, triton.next_power_of_2(d))
    block_m = 16 if (INTERPRETED or tq <= 16) else 32
    if INTERPRETED:
        block_n, num_warps, num_stages = 16, 1, 1
    else:
        block_n = 64 if block_d <= 64 else 32
        num_warps, num_stages = 4, 2
    grid = (triton.cdiv(tq, block_m), b * h)
    _attn_kvcache_kernel[grid](
        q, k_new, v_new, k_cache, v_cache, cache_lens, out,
        *_strides(q), *_strides(k_new), *_strides(v_new), *_strides(k_cache), *_strides(v_cache), *_strides(out),
        h, tq, k_cache.size(2), d, LOG2E / math.sqrt(d), int(block_size),
        BLOCK_CAUSAL=mask == "block_causal",
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        DOT_PREC="ieee" if k_cache.dtype == torch.float32 else None,
        num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip
    return out
