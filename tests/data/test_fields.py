"""The field table is what the store, both samplers and Batch use; the backend is chosen once, at open."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from replay_testlib import BACKENDS, fill_store

from deltairis import _native
from deltairis.data import Batch, Episode, ReplayStore, StepPrefetcher
from deltairis.data.fields import BATCH_FIELDS, GATHERED_FIELDS, SEGMENT_FIELDS, STEP_FIELDS
from deltairis.data.replay_store import DATA_FILES, INDEX_NAME, LOCK_NAME
from deltairis.data.sampler_backends import CppSampler, NumpySampler, cpp_available

SMALL = (2, 4, 4)


def test_batch_and_episode_declare_the_table_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(Batch)) == tuple(f.name for f in BATCH_FIELDS)
    assert tuple(f.name for f in dataclasses.fields(Episode)) == tuple(f.name for f in STEP_FIELDS)
    assert {f.name for f in BATCH_FIELDS} == {f.name for f in GATHERED_FIELDS + SEGMENT_FIELDS}
    assert DATA_FILES == {f.name: (f.file, f.dtype) for f in STEP_FIELDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_files_and_batches_follow_the_table(backend: str, tmp_path: Path) -> None:
    store = ReplayStore(tmp_path, backend=backend, obs_shape=SMALL)
    fill_store(store, np.random.default_rng(0), num_episodes=4, max_len=8)
    store.commit()
    assert {p.name for p in tmp_path.iterdir()} == {f.file for f in STEP_FIELDS} | {INDEX_NAME, LOCK_NAME}
    for f in STEP_FIELDS:
        assert (tmp_path / f.file).stat().st_size == store.num_steps * f.row_bytes(SMALL)
    b, t = 3, 5
    for batch in (
        store.allocate_batch(b, t),
        store.sample("wm", b, t, seed=0),
        store.gather(np.array([0, 1, 2]), np.array([-1, 0, 1]), np.array([4, 5, 6])),
    ):
        for f in BATCH_FIELDS:
            x = getattr(batch, f.name)
            assert x.dtype == f.torch_dtype and tuple(x.shape) == f.batch_shape(b, t, SMALL), f.name
    episode = store.load_episode(1)
    for f in STEP_FIELDS:
        x = getattr(episode, f.name)
        assert x.dtype == f.dtype and x.shape == (len(episode), *f.step_shape(SMALL)), f.name
    store.close()


class _NoCore:
    """Stands in for deltairis._core: any use fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"deltairis._core.{name} was used")


def _use(store: ReplayStore) -> None:
    fill_store(store, np.random.default_rng(1), num_episodes=3, max_len=6)
    store.commit()
    out = store.allocate_batch(2, 3)
    store.sample("wm", 2, 3, alpha=1.0, seed=0, out=out)
    pre = StepPrefetcher(store, "wm", 2, 3, range(1), lambda step: step + 1, "cpu", pad_mode="left")
    pre.take(0)  # drawn on the prefetcher's background thread
    pre.close()
    store.sampling_probabilities("wm", 1.0)
    store.gather(np.array([0, 2]), np.array([0, 1]), np.array([3, 4]))
    store.load_episode(0)
    assert store.num_threads >= 1
    store.clear()
    store.close()


def test_numpy_backend_never_touches_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "core", _NoCore())
    store = ReplayStore(tmp_path, backend="numpy", obs_shape=SMALL)
    assert store.backend == "numpy" and isinstance(store._sampler, NumpySampler)
    _use(store)


@pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")
def test_cpp_backend_is_bound_when_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ReplayStore(tmp_path, backend="cpp", obs_shape=SMALL)
    assert store.backend == "cpp" and isinstance(store._sampler, CppSampler)
    monkeypatch.setattr(_native, "core", _NoCore())  # later calls do not look the backend up again
    _use(store)


def test_out_views_are_kept_on_the_batch(tmp_path: Path) -> None:
    store = ReplayStore(tmp_path, backend="numpy", obs_shape=SMALL)
    fill_store(store, np.random.default_rng(2), num_episodes=3, max_len=6)
    out = store.allocate_batch(2, 3)
    assert out.host_buffers is None
    store.sample("wm", 2, 3, seed=0, out=out)
    kept = out.host_buffers
    assert kept is not None and kept.arrays["obs"].ctypes.data == out.obs.data_ptr()
    store.sample("wm", 2, 3, seed=1, out=out)
    assert out.host_buffers is kept  # checked once, reused
    out.rew = torch.zeros_like(out.rew)
    store.sample("wm", 2, 3, seed=2, out=out)
    assert out.host_buffers is not kept and out.host_buffers.arrays["rew"].ctypes.data == out.rew.data_ptr()
    assert out == dataclasses.replace(out)  # the views are no dataclass field
    store.close()
