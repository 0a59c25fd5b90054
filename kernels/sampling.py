"""Triton Gumbel-max categorical sampling with counter-based random numbers.

Same semantics as :func:`deltairis.ops.sampling.sample_categorical_ref`: element ``i`` of the
(logically C-ordered) logits draws the 32-bit word ``counter_uint32(i, seed, offset)``, built from
two lowbias32 rounds keyed by :func:`deltairis.ops.sampling.stream_keys`. The hash uses uint32
arithmetic, so both backends draw the same words; the uniform and Gumbel transforms are the same
float32 expressions, so for equal logits the samples agree except on float ties (a last-ulp
difference between two ``log`` implementations can flip an exact near-tie).

One program handles one row and scans it in chunks of ``BLOCK_V`` columns, keeping a running
(max, argmax); ties go to the lowest index like ``torch.argmax``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from deltairis.ops.sampling import GOLDEN, MUL1, MUL2, stream_keys

# The mode (compiled or interpreted) these kernels were decorated in; the dispatcher reloads the
# module when TRITON_INTERPRET changes afterwards.
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Globals read inside @triton.jit functions must be constexpr.
_GOLDEN = tl.constexpr(GOLDEN)
_MUL1 = tl.constexpr(MUL1)
_MUL2 = tl.constexpr(MUL2)


@triton.jit
def _lowbias32(x):
    # x: uint32; multiplications wrap modulo 2^32, shifts are logical.
    x = x ^ (x >> 16)
    x = x * _MUL1
    x = x ^ (x >> 15)
    x = x * _MUL2
    x = x ^ (x >> 16)
    return x


@triton.jit
def _sample_kernel(
    logits_ptr,
    out_ptr,
    stride_row,
    stride_col,
    n_cols,
    k0,
    k1,
    temperature,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    cols = tl.arange(0, BLOCK_V)
    best_val = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    for start in range(0, n_cols, BLOCK_V):
        c = start + cols
        valid = c < n_cols
        logit = tl.load(row_ptr + c * stride_col, mask=valid, other=0.0).to(tl.float32)
        # Flat element index of the C-ordered logits (< 2^31, checked by the launcher).
        flat = (row * n_cols + c).to(tl.uint32)
        x = (flat * _GOLDEN) ^ key0
        x = _lowbias32(x)
        x = _lowbias32(x ^ key1)
        u = ((x >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        gumbel = -tl.log(-tl.log(u))
        score = logit / temperature + gumbel
        score = tl.where(valid & (score == score), score, float("-inf"))  # drop padding and NaN
        chunk_max = tl.max(score, axis=0)
        chunk_idx = tl.argmax(score, axis=0, tie_break_left=True).to(tl.int32) + start
        better = chunk_max > best_val  # strict: earlier chunks win ties
        best_idx = tl.where(better, chunk_idx, best_idx)
        best_val = tl.where(better, chunk_max, best_val)
    tl.store(out_ptr + row, best_idx.to(tl.int64))


def sample_categorical_triton(
    logits: torch.Tensor, *, temperature: float = 1.0, seed: int, offset: int
) -> torch.Tensor:
    """Gumbel-max sample over the last dim of ``logits`` (..., V) -> int64 (...)."""
    if logits.numel() >= 2**31:
        raise ValueError(f"sample_categorical_triton: logits have {logits.numel()} elements, limit is 2^31 - 1")
    k0, k1 = stream_keys(seed, offset)
    n_cols = logits.size(-1)
    rows = logits.reshape(-1, n_cols)  # (N, V), a view when possible
    out = torch.empty(rows.size(0), dtype=torch.int64, device=logits.device)
    if rows.size(0) == 0:
        return out.view(logits.shape[:-1])
    block_v = max(16, min(triton.next_power_of_2(n_cols), 1024))  # rows longer than 1024 take several chunks
    _sample_kernel[(rows.size(0),)](
        rows,
        out,
        rows.stride(0),
        rows.stride(1),
        n_cols,
        k0,
        k1,
        float(temperature),
        BLOCK_V=block_v,
        num_warps=4 if block_v >= 512 else 1,
    )
    return out.view(logits.shape[:-1])
