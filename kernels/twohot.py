"""Triton expected value of two-hot logits: symexp(softmax(logits) . buckets).

Same semantics as :func:`deltairis.ops.twohot.twohot_expectation_ref`. One program reduces one row
of K <= 4096 logits in a single block; the buckets are generated in the kernel with the same
symmetric formula as ``torch.linspace`` (``low + step * i`` in the first half, ``high - step *
(K - 1 - i)`` in the second), and ``expm1`` uses a short Taylor series near 0 so small values keep
their relative precision.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _twohot_kernel(
    logits_ptr,
    out_ptr,
    stride_row,
    stride_col,
    n_buckets,
    low,
    high,
    step,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    idx = tl.arange(0, BLOCK_K)
    valid = idx < n_buckets
    x = tl.load(
        logits_ptr + row.to(tl.int64) * stride_row + idx * stride_col, mask=valid, other=float("-inf")
    )
    x = x.to(tl.float32)
    x = x - tl.max(x, axis=0)
    e = tl.where(valid, tl.exp(x), 0.0)
    fi = idx.to(tl.float32)
    first_half = idx < n_buckets // 2
    bucket = tl.where(first_half, low + step * fi, high - step * ((n_buckets - 1) - idx).to(tl.float32))
    mean = tl.sum(e * bucket, axis=0) / tl.sum(e, axis=0)
    a = tl.abs(mean)
    # expm1(a): Taylor series below 0.1 (truncation < 3e-11 relative), exp(a) - 1 above.
    taylor = a * (
        1.0 + a * (0.5 + a * (1.0 / 6.0 + a * (1.0 / 24.0 + a * (1.0 / 120.0 + a * (1.0 / 720.0)))))
    )
    mag = tl.where(a < 0.1, taylor, tl.exp(a) - 1.0)
    out = tl.where(mean < 0, -mag, mag)
    tl.store(out_ptr + row, out)


def twohot_expectation_triton(
    logits: torch.Tensor, *, low: float = -20.0, high: float = 20.0
) -> torch.Tensor:
    """Expected value of two-hot logits (..., K) -> float32 (...)."""
    n_buckets = logits.size(-1)
    if n_buckets > 4096:
        raise ValueError(f"twohot_expectation_triton: {n_buckets} buckets, limit is 4096")
    rows = logits.reshape(-1, n_buckets)  # (N, K)
    out = torch.empty(rows.size(0), dtype=torch.float32, device=logits.device)
    if rows.size(0) > 0:
        block_k = max(16, triton.next_power_of_2(n_buckets))
        step = (float(high) - float(low)) / (n_buckets - 1)
        _twohot_kernel[(rows.size(0),)](
            rows,
            out,
            rows.stride(0),
            rows.stride(1),
            n_buckets,
            float(low),
            float(high),
            step,
            BLOCK_K=block_k,
            num_warps=4 if block_k >= 1024 else 2,
        )
    return out.view(logits.shape[:-1])
