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
    """Encode values ``x`` (...) as (..., num_buckets) weights on the two nearest buckets.

    Values outside [low, high] are clamped. ``sum(two_hot(x) * buckets) == clamp(x)``.
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    x = x.float().clamp(low, high)
    pos = (x - low) / (high - low) * (num_buckets - 1)
    lo = pos.floor().clamp(max=num_buckets - 2)
    w_hi = pos - lo
    lo = lo.long()
    out = torch.zeros(*x.shape, num_buckets, device=x.device)
    out.scatter_(-1, lo.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, (lo + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return out
