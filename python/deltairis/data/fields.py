"""The one table of batch fields: name, dtype, shape, and where the store keeps it on disk.

Every place that lists the fields reads this table: the store's data files and the validation of appended
steps (:mod:`deltairis.data.episode_store`), host batch buffers (:mod:`deltairis.data.buffers`), both samplers'
gathers (:mod:`deltairis.data.sampler_backends`, :mod:`deltairis.data.segment_rule`), :class:`~deltairis.data.Batch`
(whose dataclass fields are checked against it) and the reference import.

The order of :data:`STEP_FIELDS` is the order of the C++ ``ReplayReader``'s file paths, and the names of
:data:`GATHERED_FIELDS` are the keyword names of its ``gather`` output arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch


@dataclass(frozen=True)
class Field:
    """One field of a :class:`~deltairis.data.Batch`.

    ``per`` says how a batch of B segments of T steps holds it: ``"step"`` (B, T, *step shape) or
    ``"segment"`` (B,). The step shape is the store's frame shape when ``frame`` is set, else ``()``.
    ``file`` names the store's data file for stored fields (``None``: computed by the gather).
    ``accepts`` are the NumPy dtype kinds taken by ``add_episode`` (converted to ``dtype``), ``flag``
    restricts integer input to 0 and 1, and ``reference_keys`` are the keys of the field in a reference
    episode file, first match wins.
    """

    name: str
    dtype: np.dtype
    torch_dtype: torch.dtype
    per: Literal["step", "segment"]
    file: str | None = None
    frame: bool = False
    accepts: str = ""
    flag: bool = False
    reference_keys: tuple[str, ...] = ()
    doc: str = ""

    def step_shape(self, obs_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the field for one step (or one segment)."""
        return tuple(obs_shape) if self.frame else ()

    def row_bytes(self, obs_shape: tuple[int, ...]) -> int:
        """Bytes of one step in the field's data file."""
        return self.dtype.itemsize * math.prod(self.step_shape(obs_shape))

    def batch_shape(self, batch_size: int, seq_len: int, obs_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the field in a batch of ``batch_size`` segments of ``seq_len`` steps."""
        if self.per == "segment":
            return (batch_size,)
        return (batch_size, seq_len, *self.step_shape(obs_shape))


BATCH_FIELDS: tuple[Field, ...] = (
    Field("obs", np.dtype(np.uint8), torch.uint8, "step", "obs.u8", frame=True, accepts="u",
          reference_keys=("observations", "obs"), doc="frames; float32 in [0, 1] after Batch.to"),
    Field("act", np.dtype(np.int64), torch.int64, "step", "act.i64", accepts="iu",
          reference_keys=("actions", "act"), doc="actions"),
    Field("rew", np.dtype(np.float32), torch.float32, "step", "rew.f32", accepts="f",
          reference_keys=("rewards", "rew"), doc="rewards"),
    Field("end", np.dtype(np.uint8), torch.uint8, "step", "end.u8", accepts="bu", flag=True,
          reference_keys=("ends", "end"), doc="termination: the episode really ended after this step"),
    Field("trunc", np.dtype(np.uint8), torch.uint8, "step", "trunc.u8", accepts="bu", flag=True,
          reference_keys=("truncations", "truncs", "trunc"), doc="truncation (time limit)"),
    Field("mask_padding", np.dtype(np.bool_), torch.bool, "step",
          doc="True where the step is real, False for padding"),
    Field("episode_id", np.dtype(np.int64), torch.int64, "segment", doc="episode of each segment"),
    Field("start", np.dtype(np.int64), torch.int64, "segment", doc="first step (may be < 0)"),
    Field("stop", np.dtype(np.int64), torch.int64, "segment", doc="end step (may exceed the length)"),
)  # fmt: skip
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in BATCH_FIELDS}
BATCH_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in BATCH_FIELDS)
STEP_FIELDS: tuple[Field, ...] = tuple(f for f in BATCH_FIELDS if f.file is not None)
"""The stored fields (one data file each), in the C++ reader's path order."""
STEP_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in STEP_FIELDS)
GATHERED_FIELDS: tuple[Field, ...] = tuple(f for f in BATCH_FIELDS if f.per == "step")
"""What a gather writes: the stored fields and ``mask_padding``."""
SEGMENT_FIELDS: tuple[Field, ...] = tuple(f for f in BATCH_FIELDS if f.per == "segment")
