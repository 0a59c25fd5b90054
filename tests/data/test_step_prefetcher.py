"""StepPrefetcher (the trainer's input pipeline, #14): the batches and visit counts of the synchronous
loop, bit for bit; a batch drawn ahead and not taken is not counted; errors reach the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from replay_testlib import BACKENDS, fill_store

from deltairis.data import ReplayStore, StepPrefetcher

SMALL = (2, 3, 5)
FIELDS = ("obs", "act", "rew", "end", "trunc", "mask_padding", "episode_id", "start", "stop")


def _stores(tmp_path: Path, backend: str) -> tuple[ReplayStore, ReplayStore]:
    rng = np.random.default_rng(21)
    with ReplayStore(tmp_path, backend=backend, obs_shape=SMALL) as w:
        fill_store(w, rng, num_episodes=7, max_len=14)
        w.commit()
    return (ReplayStore(tmp_path, backend=backend, read_only=True) for _ in range(2))  # type: ignore[return-value]


def _seed(step: int) -> int:
    return 1000 + 7 * step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("rows", "update_counts"), [(None, True), (slice(2, 5), True), (None, False)])
def test_batches_and_counts_equal_the_synchronous_loop(
    backend: str, rows: slice | None, update_counts: bool, tmp_path: Path
) -> None:
    sync, pre_store = _stores(tmp_path, backend)
    steps = range(3, 9)  # a phase resumed at step 3
    pre = StepPrefetcher(
        pre_store,
        "wm",
        5,
        4,
        steps,
        _seed,
        "cpu",
        pad_mode="left",
        alpha=1.0,
        update_counts=update_counts,
        rows=rows,
    )
    try:
        for step in steps:
            got = pre.take(step)
            want = sync.sample(
                "wm",
                5,
                4,
                pad_mode="left",
                alpha=1.0,
                seed=_seed(step),
                update_counts=update_counts,
                rows=rows,
            ).to("cpu")
            for f in FIELDS:
                assert torch.equal(getattr(got, f), getattr(want, f)), (step, f)
            np.testing.assert_array_equal(pre_store.visit_counts("wm"), sync.visit_counts("wm"))
    finally:
        pre.close()
    assert got.obs.dtype == torch.float32 and got.batch_size == (5 if rows is None else 3)
    with pytest.raises(RuntimeError, match="no batch left"):
        pre.take(9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_drawn_ahead_and_not_taken_is_not_counted(backend: str, tmp_path: Path) -> None:
    sync, pre_store = _stores(tmp_path, backend)
    pre = StepPrefetcher(pre_store, "tok", 4, 3, range(10), _seed, "cpu", alpha=1.0)
    for step in range(3):
        pre.take(step)
        sync.sample("tok", 4, 3, alpha=1.0, seed=_seed(step))
    pre.close()  # step 3 was in flight (drawn while step 2 "trained")
    pre.close()  # closing twice is fine
    np.testing.assert_array_equal(pre_store.visit_counts("tok"), sync.visit_counts("tok"))
    assert pre_store.visit_counts("tok").sum() == 12
    # a new prefetcher from step 3 (a resumed phase) goes on as the synchronous loop does
    pre = StepPrefetcher(pre_store, "tok", 4, 3, range(3, 5), _seed, "cpu", alpha=1.0)
    for step in range(3, 5):
        got = pre.take(step)
        want = sync.sample("tok", 4, 3, alpha=1.0, seed=_seed(step))
        assert torch.equal(got.episode_id, want.episode_id) and torch.equal(got.start, want.start)
    pre.close()
    np.testing.assert_array_equal(pre_store.visit_counts("tok"), sync.visit_counts("tok"))


def test_steps_out_of_order_and_sampling_errors_reach_the_caller(tmp_path: Path) -> None:
    _, store = _stores(tmp_path, "numpy")
    pre = StepPrefetcher(store, "wm", 4, 3, range(2), _seed, "cpu")
    with pytest.raises(ValueError, match="asked for the batch of step 1, the next one is step 0"):
        pre.take(1)
    pre.close()
    bad = StepPrefetcher(store, "wm", 4, 3, range(2), _seed, "cpu", pad_mode="middle")
    with pytest.raises(ValueError, match="pad_mode"):
        bad.take(0)
    bad.close()
    assert store.visit_counts("wm").sum() == 0
    empty = StepPrefetcher(store, "wm", 4, 3, range(0), _seed, "cpu")  # nothing to draw
    empty.close()


@pytest.mark.gpu
def test_pinned_buffers_and_events_on_cuda(tmp_path: Path) -> None:
    sync, pre_store = _stores(tmp_path, "numpy")
    pre = StepPrefetcher(pre_store, "wm", 6, 5, range(12), _seed, "cuda", alpha=1.0, rows=slice(1, 6))
    try:
        assert all(b.obs.is_pinned() for b in pre._buffers)
        for step in range(12):  # more steps than buffers: each is refilled after its copy finished
            got = pre.take(step)
            want = sync.sample("wm", 6, 5, alpha=1.0, seed=_seed(step), rows=slice(1, 6))
            assert got.obs.is_cuda
            torch.cuda.synchronize()
            for f in FIELDS:
                assert torch.equal(getattr(got, f).cpu(), getattr(want.to("cpu"), f)), (step, f)
    finally:
        pre.close()
    np.testing.assert_array_equal(pre_store.visit_counts("wm"), sync.visit_counts("wm"))
