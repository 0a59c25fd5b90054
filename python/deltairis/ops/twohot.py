"""Two-hot encoding over evenly spaced buckets (in symlog space for rewards and values): the labels
(:func:`two_hot`, the reference's rule bit for bit), symlog/symexp and the expected value of two-hot logits
(:func:`twohot_expectation`, with a Triton fast path)."""

from __future__ import annotations

import torch

from deltairis.ops._dispatch import choose


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * ln(|x| + 1), written as the reference writes it (not log1p) so labels match bit for bit."""
    return torch.sign(x) * torch.log(torch.abs(x) + 1)


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * (exp(|x|) - 1), the inverse of :func:`symlog` (the reference's formula, not expm1)."""
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


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


def twohot_expectation_ref(logits: torch.Tensor, *, low: float = -20.0, high: float = 20.0) -> torch.Tensor:
    """symexp(sum_i softmax(logits)_i * bucket_i) with logits.size(-1) evenly spaced buckets in [low, high]."""
    if logits.dim() < 1 or logits.size(-1) < 2:
        raise ValueError(
            f"twohot logits need at least 2 buckets in the last dim, got shape {tuple(logits.shape)}"
        )
    if not high > low:
        raise ValueError(f"need high > low, got low={low}, high={high}")
    buckets = torch.linspace(low, high, logits.size(-1), device=logits.device, dtype=torch.float32)
    probs = torch.softmax(logits.float(), dim=-1)
    return symexp((probs * buckets).sum(dim=-1))


def twohot_expectation(
    logits: torch.Tensor, *, low: float = -20.0, high: float = 20.0, backend: str | None = None
) -> torch.Tensor:
    """Expected value (in reward/value space) of two-hot logits (..., K) -> float32 (...)."""
    if logits.dim() < 1 or logits.size(-1) < 2:
        raise ValueError(
            f"twohot logits need at least 2 buckets in the last dim, got shape {tuple(logits.shape)}"
        )

    def supported() -> str | None:
        if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"dtype {logits.dtype}"
        if logits.size(-1) > 4096:
            return f"{logits.size(-1)} buckets > 4096"
        return None

    fn = choose("twohot_expectation", (logits,), backend, supported, ("twohot", "twohot_expectation_triton"))
    if fn is None:
        return twohot_expectation_ref(logits, low=low, high=high)
    return fn(logits, low=low, high=high)
