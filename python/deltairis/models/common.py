"""Small shared pieces: loss outputs and masked reductions (no host synchronisation)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    """A differentiable total loss and on-device metrics (reduce them once per log interval)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is True (broadcast over trailing dims of x); 0 if none."""
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(x)
    return (x * m).sum() / m.sum().clamp(min=1.0)
