"""Triton Gumbel-max categorical sampling with counter-based random numbers.

Same semantics as :func:`deltairis.ops.sampling.sample_categorical_ref`: element ``i`` of the
(logically C-ordered) logits draws the 32-bit word ``counter_uint32(i, seed, offset)``, built from
two lowbias32 rounds keyed by :func:`deltairis.ops.sampling.stream_keys`. The hash uses uint32
arithmetic, so both backends draw the same words; the uniform and Gumbel transforms are the same
float32 expressions, so for equal logits the samples agree except on float ties (a last-ulp
difference between two ``log`` implementations can flip an exact near-tie).

One program handles ``BLOCK_R`` rows and scans them in chunks of ``BLOCK_V`` columns, keeping a
running (max, argmax) per row; ties go to the lowest index like ``torch.argmax``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from deltairis.ops.sampling import GOLDEN, MUL1, MUL2, check_row_offset, seed_key, stream_keys

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
    n_rows,
    stride_row,
    stride_col,
    n_cols,
    first_row,
    k0,
    k1,
    offset_ptr,
    temperature,
    OFFSET_ON_DEVICE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    row_ok = rows < n_rows
    # k0/k1 arrive as int64 with bit 32 set (never specialised as the constant 1); truncate.
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    if OFFSET_ON_DEVICE:
        # k0 holds the seed's key; finish stream_keys with the offset read now (CUDA-graph safe).
        off = tl.load(offset_ptr).to(tl.int64)
        key0 = _lowbias32(key0 ^ off.to(tl.uint32))
        key1 = _lowbias32(key0 ^ _lowbias32((off >> 32).to(tl.uint32) ^ _GOLDEN))
    cols = tl.arange(0, BLOCK_V)
    best_val = tl.full([BLOCK_R], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_R], tl.int32)
    row_ptr = logits_ptr + rows.to(tl.int64)[:, None] * stride_row  # (BLOCK_R, 1)
    for start in range(0, n_cols, BLOCK_V):
        c = start + cols
        valid = row_ok[:, None] & (c < n_cols)[None, :]  # (BLOCK_R, BLOCK_V)
        logit = tl.load(row_ptr + c[None, :] * stride_col, mask=valid, other=0.0).to(tl.float32)
        # Flat element index of the C-ordered logits, shifted by the row offset (< 2^31, checked by the
        # launcher).
        flat = ((rows[:, None] + first_row) * n_cols + c[None, :]).to(tl.uint32)
        x = (flat * _GOLDEN) ^ key0
        x = _lowbias32(x)
        x = _lowbias32(x ^ key1)
        u = ((x >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        gumbel = -tl.log(-tl.log(u))
        score = logit / temperature + gumbel
        score = tl.where(valid & (score == score), score, float("-inf"))  # noqa: PLR0124 - drop padding, NaN
        chunk_max = tl.max(score, axis=1)
        chunk_idx = tl.argmax(score, axis=1, tie_break_left=True).to(tl.int32) + start
        better = chunk_max > best_val  # strict: earlier chunks win ties
        best_idx = tl.where(better, chunk_idx, best_idx)
        best_val = tl.where(better, chunk_max, best_val)
    tl.store(out_ptr + rows, best_idx.to(tl.int64), mask=row_ok)


def sample_categorical_triton(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int,
    offset: int | torch.Tensor,
    row_offset: int = 0,
) -> torch.Tensor:
    """Gumbel-max sample over the last dim of ``logits`` (..., V) -> int64 (...).

    ``offset`` may be a one-element integer tensor on the logits' device: it is then read by the
    kernel, so a captured CUDA graph samples from the offset current at replay time. ``row_offset``:
    the global index of the first row (a slice of a larger batch draws that batch's words).
    """
    row_offset = check_row_offset(row_offset)
    if logits.numel() + row_offset * logits.size(-1) >= 2**31:
        raise ValueError(
            f"sample_categorical_triton: logits have {logits.numel()} elements after a row offset of "
            f"{row_offset} rows, limit is 2^31 - 1"
        )
    on_device = isinstance(offset, torch.Tensor)
    if on_device:
        k0, k1 = seed_key(seed), 0
        offset_arg = offset.reshape(1)
        if offset_arg.dtype != torch.int64:
            offset_arg = offset_arg.to(torch.int64)  # a copy: advance the caller's int64 tensor for graphs
    else:
        k0, k1 = stream_keys(seed, offset)
        offset_arg = logits  # unused pointer
    n_cols = logits.size(-1)
    rows = logits.reshape(-1, n_cols)  # (N, V), a view when possible
    n_rows = rows.size(0)
    out = torch.empty(n_rows, dtype=torch.int64, device=logits.device)
    if n_rows == 0:
        return out.view(logits.shape[:-1])
    # Tiles of about 2048 elements: one row per program for wide rows (longer than 1024 columns
    # are scanned in chunks), many rows per program for narrow ones (reward / end heads).
    block_v = max(16, min(triton.next_power_of_2(n_cols), 1024))
    block_r = max(1, min(2048 // block_v, triton.next_power_of_2(n_rows)))
    _sample_kernel[(triton.cdiv(n_rows, block_r),)](
        rows,
        out,
        n_rows,
        rows.stride(0),
        rows.stride(1),
        n_cols,
        row_offset,
        k0 | (1 << 32),
        k1 | (1 << 32),
        offset_arg,
        float(temperature),
        OFFSET_ON_DEVICE=on_device,
        BLOCK_R=block_r,
        BLOCK_V=block_v,
        num_warps=4,
    )
    return out.view(logits.shape[:-1])
