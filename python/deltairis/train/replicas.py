"""Replay-store replicas in a multi-process run (``torchrun``): one per node, kept equal to rank 0's store.

Rank 0 collects into the run folder's store. The ranks of one node share one train store
(:func:`placement`; a node's ranks are those with the same ``RANK - LOCAL_RANK``, as torchrun numbers
them):

- on rank 0's node, every rank reads rank 0's store itself (no replica);
- on another node, the node's lowest rank (local rank 0) writes a replica under the node-local folder
  ``distributed.store_dir`` (``<store_dir>/rank<r>``, ``r`` that rank), so no shared filesystem is
  needed; the node's other ranks open it read-only.

A rank that does not write a store *follows* one (``ReplayStore(follow=True)``): it sees a commit of the
writer only when it is complete, and only when it refreshes at the end of a sync. Without ``LOCAL_RANK``
in the environment every process counts as its own node.

After rank 0 collected (and when a run starts or resumes), :func:`sync_replicas` brings every store
up to rank 0's:

1. rank 0 sends its episode lengths and the visit counts of every consumer (:func:`from_main`: ranks > 0
   wait as long as rank 0's heartbeat moves);
2. a replica that holds more than rank 0 (an episode longer, more episodes: left behind by a resume
   from an earlier checkpoint) or that belongs to another run is emptied; every rank reports its node
   and, when it writes a replica, the replica's lengths; rank 0 commits its store when ranks of its
   node read it;
3. rank 0 broadcasts, per episode, the steps past the shortest replica's length (new episodes and the
   steps an unfinished episode gained), in messages of at most :data:`MESSAGE_BYTES` of frames; the
   frames of a compressed store go as the LZ4 blocks it holds (not decoded, not encoded again);
4. each replica appends what it lacks, in episode order (so episode ids match), takes rank 0's visit
   counts and commits; after a barrier every follower refreshes, checks its episode table against rank
   0's and takes rank 0's visit counts (in memory: a follower never writes).

Disk per node: one copy of the train store on every node but rank 0's (the frames dominate:
``3*64*64 = 12288`` bytes per step), written once per collection. Memory: at most one message
(:data:`MESSAGE_BYTES` of frames, plus its pickled copy) at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deltairis import distributed as dist
from deltairis.data import ReplayStore
from deltairis.data.fields import STEP_FIELD_NAMES
from deltairis.data.frame_codec import PackedFrames
from deltairis.errors import DistributedError, ReplayStoreError

logger = logging.getLogger(__name__)

#: frames bytes per broadcast message of a sync (a larger episode part goes alone)
MESSAGE_BYTES = 64 * 2**20
MARKER_NAME = "replica_of.json"


@dataclass(frozen=True)
class Placement:
    """Which train store a rank uses: ``leader`` is the lowest rank of its node (the replica's writer)."""

    rank: int
    leader: int

    @property
    def writes(self) -> bool:
        """Rank 0 (its own store) or the writer of its node's replica."""
        return self.rank == self.leader

    @property
    def kind(self) -> str:
        if self.rank == 0:
            return "main"
        if self.leader == 0:
            return "reads rank 0's store"
        return "writes the node's replica" if self.writes else "reads the node's replica"


def placement(ctx: dist.DistContext | None = None) -> Placement:
    """This rank's :class:`Placement`, from torchrun's ``LOCAL_RANK`` (absent: the rank is its own node).

    Torchrun numbers the ranks of a node consecutively, so a node's lowest rank is ``RANK - LOCAL_RANK``.
    """
    ctx = ctx or dist.current()
    local = os.environ.get("LOCAL_RANK")
    if local is None or not ctx.is_distributed:
        return Placement(ctx.rank, ctx.rank)
    try:
        local_rank = int(local)
    except ValueError:
        raise DistributedError(f"LOCAL_RANK={local!r} is not an integer") from None
    size = os.environ.get("LOCAL_WORLD_SIZE")
    if not 0 <= local_rank <= ctx.rank or (size is not None and size.isdigit() and local_rank >= int(size)):
        raise DistributedError(
            f"rank {ctx.rank}: LOCAL_RANK={local_rank} (LOCAL_WORLD_SIZE={size}) does not describe a node "
            "whose ranks are numbered consecutively, as torchrun numbers them"
        )
    return Placement(ctx.rank, ctx.rank - local_rank)


def check_nodes(reports: list[tuple[int, str]], rank: int) -> None:
    """``reports[r]``: rank ``r``'s (leader, host name). Raise :class:`DistributedError` when a rank's
    leader is not its own leader or runs on another host (``LOCAL_RANK`` lies about the node)."""
    for r, (leader, host) in enumerate(reports):
        if not 0 <= leader < len(reports) or reports[leader][0] != leader or reports[leader][1] != host:
            raise DistributedError(
                f"rank {rank}: rank {r} (host {host}) counts rank {leader} as the first rank of its node, "
                f"but rank {leader} reports {reports[leader] if 0 <= leader < len(reports) else 'nothing'}: "
                "the ranks of a node must share a host and be numbered consecutively (LOCAL_RANK)"
            )


def replica_dir(store_dir: str | None, run_dir: Path, rank: int) -> Path:
    """The replica folder written by ``rank`` (its node's lowest): ``<store_dir>/rank<r>``, by default under the system temp dir in a
    folder named after the run folder (its name and a digest of its full path)."""
    if store_dir:
        return Path(store_dir).expanduser().resolve() / f"rank{rank}"
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"deltairis-replica-{run_dir.name}-{digest}" / f"rank{rank}"


def open_replica(directory: Path, run_id: str, compression: str = "none") -> ReplayStore:
    """The replica store in ``directory``, emptied when it was made for another run (``run_id``); made
    anew when its frames are stored otherwise than ``compression`` (rank 0's setting)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        store = ReplayStore(directory / "train", backend="auto", create=True, compression=compression)
    except ReplayStoreError as exc:
        if "written with compression" not in str(exc):
            raise
        logger.warning("replica %s: frames stored otherwise than rank 0's (%s): made anew", directory, exc)
        shutil.rmtree(directory / "train")
        store = ReplayStore(directory / "train", backend="auto", create=True, compression=compression)
    marker = directory / MARKER_NAME
    try:
        found = json.loads(marker.read_text()).get("run_id") if marker.exists() else None
    except (OSError, ValueError):
        found = None
    if found != run_id:
        if store.num_episodes:
            logger.warning("replica %s belongs to another run: emptied", directory)
            store.clear()
        marker.write_text(json.dumps({"run_id": run_id}))
    return store


def open_follower_store(
    store_dir: str | None, run_dir: Path, main_store: Path, run_id: str, compression: str = "none"
) -> ReplayStore:
    """The train store of a rank > 0 (see the module docstring): rank 0's store ``main_store`` or the
    node's replica, followed read-only, or the replica itself on the node's lowest rank (its frames
    stored as ``compression``, rank 0's setting; a follower takes its writer's)."""
    where = placement()
    if where.leader == 0:
        return ReplayStore(main_store, backend="auto", follow=True)
    folder = replica_dir(store_dir, run_dir, where.leader)
    if where.writes:
        return open_replica(folder, run_id, compression)
    return ReplayStore(folder / "train", backend="auto", follow=True)


def _summary(store: Any) -> dict[str, Any]:
    with store.lock:
        return {
            "lengths": store.lengths,
            "counts": {c: store.visit_counts(c) for c in store.consumers},
        }


def _holds_more(store: Any, lengths: np.ndarray) -> bool:
    mine = store.lengths
    return mine.shape[0] > lengths.shape[0] or bool(np.any(mine > lengths[: mine.shape[0]]))


def _plan(main_lengths: np.ndarray, replica_lengths: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """(episode, start, stop) of every part some replica lacks (start: the shortest replica's length)."""
    out = []
    for ep, n in enumerate(main_lengths.tolist()):
        start = min(int(r[ep]) if ep < r.shape[0] else 0 for r in replica_lengths)
        if start < n:
            out.append((ep, start, int(n)))
    return out


def _messages(plan: list[tuple[int, int, int]], step_bytes: int) -> list[list[tuple[int, int, int]]]:
    groups: list[list[tuple[int, int, int]]] = [[]]
    size = 0
    for part in plan:
        b = (part[2] - part[1]) * step_bytes
        if groups[-1] and size + b > MESSAGE_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += b
    return [g for g in groups if g]


def _part(store: Any, ep: int, start: int, stop: int) -> tuple[Any, ...]:
    """Steps [start, stop) of episode ``ep`` of rank 0's store, as sent: the frames as the compressed
    blocks the store holds them in when it can (:class:`~deltairis.data.frame_codec.PackedFrames`), else
    as arrays like the other fields."""
    e = store.load_episode(ep)
    packed = store.packed_frames(ep, start, stop)
    if packed is not None:
        return (packed, *(getattr(e, f)[start:stop] for f in STEP_FIELD_NAMES[1:]))
    return tuple(getattr(e, f)[start:stop] for f in STEP_FIELD_NAMES)


def _nbytes(arrays: tuple[Any, ...]) -> int:
    return sum(a.nbytes for a in arrays)


def _append(store: Any, ep: int, start: int, arrays: tuple[Any, ...]) -> None:
    have = int(store.lengths[ep]) if ep < store.num_episodes else 0
    skip = have - start
    if skip < 0:
        raise DistributedError(
            f"replica {store.directory}: episode {ep} has {have} steps, rank 0 sent from {start}"
        )
    if skip and isinstance(arrays[0], PackedFrames):  # this replica holds part of it: frames as arrays
        arrays = (arrays[0].unpack(store.obs_shape), *arrays[1:])
    part = tuple(a[skip:] for a in arrays) if skip else arrays
    if part[1].shape[0] == 0:
        return
    if ep < store.num_episodes:
        store.extend_episode(ep, *part)
    elif ep == store.num_episodes:
        store.add_episode(*part)
    else:
        raise DistributedError(
            f"replica {store.directory}: rank 0 sent episode {ep} but the replica holds {store.num_episodes}"
        )


def sync_replicas(store: Any, what: str) -> dict[str, float]:
    """Bring every rank's train store to rank 0's ``store`` (call on every rank; see the module docstring).

    Returns metrics (rank 0): steps sent and the number of replicas. A no-op in a single process.
    """
    ctx = dist.current()
    if not ctx.is_distributed:
        return {}
    where = placement(ctx)
    replica = where.writes and not ctx.is_main  # this rank writes its node's replica
    main = dist.from_main(what, _summary(store) if ctx.is_main else None)
    lengths = np.asarray(main["lengths"], dtype=np.int64)
    if replica and _holds_more(store, lengths):
        logger.warning(
            "replica %s holds steps rank 0 does not (an earlier run state): emptied", store.directory
        )
        store.clear()
    reported = dist.gather_objects((where.leader, socket.gethostname(), store.lengths if replica else None))
    check_nodes([(r[0], r[1]) for r in reported], ctx.rank)
    replicas = [r[2] for r in reported[1:] if r[2] is not None]
    followers = [r for r, rep in enumerate(reported) if rep[0] != r]
    if ctx.is_main and any(reported[r][0] == 0 for r in followers):
        store.commit()  # the ranks of rank 0's node read its store: they see committed steps only
    plan = _plan(lengths, replicas) if ctx.is_main and replicas else None
    plan = dist.broadcast_object(plan) or []
    step_bytes = int(np.prod(store.obs_shape)) + 8 + 4 + 1 + 1
    sent = sent_bytes = 0
    for group in _messages(plan, step_bytes):
        payload = None
        if ctx.is_main:
            payload = [(ep, start, _part(store, ep, start, stop)) for ep, start, stop in group]
        payload = dist.broadcast_object(payload)
        for ep, start, arrays in payload:
            sent += int(arrays[1].shape[0])
            sent_bytes += _nbytes(arrays)
            if replica:
                _append(store, ep, start, arrays)
    if replica:
        _check_table(store, lengths, ctx.rank)
        _take_counts(store, main["counts"])
        store.commit()
    if followers:
        dist.gather_objects(None)  # every writer committed: the followers may refresh
    if not where.writes:
        store.refresh()
        _check_table(store, lengths, ctx.rank)
        _take_counts(store, main["counts"])
    return {
        "distributed/synced_steps": float(sent),
        "distributed/synced_bytes": float(sent_bytes),
        "distributed/replicas": float(len(replicas)),
    }


def _check_table(store: Any, lengths: np.ndarray, rank: int) -> None:
    if not np.array_equal(store.lengths, lengths):
        raise DistributedError(
            f"rank {rank}: store {store.directory} does not match rank 0's store after the sync "
            f"({store.num_episodes} episodes, {store.num_steps} steps vs {lengths.shape[0]}, "
            f"{int(lengths.sum())})"
        )


def _take_counts(store: Any, counts: dict[str, np.ndarray]) -> None:
    with store.lock:
        for consumer, c in counts.items():
            store.counts_for(consumer)[:] = c


def store_digest(store: Any) -> list[tuple[str, Any]]:
    """What the end-of-epoch check compares of a store: lengths and visit counts (not the frames)."""
    with store.lock:
        items: list[tuple[str, Any]] = [("store/lengths", store.lengths)]
        items += [(f"store/counts/{c}", store.visit_counts(c)) for c in store.consumers]
    return items


__all__ = [
    "MESSAGE_BYTES",
    "Placement",
    "check_nodes",
    "open_follower_store",
    "open_replica",
    "placement",
    "replica_dir",
    "store_digest",
    "sync_replicas",
]
