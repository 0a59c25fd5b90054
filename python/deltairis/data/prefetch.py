"""Background sampling: the one worker thread behind ``ReplayStore.sample_async``, and :class:`Prefetcher`."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from deltairis.data.batch import Batch


class SamplingStore(Protocol):
    """What the prefetcher needs of a store (a :class:`deltairis.data.replay.ReplayStore`)."""

    def sample(self, *args: Any, **kwargs: Any) -> Batch: ...


class BackgroundWorker:
    """One thread, started on first use, running submitted calls one at a time in submission order."""

    def __init__(self, thread_name_prefix: str = "replay-prefetch") -> None:
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Batch], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Batch]:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self._prefix)
            return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self) -> None:
        """Wait for the calls in flight and stop the thread (a later submit starts a new one)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


class Prefetcher:
    """Iterator over batches of one consumer, keeping the next batch in flight while the caller trains.

    Seeds of successive batches come from ``np.random.default_rng(seed)``. With ``num_buffers`` > 0 the
    batches are written into that many (>= 2) preallocated, optionally pinned, buffers used round robin: a
    yielded batch stays valid until ``num_buffers - 1`` further batches were taken. With ``num_buffers=0``
    every batch gets fresh buffers.
    """

    def __init__(
        self,
        store: SamplingStore,
        consumer: str,
        batch_size: int,
        seq_len: int,
        pad_mode: str = "both",
        alpha: float = 0.0,
        seed: int | None = None,
        update_counts: bool = True,
        num_buffers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if num_buffers == 1 or num_buffers < 0:
            raise ValueError(f"num_buffers must be 0 or >= 2 (one batch is in flight), got {num_buffers}")
        self.store = store
        self._kwargs = {
            "consumer": consumer,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "pad_mode": pad_mode,
            "alpha": alpha,
            "update_counts": update_counts,
        }
        self._rng = np.random.default_rng(seed)
        self._buffers = [store.allocate_batch(batch_size, seq_len, pin_memory) for _ in range(num_buffers)]
        self._next_buffer = 0
        self._pending: concurrent.futures.Future[Batch] | None = None

    def _submit(self) -> concurrent.futures.Future[Batch]:
        out = None
        if self._buffers:
            out = self._buffers[self._next_buffer]
            self._next_buffer = (self._next_buffer + 1) % len(self._buffers)
        seed = int(self._rng.integers(0, 2**63 - 1))
        return self.store.sample_async(seed=seed, out=out, **self._kwargs)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self._pending is None:
            self._pending = self._submit()
        batch = self._pending.result()
        self._pending = self._submit()
        return batch

    def close(self) -> None:
        """Wait for the batch in flight (its counts are already applied)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
