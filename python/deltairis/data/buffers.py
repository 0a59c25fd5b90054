"""Host buffers of one batch: a :class:`~deltairis.data.Batch` paired with NumPy views of its tensors.

A sampler writes through NumPy views. Checking a caller's ``out`` batch (CPU, dtype, shape, contiguous)
and making the views costs more than a small gather, so the views are made once and kept on the batch
itself (``Batch.host_buffers``); they are reused as long as the batch still holds the same tensors
with the same storage, shape and dtype, and checked again otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from deltairis.data.batch import Batch
from deltairis.data.fields import BATCH_FIELDS


def check_positive(name: str, value: object) -> int:
    """``value`` as an int >= 1, or ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_rows(rows: slice | None, batch_size: int) -> tuple[int, int]:
    """``rows`` (a slice of ``range(batch_size)`` with step 1, or None for all) as (start, stop), 1 row at least."""
    if rows is None:
        return 0, batch_size
    if not isinstance(rows, slice):
        raise TypeError(f"rows must be a slice, got {type(rows).__name__}")
    lo, hi, step = rows.indices(batch_size)
    if step != 1 or rows.start is None or rows.stop is None or not 0 <= rows.start < rows.stop <= batch_size:
        raise ValueError(
            f"rows must be a non-empty slice [a:b] of range({batch_size}) with step 1, got {rows}"
        )
    return lo, hi


def allocate_batch(
    batch_size: int, seq_len: int, obs_shape: tuple[int, ...], pin_memory: bool = False
) -> Batch:
    """Uninitialised host tensors of one batch (pinned when asked)."""
    b = check_positive("batch_size", batch_size)
    t = check_positive("seq_len", seq_len)
    return Batch(
        **{
            f.name: torch.empty(f.batch_shape(b, t, obs_shape), dtype=f.torch_dtype, pin_memory=pin_memory)
            for f in BATCH_FIELDS
        }
    )


class BatchBuffers:
    """NumPy views of a batch's tensors, kept on the batch (:attr:`Batch.host_buffers`) once checked."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self._tensors = tensors  # the tensors themselves, not the batch: no reference cycle
        self._signature = _signature(tensors)

    @staticmethod
    def new(batch_size: int, seq_len: int, obs_shape: tuple[int, ...]) -> tuple[Batch, dict[str, np.ndarray]]:
        """A fresh NumPy-backed batch and its arrays."""
        arrays = {
            f.name: np.empty(f.batch_shape(batch_size, seq_len, obs_shape), f.dtype) for f in BATCH_FIELDS
        }
        return Batch(**{k: torch.from_numpy(v) for k, v in arrays.items()}), arrays

    @classmethod
    def of(
        cls, out: Batch, batch_size: int, seq_len: int, obs_shape: tuple[int, ...]
    ) -> dict[str, np.ndarray]:
        """The arrays of ``out``: the views kept on it when still valid, else checked and kept now.

        Raises ``ValueError`` naming the first field that is not a contiguous CPU tensor of the right dtype
        and shape.
        """
        kept = out.host_buffers
        if kept is not None and kept._valid_for(out, batch_size, seq_len, obs_shape):
            return kept.arrays
        arrays = {}
        for f in BATCH_FIELDS:
            shape, dtype = f.batch_shape(batch_size, seq_len, obs_shape), f.torch_dtype
            x = getattr(out, f.name)
            if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
                raise ValueError(f"out.{f.name} must be a CPU tensor")
            if x.dtype != dtype or tuple(x.shape) != shape:
                raise ValueError(
                    f"out.{f.name} must be {dtype} of shape {shape}, got {x.dtype} {tuple(x.shape)}"
                )
            if not x.is_contiguous():
                raise ValueError(f"out.{f.name} must be contiguous")
            arrays[f.name] = x.numpy()
        out.host_buffers = cls(tuple(getattr(out, f.name) for f in BATCH_FIELDS), arrays)
        return arrays

    def _valid_for(self, out: Batch, batch_size: int, seq_len: int, obs_shape: tuple[int, ...]) -> bool:
        return (
            all(getattr(out, f.name) is x for f, x in zip(BATCH_FIELDS, self._tensors))
            and _signature(self._tensors) == self._signature
            and all(
                self.arrays[f.name].shape == f.batch_shape(batch_size, seq_len, obs_shape)
                for f in BATCH_FIELDS
            )
        )


def _signature(tensors: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((x.data_ptr(), x.shape, x.dtype) for x in tensors)
