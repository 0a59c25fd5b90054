"""The replay store: the on-disk episode store with prioritised segment sampling.

:class:`ReplayStore` composes the pieces of this package: the files, lock, index and commit of
:class:`~deltairis.data.episode_store.EpisodeStore` (its base class; the layout is described there), one
:class:`~deltairis.data.sampler_backends.Sampler` chosen when the store is opened (C++ or the NumPy reference)
and host buffers of :mod:`deltairis.data.buffers`. Background sampling (the trainer's pipeline) is
:class:`~deltairis.data.prefetch.StepPrefetcher`, over a store.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch

from deltairis.data import segment_rule
from deltairis.data.batch import Batch
from deltairis.data.buffers import BatchBuffers, allocate_batch, check_positive, check_rows
from deltairis.data.episode_store import (
    DATA_FILES,
    DEFAULT_OBS_SHAPE,
    FIELDS,
    FORMAT_VERSION,
    INDEX_NAME,
    LOCK_NAME,
    ChunkView,
    Episode,
    EpisodeStore,
    as_numpy,
)
from deltairis.data.sampler_backends import Backend, Sampler, sampler_class
from deltairis.errors import ReplayStoreError

__all__ = [
    "DATA_FILES",
    "DEFAULT_OBS_SHAPE",
    "FIELDS",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "LOCK_NAME",
    "Backend",
    "Episode",
    "ReplayStore",
    "ReplayStoreError",
]

logger = logging.getLogger(__name__)


class ReplayStore(EpisodeStore):
    """Episodes of (obs, act, rew, end, trunc) on disk, with prioritised segment sampling.

    Args:
        directory: where the store lives (created when missing and ``create`` is True).
        backend: ``"cpp"`` (``deltairis._core``), ``"numpy"`` (reference) or ``"auto"`` (C++ when built).
        num_threads: threads of the C++ gather (None: ``DELTAIRIS_NUM_THREADS`` or all cores).
            Results never depend on it.
        create: create an empty store when ``directory`` holds none.
        read_only: open without the write lock; appends and commits raise.
        obs_shape: shape of one frame, fixed when the store is created (default (3, 64, 64)); reopening
            with a different explicit shape raises ``ValueError``.
        follow: a read-only view of a store that another process writes: empty until :meth:`refresh`
            takes the writer's last commit (one replica shared by the ranks of a node).
        compression: how frames are stored, ``"none"`` or ``"lz4"`` (:mod:`deltairis.data.frame_codec`),
            fixed when the store is created (None: ``"none"`` for a new store, else the store's own);
            reopening with another setting raises :class:`ReplayStoreError` naming both. Batches are
            byte-identical either way.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        backend: Backend = "auto",
        num_threads: int | None = None,
        create: bool = True,
        read_only: bool = False,
        obs_shape: tuple[int, ...] | None = None,
        follow: bool = False,
        compression: str | None = None,
    ) -> None:
        kind = sampler_class(backend)  # the one backend choice, before anything is opened
        self.backend: str = kind.name
        self._sampler_kind = kind
        self._requested_threads = 0 if num_threads is None else int(num_threads)
        super().__init__(
            directory,
            create=create,
            read_only=read_only,
            obs_shape=obs_shape,
            follow=follow,
            compression=compression,
        )
        self._sampler: Sampler = self._new_sampler()
        logger.info(
            "replay store %s: %d episodes, %d steps (backend %s)",
            self.directory,
            self.num_episodes,
            self.num_steps,
            self.backend,
        )

    def close(self) -> None:
        """Close the files and release the write lock; uncommitted appends are dropped at the next open."""
        if self._closed:
            return
        self._sampler.reset()
        super().close()

    @property
    def num_threads(self) -> int:
        return self._sampler.num_threads

    def _forget_file_contents(self) -> None:
        self._sampler.reset()

    def _new_sampler(self) -> Sampler:
        return self._sampler_kind(self.directory, self.obs_shape, self._requested_threads, self.compression)

    def refresh(self) -> bool:
        with self.lock:
            before = (self.obs_shape, self.compression)
            changed = super().refresh()
            if changed and (self.obs_shape, self.compression) != before:  # the writer's frames: a new sampler
                self._sampler = self._new_sampler()
            return changed

    refresh.__doc__ = EpisodeStore.refresh.__doc__

    # ------------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------------
    def sampling_probabilities(self, consumer: str, alpha: float) -> np.ndarray:
        """Probability that ``sample(consumer, ..., alpha)`` picks each episode, float64 (N,)."""
        alpha = self._check_alpha(alpha)
        with self.lock:
            counts = self.counts_for(consumer)
            if counts.shape[0] == 0:
                return np.zeros(0, dtype=np.float64)
            return self._sampler.probabilities(counts, alpha)

    @staticmethod
    def _check_alpha(alpha: float) -> float:
        alpha = float(alpha)
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        return alpha

    def allocate_batch(self, batch_size: int, seq_len: int, pin_memory: bool = False) -> Batch:
        """Host buffers for one batch (pinned when asked, for asynchronous copies to the GPU)."""
        return allocate_batch(batch_size, seq_len, self.obs_shape, pin_memory)

    def _buffers(self, out: Batch | None, b: int, t: int) -> tuple[Batch, dict[str, np.ndarray]]:
        if out is None:
            return BatchBuffers.new(b, t, self.obs_shape)
        return out, BatchBuffers.of(out, b, t, self.obs_shape)

    def _gather_into(
        self,
        view: ChunkView,
        ep: np.ndarray,
        start: np.ndarray,
        seq_len: int,
        batch: Batch,
        arrays: dict[str, np.ndarray],
    ) -> Batch:
        arrays["episode_id"][...] = ep
        arrays["start"][...] = start
        arrays["stop"][...] = start + seq_len
        self._sampler.gather(view, ep, start, seq_len, arrays)
        return batch

    def gather(self, episode_id: Any, start: Any, stop: Any, out: Batch | None = None) -> Batch:
        """Segments given explicitly: episode ids, starts and stops, int64 (B,), all of one length L >= 1.

        Steps outside the episode are zero with ``mask_padding`` False.
        """
        ep = np.asarray(
            as_numpy(episode_id, "episode_id") if isinstance(episode_id, torch.Tensor) else episode_id
        )
        start_a = np.asarray(as_numpy(start, "start") if isinstance(start, torch.Tensor) else start)
        stop_a = np.asarray(as_numpy(stop, "stop") if isinstance(stop, torch.Tensor) else stop)
        for name, x in (("episode_id", ep), ("start", start_a), ("stop", stop_a)):
            if x.ndim != 1 or x.dtype.kind not in "iu":
                raise ValueError(f"{name} must be a 1-d integer array, got {x.dtype} {x.shape}")
        if not ep.shape == start_a.shape == stop_a.shape or ep.shape[0] == 0:
            raise ValueError(
                f"episode_id, start and stop must have the same non-zero length, got "
                f"{ep.shape[0]}, {start_a.shape[0]}, {stop_a.shape[0]}"
            )
        seq = stop_a.astype(np.int64) - start_a.astype(np.int64)
        if np.any(seq != seq[0]) or seq[0] < 1:
            raise ValueError("stop - start must be the same for every segment and >= 1")
        with self.lock:
            self._check_open()
            n = self.num_episodes
            if np.any((ep < 0) | (ep >= n)):
                bad = int(ep[(ep < 0) | (ep >= n)][0])
                raise KeyError(f"unknown episode id {bad} (the store holds {n} episodes)")
            t = int(seq[0])
            batch, arrays = self._buffers(out, ep.shape[0], t)
            return self._gather_into(
                self.view(), ep.astype(np.int64), start_a.astype(np.int64), t, batch, arrays
            )

    def sample(
        self,
        consumer: str,
        batch_size: int,
        seq_len: int,
        pad_mode: str = "both",
        alpha: float = 0.0,
        seed: int | np.random.Generator | None = None,
        update_counts: bool = True,
        out: Batch | None = None,
        rows: slice | None = None,
        episode_ids_out: np.ndarray | None = None,
    ) -> Batch:
        """Draw ``batch_size`` segments of ``seq_len`` steps (docs/algorithm.md section 6) for ``consumer``.

        Episodes are picked with probability ∝ (1 / (1 + n_i)) ** alpha, where n_i counts the segments
        ``consumer`` already drew from episode i (incremented here when ``update_counts``). ``seed`` is an
        int (``np.random.default_rng(seed)``) or a Generator that is advanced. ``out`` receives the batch
        (see :meth:`allocate_batch`); it is returned.

        ``rows`` (a slice of ``range(batch_size)``, default all): the same ``batch_size`` segments are
        drawn and counted, but only these rows are gathered (one rank's slice of a distributed batch: the
        slices of all ranks together are the whole batch, and the counts stay equal on every rank).
        ``episode_ids_out`` (int64, ``(batch_size,)``) receives the episode ids of all drawn segments:
        with ``update_counts=False``, :meth:`add_visits` of them before the next draw of ``consumer``
        counts exactly what ``update_counts`` would (the prefetching trainer counts a batch when it takes
        it, so a batch drawn ahead and never used leaves the counts as they were).
        """
        b = check_positive("batch_size", batch_size)
        t = check_positive("seq_len", seq_len)
        segment_rule.check_pad_mode(pad_mode)
        alpha = self._check_alpha(alpha)
        lo, hi = check_rows(rows, b)
        if episode_ids_out is not None and (
            not isinstance(episode_ids_out, np.ndarray)
            or episode_ids_out.shape != (b,)
            or episode_ids_out.dtype != np.int64
        ):
            raise ValueError(f"episode_ids_out must be an int64 NumPy array of shape ({b},)")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        with self.lock:
            self._check_open()
            counts = self.counts_for(consumer)
            if self.num_episodes == 0:
                raise ValueError(f"cannot sample from an empty replay store ({self.directory})")
            view = self.view()
            batch, arrays = self._buffers(out, hi - lo, t)  # checked before anything is drawn or counted
            uniforms = segment_rule.draw_uniforms(rng, b)  # (3, B)
            ep, start, _ = self._sampler.draw_segments(counts, view.lengths, alpha, uniforms, t, pad_mode)
            if update_counts:
                self._sampler.add_counts(counts, ep)
            if episode_ids_out is not None:
                episode_ids_out[...] = ep
            if (lo, hi) != (0, b):
                ep, start = np.ascontiguousarray(ep[lo:hi]), np.ascontiguousarray(start[lo:hi])
            return self._gather_into(view, ep, start, t, batch, arrays)

    def add_visits(self, consumer: str, episode_id: np.ndarray) -> None:
        """Count one visit of ``consumer`` per entry of ``episode_id`` (int64, ids of stored episodes)."""
        ep = np.ascontiguousarray(episode_id, dtype=np.int64)
        if ep.ndim != 1:
            raise ValueError(f"episode_id must be 1-d, got shape {ep.shape}")
        with self.lock:
            self._check_open()
            counts = self.counts_for(consumer)
            if ep.size and (ep.min() < 0 or ep.max() >= counts.shape[0]):
                raise KeyError(f"episode ids outside the {counts.shape[0]} stored episodes")
            self._sampler.add_counts(counts, ep)
