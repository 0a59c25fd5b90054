"""Expected value of a two-hot (symlog-bucket) distribution."""

from __future__ import annotations

import torch

from deltairis.ops._dispatch import choose


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * ln(|x| + 1), written as the reference writes it (not log1p) so labels match bit for bit."""
    return torch.sign(x) * torch.log(torch.abs(x) + 1)


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * (exp(|x|) - 1), the inverse of :func:`symlog` (the reference's formula, not expm1)."""
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


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
