"""Background sampling: :class:`StepPrefetcher`, the trainer's input pipeline, and the one worker thread
(:class:`BackgroundWorker`) it draws on."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from deltairis.data.batch import Batch

_T = TypeVar("_T")


class SamplingStore(Protocol):
    """What :class:`StepPrefetcher` needs of a store (a :class:`deltairis.data.replay_store.ReplayStore`)."""

    def sample(self, *args: Any, **kwargs: Any) -> Batch: ...

    def add_visits(self, consumer: str, episode_id: np.ndarray) -> None: ...

    def allocate_batch(self, batch_size: int, seq_len: int, pin_memory: bool = False) -> Batch: ...


class BackgroundWorker:
    """One thread, started on first use, running submitted calls one at a time in submission order."""

    def __init__(self, thread_name_prefix: str = "replay-prefetch") -> None:
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[_T]:
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


class StepPrefetcher:
    """The trainer's batches of one phase: step ``s`` is drawn with ``seed_of(s)`` on a background thread
    while step ``s - 1`` trains, and copied to ``device`` when taken.

    The batches are the ones of the synchronous loop ``store.sample(consumer, ..., seed=seed_of(s),
    update_counts=update_counts, rows=rows)`` for ``s`` in ``steps``, bit for bit: a batch is drawn without
    counting and its visits are counted when :meth:`take` hands it out, before the next batch is drawn;
    so a batch drawn ahead but never taken (a mid-epoch checkpoint, an error) leaves the counts as they
    were, and :meth:`close` has nothing to undo.

    On CUDA the batches are gathered into two pinned host buffers used in turn and copied with
    ``non_blocking=True``; a CUDA event recorded after each copy is waited for (on the worker thread)
    before its buffer is filled again. Elsewhere every batch gets fresh host arrays (a CPU "copy" of most
    fields is the host tensor itself, so a buffer could not be reused).
    """

    def __init__(
        self,
        store: SamplingStore,
        consumer: str,
        batch_size: int,
        seq_len: int,
        steps: range,
        seed_of: Callable[[int], int],
        device: Any,
        pad_mode: str = "both",
        alpha: float = 0.0,
        update_counts: bool = True,
        rows: slice | None = None,
        worker: BackgroundWorker | None = None,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.steps = steps
        self.seed_of = seed_of
        self.device = torch.device(device)
        self.update_counts = update_counts
        self._kwargs = {
            "consumer": consumer,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "pad_mode": pad_mode,
            "alpha": alpha,
            "rows": rows,
        }
        self._cuda = self.device.type == "cuda"
        local = batch_size if rows is None else len(range(batch_size)[rows])
        self._buffers = (
            [store.allocate_batch(local, seq_len, pin_memory=True) for _ in range(2)] if self._cuda else []
        )
        self._events: list[Any] = [None] * len(self._buffers)
        self._worker = worker if worker is not None else BackgroundWorker("train-prefetch")
        self._own_worker = worker is None
        self._pending: tuple[int, int, concurrent.futures.Future[tuple[Batch, np.ndarray]]] | None = None
        self._batch_size = batch_size
        self._next = 0  # index into steps of the next batch to draw
        self._closed = False
        if len(steps):
            self._submit()

    def _draw(self, step: int, buffer: int) -> tuple[Batch, np.ndarray]:
        out = None
        if buffer >= 0:
            event = self._events[buffer]
            if event is not None:
                event.synchronize()  # the last host-to-device copy out of this buffer has finished
            out = self._buffers[buffer]
        ids = np.empty(self._batch_size, dtype=np.int64)
        batch = self.store.sample(
            seed=self.seed_of(step), update_counts=False, out=out, episode_ids_out=ids, **self._kwargs
        )
        return batch, ids

    def _submit(self) -> None:
        step = self.steps[self._next]
        buffer = self._next % len(self._buffers) if self._buffers else -1
        self._next += 1
        self._pending = (step, buffer, self._worker.submit(self._draw, step, buffer))

    def take(self, step: int) -> Batch:
        """The batch of ``step`` (the next one of ``steps``) on the device; its visits are counted now."""
        if self._closed or self._pending is None:
            raise RuntimeError(f"no batch left to take for step {step} ({self.consumer})")
        want, buffer, future = self._pending
        if step != want:
            raise ValueError(f"asked for the batch of step {step}, the next one is step {want}")
        self._pending = None
        batch, episode_ids = future.result()
        if self.update_counts:
            self.store.add_visits(self.consumer, episode_ids)
        out = batch.to(self.device, non_blocking=self._cuda)
        if buffer >= 0:
            event = torch.cuda.Event()
            event.record()
            self._events[buffer] = event
        if self._next < len(self.steps):
            self._submit()  # drawn after the counts above, as the synchronous loop does
        return out

    def close(self) -> None:
        """Wait for the batch in flight (not counted) and drop it; stop the worker if this object owns it."""
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending[2].cancel()
                with contextlib.suppress(Exception, concurrent.futures.CancelledError):
                    pending[2].result()  # dropped, never used: its error does not matter
        finally:
            if self._own_worker:
                self._worker.shutdown()
