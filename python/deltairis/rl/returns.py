"""λ-returns over imagined trajectories (docs/algorithm.md section 5)."""

from __future__ import annotations

import torch


def lambda_returns(
    rew: torch.Tensor, values: torch.Tensor, end: torch.Tensor, gamma: float, lambda_: float
) -> torch.Tensor:
    """G_i = r_i + γ (1 - e_i) [(1 - λ) V_{i+1} + λ G_{i+1}], with G_H = V_H.

    rew (B, H), end (B, H) (bool or {0, 1}), values (B, H + 1): the value of every imagined frame,
    the last one bootstrapping. Returns (B, H) in the inputs' dtype (float32 at least).
    """
    if rew.dim() != 2 or values.shape != (rew.size(0), rew.size(1) + 1) or end.shape != rew.shape:
        raise ValueError(
            f"expected rew (B, H), end (B, H), values (B, H+1); got {tuple(rew.shape)}, {tuple(end.shape)}, {tuple(values.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(rew.dtype, values.dtype), torch.float32)
    cont = 1.0 - end.to(dtype)
    out = torch.empty_like(rew, dtype=dtype)
    g = values[:, -1].to(dtype)
    for i in reversed(range(rew.size(1))):
        g = rew[:, i].to(dtype) + gamma * cont[:, i] * (
            (1.0 - lambda_) * values[:, i + 1].to(dtype) + lambda_ * g
        )
        out[:, i] = g
    return out
