"""Bad input at the ReplayStore boundary and at the C++ boundary gives errors naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from replay_testlib import BACKENDS, fill_store, random_steps

from deltairis.data import ReplayStore, StepPrefetcher
from deltairis.data.sampler_backends import cpp_available


def steps(t: int = 4, **changes: Any) -> dict[str, Any]:
    s: dict[str, Any] = random_steps(np.random.default_rng(0), t)
    s.update(changes)
    return s


BAD_STEPS = [
    ({"obs": np.zeros((4, 3, 64, 64), np.float32)}, "obs must have dtype uint8"),
    ({"obs": np.zeros((4, 3, 64, 63), np.uint8)}, r"obs must have shape \(T, 3, 64, 64\)"),
    ({"obs": np.zeros((4, 64, 64, 3), np.uint8)}, "obs must have shape"),
    ({"obs": [[0]]}, "obs must be a NumPy array"),
    ({"act": np.zeros(4, np.float32)}, "act has dtype float32"),
    ({"act": np.zeros(5, np.int64)}, r"act must have shape \(4,\)"),
    ({"rew": np.zeros(4, np.int64)}, "rew has dtype int64"),
    ({"rew": np.zeros((4, 1), np.float32)}, "rew must have shape"),
    ({"end": np.full(4, 2, np.uint8)}, "end must hold only 0 and 1"),
    ({"end": np.zeros(4, np.float32)}, "end has dtype float32"),
    ({"trunc": np.zeros(3, np.uint8)}, r"trunc must have shape \(4,\)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("change", "message"), BAD_STEPS)
def test_bad_steps_raise_naming_the_field(backend: str, change: dict, message: str, tmp_path: Path) -> None:
    store = ReplayStore(tmp_path, backend=backend)
    with pytest.raises(ValueError, match=message):
        store.add_episode(**steps(**change))
    ep = store.add_episode(**steps())
    with pytest.raises(ValueError, match=message):
        store.extend_episode(ep, **steps(**change))
    assert store.num_episodes == 1 and store.num_steps == 4  # nothing half-appended


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_ids_and_sampling_arguments(backend: str, tmp_path: Path) -> None:
    store = ReplayStore(tmp_path, backend=backend)
    with pytest.raises(ValueError, match="empty replay store"):
        store.sample("tokenizer", 2, 3)
    with pytest.raises(ValueError, match="at least one step"):
        store.add_episode(**steps(0))
    fill_store(store, np.random.default_rng(1), num_episodes=3, max_len=5, num_extends=0)
    with pytest.raises(KeyError, match="unknown episode id 3"):
        store.extend_episode(3, **steps())
    with pytest.raises(KeyError, match="unknown episode id -1"):
        store.load_episode(-1)
    with pytest.raises(ValueError, match="episode_id must be an int"):
        store.load_episode(1.0)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown episode id 7"):
        store.gather(np.array([0, 7]), np.array([0, 0]), np.array([2, 2]))
    with pytest.raises(ValueError, match="same for every segment"):
        store.gather(np.array([0, 1]), np.array([0, 0]), np.array([2, 3]))
    with pytest.raises(ValueError, match="same non-zero length"):
        store.gather(np.array([0, 1]), np.array([0]), np.array([2]))
    with pytest.raises(ValueError, match="episode_id must be a 1-d integer array"):
        store.gather(np.array([0.0]), np.array([0]), np.array([2]))
    for kwargs, message in [
        ({"seq_len": 0}, "seq_len must be >= 1"),
        ({"seq_len": 2.5}, "seq_len must be an int"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"pad_mode": "right"}, "pad_mode must be one of"),
        ({"alpha": -1.0}, "alpha must be a finite number >= 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number"),
        ({"consumer": ""}, "consumer must be a non-empty string"),
    ]:
        args: dict[str, Any] = {"consumer": "tokenizer", "batch_size": 2, "seq_len": 3}
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            store.sample(**args)
    out = store.allocate_batch(2, 3)
    out.obs = out.obs.float()
    with pytest.raises(ValueError, match="out.obs must be torch.uint8"):
        store.sample("tokenizer", 2, 3, out=out)
    with pytest.raises(ValueError, match=r"out.obs must be torch.uint8 of shape \(4, 3, 3, 64, 64\)"):
        store.sample("tokenizer", 4, 3, out=store.allocate_batch(2, 3))
    assert store.visit_counts("tokenizer").sum() == 0  # failed calls counted nothing
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.sample("tokenizer", 2, 3)


def test_prefetching_from_a_closed_store_names_the_problem(tmp_path: Path) -> None:
    store = ReplayStore(tmp_path)
    store.close()
    pre = StepPrefetcher(store, "wm", 2, 3, range(1), lambda step: step, "cpu")
    try:
        with pytest.raises(ValueError, match="closed"):  # raised on the worker thread, seen by take()
            pre.take(0)
    finally:
        pre.close()


def test_bad_backend_name_and_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend must be"):
        ReplayStore(tmp_path, backend="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="obs_shape must be a non-empty tuple of positive sizes"):
        ReplayStore(tmp_path / "a", obs_shape=(3, 0, 64))
    with ReplayStore(tmp_path / "b", obs_shape=(1, 8, 8)) as store:
        store.commit()
    mismatch = r"obs_shape \(3, 64, 64\) does not match the store's frames \(1, 8, 8\)"
    with pytest.raises(ValueError, match=mismatch):
        ReplayStore(tmp_path / "b", obs_shape=(3, 64, 64))
    with ReplayStore(tmp_path / "b") as store:  # no shape given: the stored one
        assert store.obs_shape == (1, 8, 8)


@pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")
def test_cpp_boundary_validates_buffers(tmp_path: Path) -> None:
    from deltairis import _core

    store = ReplayStore(tmp_path, backend="cpp")
    fill_store(store, np.random.default_rng(2), num_episodes=3, max_len=6, num_extends=3)
    view = store.view()
    reader = store._sampler.reader()
    b, L = 2, 3
    good = {
        "num_rows": view.n_rows,
        "lengths": view.lengths,
        "ep_chunk_begin": view.ep_chunk_begin,
        "chunk_offset": view.chunk_offset,
        "chunk_row": view.chunk_row,
        "chunk_len": view.chunk_len,
        "episode_id": np.array([0, 2]),
        "start": np.array([-1, 1]),
        "obs": np.zeros((b, L, 3, 64, 64), np.uint8),
        "act": np.zeros((b, L), np.int64),
        "rew": np.zeros((b, L), np.float32),
        "end": np.zeros((b, L), np.uint8),
        "trunc": np.zeros((b, L), np.uint8),
        "mask_padding": np.zeros((b, L), bool),
    }
    reader.gather(**good)
    assert good["mask_padding"].sum() > 0
    for name, value, message in [
        ("rew", np.zeros((b, L), np.float64), "rew has dtype float64"),
        ("act", np.zeros((b, L), np.int32), "act has dtype int32"),
        ("mask_padding", np.zeros((b, L), np.uint8), "mask_padding has dtype uint8"),
        ("end", np.zeros((b, L + 1), np.uint8), "end has size 4 in dimension 1"),
        ("obs", np.zeros((b, L, 3, 64, 32), np.uint8), "obs must be uint8"),
        ("trunc", np.zeros((L, b), np.uint8).T, "trunc must be C-contiguous"),
        ("start", np.array([0]), "start has size 1"),
        ("episode_id", np.array([0, 3]), "episode_id 3 is not in the store"),
        ("chunk_offset", view.chunk_offset + 1, "chunk table: chunks of episode 0 do not tile it"),
        ("ep_chunk_begin", view.ep_chunk_begin[:-1], "ep_chunk_begin has size"),
        ("chunk_row", view.chunk_row + view.n_rows, "chunks of episode 0 do not tile it"),
        ("num_rows", view.n_rows - 1, "do not tile it"),
        ("num_rows", -1, "negative size"),
    ]:
        with pytest.raises(ValueError, match=message):
            reader.gather(**{**good, name: value})
    ro = np.zeros((b, L), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="rew must be writable"):
        reader.gather(**{**good, "rew": ro})
    counts = np.zeros(3, np.int64)
    u = np.zeros((3, 2))
    ids = [np.zeros(2, np.int64) for _ in range(3)]
    with pytest.raises(ValueError, match="pad_mode must be 0"):
        _core.replay_draw_segments(counts, view.lengths, 1.0, u, 3, 2, *ids)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        _core.replay_draw_segments(counts, view.lengths, 1.0, u, 0, 0, *ids)
    with pytest.raises(ValueError, match="counts has size 2"):
        _core.replay_draw_segments(counts[:2], view.lengths, 1.0, u, 3, 0, *ids)
    with pytest.raises(ValueError, match="episode id 5 out of range"):
        _core.replay_add_counts(counts, np.array([1, 5]))
    assert counts.sum() == 0  # checked before any count moved
    with pytest.raises(RuntimeError, match="cannot open"):
        _core.ReplayReader([str(tmp_path / "nope")] * 5, 12288, 1)
