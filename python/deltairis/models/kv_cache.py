"""An explicit, preallocated key/value cache for incremental decoding.

The cache is a plain object passed into and returned from the transformer, never hidden on a module.
``size`` (a Python int, equal for every row) drives positions and overflow checks without touching
the device; ``lens`` (int32 (B,)) is the same information on the device for the attention op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    k: torch.Tensor  # (num_layers, B, H, max_tokens, D)
    v: torch.Tensor  # (num_layers, B, H, max_tokens, D)
    lens: torch.Tensor  # (B,) int32
    size: int = 0

    @classmethod
    def empty(
        cls,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_tokens: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        shape = (num_layers, batch_size, num_heads, max_tokens, head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            lens=torch.zeros(batch_size, device=device, dtype=torch.int32),
            size=0,
        )

    @property
    def max_tokens(self) -> int:
        return self.k.size(3)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def remaining(self) -> int:
        return self.max_tokens - self.size

    def reset(self) -> KVCache:
        """Forget every cached token. The buffers are reused and zeroed: a masked position gets an attention
        weight of exactly 0, and 0 times a stale NaN (left by a rollout whose step the non-finite guard
        skipped) would be NaN in every later rollout; 0 times 0 changes nothing."""
        self.k.zero_()
        self.v.zero_()
        self.lens.zero_()
        self.size = 0
        return self

    def advance(self, n: int) -> None:
        self.lens.add_(n)
        self.size += n
