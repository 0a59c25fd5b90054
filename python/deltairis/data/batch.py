"""The training batch shared by the replay store, the losses and the trainer."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from deltairis.data.fields import BATCH_FIELD_NAMES, FIELDS_BY_NAME


@dataclass
class Batch:
    """A batch of B segments of T steps.

    Step fields (obs, act, rew, end, trunc, mask_padding) are (B, T, ...), segment ids (episode_id, start,
    stop) are (B,); ``obs`` is uint8 on the host and float32 in [0, 1] after :meth:`to`. Dtypes, shapes and
    meanings: :data:`deltairis.data.fields.BATCH_FIELDS`, which these fields must match (checked at import).
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

    def __post_init__(self) -> None:
        # NumPy views of the tensors once a replay store checked them as ``out`` (not a dataclass field).
        self.host_buffers: Any = None  # a deltairis.data.buffers.BatchBuffers, or None

    @property
    def batch_size(self) -> int:
        return int(self.act.size(0))

    @property
    def seq_len(self) -> int:
        return int(self.act.size(1))

    def rows(self, rows: slice) -> Batch:
        """The segments ``rows`` of this batch (views of its tensors)."""
        return Batch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move to ``device``; uint8 frames become float32 in [0, 1]."""
        values = {}
        for f in fields(self):
            t = getattr(self, f.name)
            t = t.to(device, non_blocking=non_blocking)
            if FIELDS_BY_NAME[f.name].frame and t.dtype == torch.uint8:
                t = t.float().div_(255.0)
            values[f.name] = t
        return Batch(**values)

    @classmethod
    def from_numpy(cls, **arrays: np.ndarray) -> Batch:
        """Wrap NumPy arrays (no copy when possible)."""
        return cls(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})


if tuple(f.name for f in fields(Batch)) != BATCH_FIELD_NAMES:  # pragma: no cover - a programming error
    raise RuntimeError("Batch and deltairis.data.fields.BATCH_FIELDS list different fields")
