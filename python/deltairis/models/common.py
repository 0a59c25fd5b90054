"""Small shared pieces: loss outputs and masked reductions (no host synchronisation).

Every mean of a loss or metric goes through :func:`masked_mean` or :func:`mean`. Inside
:func:`deltairis.distributed.sharded_losses` (a rank's slice of a distributed batch) they divide the
rank's sum by the global count over world size (:func:`deltairis.distributed.global_count`), so that
the average over ranks of a loss, its gradient or a metric is the single-process mean over the whole
batch, also when the ranks hold slices of different sizes. Outside, they are plain means.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from deltairis import distributed


class LossOutput(NamedTuple):
    """A differentiable total loss and on-device metrics (reduce them once per log interval)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def init_reference_weights(module: nn.Module) -> None:
    """The reference's initialisation of the tokenizer and the world model (``model.apply(...)``).

    Linear and Embedding weights from N(0, 0.02), Linear biases zero, LayerNorm weight 1 and bias 0;
    convolutions keep PyTorch's default initialisation, as in the reference.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is True (broadcast over trailing dims of x); 0 if none."""
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(x)
    if distributed.losses_are_sharded():
        return (x * m).sum() / distributed.global_count(m.sum(), minimum=1.0)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean()`` over every entry (inside ``sharded_losses``: this rank's share of the global mean)."""
    if distributed.losses_are_sharded():
        n = torch.tensor(float(x.numel()), device=x.device, dtype=torch.float32)
        return x.sum() / distributed.global_count(n).to(x.dtype)
    return x.mean()
