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

import importlib
import math
import os

import torch
import triton
import triton.language as tl

from deltairis.kernels import attention as _attention

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The shared jit helpers must be decorated in this module's mode (an earlier import may have used the other).
if _attention.INTERPRETED != INTERPRETED:
    _attention = importlib.reload(_attention)
_attn_fwd_tile = _attention._attn_fwd_tile
_head = _attention._head
_load_rows = _attention._load_rows
_store_rows = _attention._store_rows
_strides = _attention._strides
LOG2E = _attention.LOG2E


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
    b, h, _ = _head(H)
    cache_len = tl.load(LENS + b)
    n_written = tl.minimum(cache_len + TQ, TMAX)  # keys at positions >= n_written are never visible
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of the new tokens
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < TQ
    kn_base = KN + b * sknb + h * sknh
    vn_base = VN + b * svnb + h * svnh
    kc_base = KC + b * skcb + h * skch
    vc_base = VC + b * svcb + h * svch

    # 1) Write this tile's new keys/values at their absolute positions.
    q_pos = cache_len + offs_m
    w_ok = m_ok & (q_pos < TMAX)
    k_rows = _load_rows(kn_base, offs_m, sknt, sknd, offs_d, m_ok, d_ok)
    _store_rows(kc_base, k_rows, q_pos, skct, skcd, offs_d, w_ok, d_ok)
    v_rows = _load_rows(vn_base, offs_m, svnt, svnd, offs_d, m_ok, d_ok)
    _store_rows(vc_base, v_rows, q_pos, svct, svcd, offs_d, w_ok, d_ok)

    # 2) Attend over [0, n_written): old keys from the cache, new ones from k_new / v_new.
    q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqt, sqd, offs_d, m_ok, d_ok).to(KC.dtype.element_ty)
    out, _ = _attn_fwd_tile(
        q, cache_len + pid_m * BLOCK_M, cache_len + tl.minimum(pid_m * BLOCK_M + BLOCK_M, TQ) - 1, q_pos,
        kc_base, skct, skcd, vc_base, svct, svcd, kn_base, sknt, sknd, vn_base, svnt, svnd,
        tl.minimum(cache_len, n_written), n_written, qk_scale, block_size, offs_d, d_ok,
        BLOCK_CAUSAL, True, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC,
    )  # fmt: skip
    _store_rows(O + b * sob + h * soh, out, offs_m, sot, sod, offs_d, m_ok, d_ok)


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
