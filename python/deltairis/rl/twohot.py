"""Two-hot encoding over evenly spaced buckets (in symlog space for rewards and values)."""

from __future__ import annotations

import torch

from deltairis.ops.twohot import symexp, symlog

__all__ = ["buckets", "symexp", "symlog", "two_hot"]


def buckets(
    num_buckets: int, low: float, high: float, device: torch.device | str | None = None
) -> torch.Tensor:
    return torch.linspace(low, high, num_buckets, device=device)


def two_hot(x: torch.Tensor, num_buckets: int, low: float, high: float) -> torch.Tensor:
    """Encode values ``x`` (...) as (..., num_buckets) weights on the two neighbouring buckets.

    Bit for bit the reference's labels: ``x`` (float32) is clamped to ``[low, high - 1e-5]``, located
    on the float32 grid ``linspace(low, high, num_buckets)`` with ``searchsorted`` (left side), and split
    linearly between buckets ``k`` and ``k + 1`` as ``(b[k+1] - x, x - b[k]) / (b[k+1] - b[k])``. The
    one value the reference cannot encode, ``x == low`` exactly (it would index bucket -1), puts all
    weight on bucket 0. ``sum(two_hot(x) * buckets) == clamp(x)`` up to rounding.
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    if not high > low:
        raise ValueError(f"need high > low, got low={low}, high={high}")
    x = x.float().clamp(low, high - 1e-5)
    grid = torch.linspace(low, high, num_buckets, device=x.device)  # float32, as in the reference
    k = (torch.searchsorted(grid, x.contiguous()) - 1).clamp(min=0)
    lo, hi = grid[k], grid[k + 1]
    width = hi - lo
    w = torch.stack((hi - x, x - lo), dim=-1) / width.unsqueeze(-1)  # (..., 2)
    out = torch.zeros(*x.shape, num_buckets, device=x.device)
    return out.scatter_(-1, torch.stack((k, k + 1), dim=-1), w)
