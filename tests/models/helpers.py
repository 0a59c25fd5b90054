"""Small builders shared by the model tests."""

from __future__ import annotations

import torch

from deltairis.data import Batch


def make_batch(
    b: int, t: int, num_actions: int, *, pad_left: int = 0, pad_right: int = 0, seed: int = 0
) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(b, t, 3, 64, 64, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    if pad_left:
        mask[0, :pad_left] = False
        obs[0, :pad_left] = 0
    if pad_right:
        mask[-1, t - pad_right :] = False
        obs[-1, t - pad_right :] = 0
    return Batch(
        obs=obs,
        act=torch.randint(0, num_actions, (b, t), generator=g),
        rew=torch.randn(b, t, generator=g),
        end=torch.zeros(b, t, dtype=torch.uint8),
        trunc=torch.zeros(b, t, dtype=torch.uint8),
        mask_padding=mask,
        episode_id=torch.zeros(b, dtype=torch.long),
        start=torch.zeros(b, dtype=torch.long),
        stop=torch.full((b,), t, dtype=torch.long),
    )
