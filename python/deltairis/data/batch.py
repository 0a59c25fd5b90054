"""The training batch shared by the replay store, the losses and the trainer."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass
class Batch:
    """A batch of B segments of T steps.

    obs          uint8 (B, T, 3, 64, 64) on the host; float32 in [0, 1] after :meth:`to`
    act          int64 (B, T)
    rew          float32 (B, T)
    end          uint8 (B, T)   termination (the episode really ended after this step)
    trunc        uint8 (B, T)   truncation (time limit)
    mask_padding bool (B, T)    True where the step is real, False for padding
    episode_id   int64 (B,)     segment ids: episode, start (may be < 0) and stop (may exceed length)
    start        int64 (B,)
    stop         int64 (B,)
    """

    obs: torch.Tensor
    act: torch.Tensor
    rew: torch.Tensor
    end: torch.Tensor
    trunc: torch.Tensor
    mask_padding: torch.Tensor
    episode_id: torch.Tensor
    start: torch.Tensor
    stop: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.act.size(0))

    @property
    def seq_len(self) -> int:
        return int(self.act.size(1))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move to ``device``; uint8 frames become float32 in [0, 1]."""
        values = {}
        for f in fields(self):
            t = getattr(self, f.name)
            t = t.to(device, non_blocking=non_blocking)
            if f.name == "obs" and t.dtype == torch.uint8:
                t = t.float().div_(255.0)
            values[f.name] = t
        return Batch(**values)

    @classmethod
    def from_numpy(cls, **arrays: np.ndarray) -> Batch:
        """Wrap NumPy arrays (no copy when possible)."""
        return cls(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
