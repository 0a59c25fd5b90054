"""The pieces of the replay-store replica sync that run in one process (which store a rank uses included) (the broadcast itself is covered
end to end by test_distributed_run.py)."""

from __future__ import annotations

import numpy as np
import pytest

from deltairis.data import ReplayStore
from deltairis.data.frame_codec import PackedFrames
from deltairis.data.fields import STEP_FIELD_NAMES
from deltairis.distributed import DistContext
from deltairis.errors import DistributedError
from deltairis.train import replicas
from deltairis.train.replicas import (
    Placement,
    _append,
    _holds_more,
    _messages,
    _nbytes,
    _part,
    _plan,
    check_nodes,
    open_replica,
    placement,
    replica_dir,
)


def _steps(rng: np.random.Generator, t: int) -> tuple[np.ndarray, ...]:
    return (
        rng.integers(0, 256, (t, 3, 4, 4), dtype=np.uint8),
        rng.integers(0, 5, t).astype(np.int64),
        rng.standard_normal(t).astype(np.float32),
        np.zeros(t, np.uint8),
        np.zeros(t, np.uint8),
    )


def _store(tmp_path, name: str) -> ReplayStore:
    return ReplayStore(tmp_path / name, backend="numpy", obs_shape=(3, 4, 4))


def test_plan_sends_from_the_shortest_replica() -> None:
    main = np.array([5, 3, 4], dtype=np.int64)
    plan = _plan(main, [np.array([5, 1], dtype=np.int64), np.array([2], dtype=np.int64)])
    assert plan == [(0, 2, 5), (1, 0, 3), (2, 0, 4)]
    assert _plan(main, [main.copy()]) == []


def test_messages_cap_the_frame_bytes(monkeypatch) -> None:
    monkeypatch.setattr(replicas, "MESSAGE_BYTES", 100)
    plan = [(0, 0, 3), (1, 0, 3), (2, 0, 20), (3, 0, 1)]
    groups = _messages(plan, 30)  # 90, 90, 600 (alone), 30 bytes
    assert groups == [[(0, 0, 3)], [(1, 0, 3)], [(2, 0, 20)], [(3, 0, 1)]]
    assert [part for g in groups for part in g] == plan
    assert _messages(plan, 1) == [plan]


def test_appending_parts_rebuilds_the_main_store_with_its_ids(tmp_path) -> None:
    rng = np.random.default_rng(0)
    main, replica = _store(tmp_path, "main"), _store(tmp_path, "replica")
    a = main.add_episode(*_steps(rng, 4))
    main.add_episode(*_steps(rng, 2))
    main.extend_episode(a, *_steps(rng, 3))  # an unfinished episode grew after another was added
    # the replica already holds the first 2 steps of episode 0
    e0 = main.load_episode(0)
    replica.add_episode(*(getattr(e0, f)[:2] for f in STEP_FIELD_NAMES))
    for ep, start, stop in _plan(main.lengths, [replica.lengths]):
        e = main.load_episode(ep)
        _append(replica, ep, start, tuple(getattr(e, f)[start:stop] for f in STEP_FIELD_NAMES))
    assert np.array_equal(replica.lengths, main.lengths)
    for i in range(main.num_episodes):
        x, y = main.load_episode(i), replica.load_episode(i)
        for f in STEP_FIELD_NAMES:
            assert np.array_equal(getattr(x, f), getattr(y, f))
    # a part sent from beyond what the replica holds is refused
    with pytest.raises(DistributedError, match="episode 1 has 2 steps, rank 0 sent from 5"):
        _append(replica, 1, 5, _steps(rng, 1))
    main.close()
    replica.close()


def test_a_replica_holding_more_than_rank_0_is_detected(tmp_path) -> None:
    rng = np.random.default_rng(1)
    store = _store(tmp_path, "r")
    store.add_episode(*_steps(rng, 3))
    assert not _holds_more(store, np.array([3, 2]))
    assert _holds_more(store, np.array([2]))  # an episode longer than rank 0's
    assert _holds_more(store, np.zeros(0, dtype=np.int64))  # more episodes
    store.close()


def test_a_replica_of_another_run_is_emptied(tmp_path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "rank1"
    open_replica(folder, "run-a").close()  # writes the marker of run-a
    store = ReplayStore(folder / "train", backend="numpy", obs_shape=(3, 4, 4))
    store.add_episode(*_steps(rng, 3))
    store.commit()
    store.close()
    same = open_replica(folder, "run-a")
    assert same.num_episodes == 1  # the same run: kept
    same.close()
    other = open_replica(folder, "run-b")
    assert other.num_episodes == 0  # another run's replica: emptied
    other.close()


def test_replica_folders(tmp_path) -> None:
    assert replica_dir(str(tmp_path), tmp_path / "run", 3) == tmp_path.resolve() / "rank3"
    a = replica_dir(None, tmp_path / "x" / "run", 1)
    b = replica_dir(None, tmp_path / "y" / "run", 1)
    assert a != b and a.name == "rank1" and a.parent.name.startswith("deltairis-replica-run-")


def _ctx(rank: int, world: int) -> DistContext:
    return DistContext(rank=rank, world_size=world, local_rank=rank)


def test_placement_follows_local_rank(monkeypatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert placement(_ctx(2, 4)) == Placement(2, 2)  # no LOCAL_RANK: every rank is its own node
    # 2 nodes of 2 ranks: rank 0 and its reader, rank 2 writes node 1's replica that rank 3 reads
    kinds = []
    for rank, local in enumerate((0, 1, 0, 1)):
        monkeypatch.setenv("LOCAL_RANK", str(local))
        kinds.append(placement(_ctx(rank, 4)).kind)
    assert kinds == ["main", "reads rank 0's store", "writes the node's replica", "reads the node's replica"]
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(DistributedError, match="numbered consecutively"):
        placement(_ctx(1, 4))  # local rank 3 of global rank 1: no such node
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(DistributedError, match="LOCAL_WORLD_SIZE=1"):
        placement(_ctx(1, 4))


def test_ranks_of_a_node_must_share_a_host() -> None:
    check_nodes([(0, "a"), (0, "a"), (2, "b"), (2, "b")], 0)
    with pytest.raises(DistributedError, match="rank 3 \\(host c\\) counts rank 2"):
        check_nodes([(0, "a"), (0, "a"), (2, "b"), (2, "c")], 0)
    with pytest.raises(DistributedError, match="counts rank 1"):
        check_nodes([(0, "a"), (0, "a"), (1, "a")], 0)  # rank 1 is not the first rank of a node


def _block_bytes(directory) -> list[bytes]:
    data = (directory / "obs.lz4").read_bytes()
    table = np.fromfile(directory / "obs.blk", dtype=np.int64).reshape(-1, 4)
    return sorted(data[off : off + size] for _, _, off, size in table.tolist())


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_compressed_frames_are_sent_as_the_blocks_rank_0_holds(tmp_path, compression: str) -> None:
    rng = np.random.default_rng(4)

    def store(name: str) -> ReplayStore:
        return ReplayStore(tmp_path / name, backend="numpy", obs_shape=(3, 4, 4), compression=compression)

    def steps(t: int) -> tuple[np.ndarray, ...]:  # flat frames, which compress
        obs = np.repeat(rng.integers(0, 256, (t, 3), dtype=np.uint8), 16, axis=1).reshape(t, 3, 4, 4)
        return (obs, *_steps(rng, t)[1:])

    main, replica, partial = store("main"), store("replica"), store("partial")
    a = main.add_episode(*steps(11))
    main.add_episode(*steps(3))
    main.extend_episode(a, *steps(9))  # episode 0: two appends, episode 1 in between
    e0 = main.load_episode(0)
    replica.add_episode(*(getattr(e0, f)[:11] for f in STEP_FIELD_NAMES))  # up to a block boundary
    partial.add_episode(*(getattr(e0, f)[:2] for f in STEP_FIELD_NAMES))  # inside a block
    lz4 = compression == "lz4"
    sent = {}
    for target, others in ((replica, [replica.lengths]), (partial, [replica.lengths, partial.lengths])):
        sent[target] = 0
        for ep, start, stop in _plan(main.lengths, others):
            part = _part(main, ep, start, stop)
            # blocks as rank 0 holds them when the part starts and ends at block boundaries
            assert isinstance(part[0], PackedFrames) == (lz4 and start in (0, 11))
            sent[target] += _nbytes(part)
            _append(target, ep, start, part)
        assert np.array_equal(target.lengths, main.lengths)
        for i in range(main.num_episodes):
            x, y = main.load_episode(i), target.load_episode(i)
            assert all(np.array_equal(getattr(x, f), getattr(y, f)) for f in STEP_FIELD_NAMES)
    if lz4:  # the replica holds rank 0's blocks, byte for byte
        replica.commit()
        main.commit()
        assert _block_bytes(tmp_path / "replica") == _block_bytes(tmp_path / "main")
    raw = 12 * 3 * 4 * 4 + 12 * 14  # episode 0's last 9 steps and episode 1: frames and the other fields
    assert (sent[replica] < raw) if lz4 else (sent[replica] == raw)
    for s in (main, replica, partial):
        s.close()


def test_a_replica_stored_otherwise_than_rank_0s_store_is_made_anew(tmp_path) -> None:
    rng = np.random.default_rng(5)
    replica = open_replica(tmp_path / "rank1", "run", "none")  # frames of 3x64x64, the default
    replica.add_episode(rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8), *_steps(rng, 3)[1:])
    replica.commit()
    replica.close()
    again = open_replica(tmp_path / "rank1", "run", "lz4")  # rank 0 now stores LZ4 blocks
    assert again.compression == "lz4" and again.num_episodes == 0
    again.close()
