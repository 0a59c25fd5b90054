"""Replay-store replicas of ranks > 0 in a multi-process run (``torchrun``), kept equal to rank 0's store.

Rank 0 collects into the run folder's store. Every rank > 0 keeps a replica of it under a node-local
folder (``distributed.store_dir``), so no shared filesystem is needed. After rank 0 collected (and when
a run starts or resumes), :func:`sync_replicas` brings every replica up to rank 0's store:

1. rank 0 sends its episode lengths and the visit counts of every consumer (:func:`from_main`: ranks > 0
   wait as long as rank 0's heartbeat moves);
2. a replica that holds more than rank 0 (an episode longer, more episodes: left behind by a resume
   from an earlier checkpoint) or that belongs to another run is emptied; every rank > 0 reports its
   lengths;
3. rank 0 broadcasts, per episode, the steps past the shortest replica's length (new episodes and the
   steps an unfinished episode gained), in messages of at most :data:`MESSAGE_BYTES` of frames;
4. each replica appends what it lacks, in episode order (so episode ids match), takes rank 0's visit
   counts and commits.

Disk per node: every rank > 0 on the node holds a full copy of the train store (the frames dominate:
``3*64*64 = 12288`` bytes per step). Memory: at most one message (:data:`MESSAGE_BYTES` of frames, plus
its pickled copy) at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from deltairis import distributed as dist
from deltairis.data import ReplayStore
from deltairis.data.fields import STEP_FIELD_NAMES
from deltairis.errors import DistributedError

logger = logging.getLogger(__name__)

#: frames bytes per broadcast message of a sync (a larger episode part goes alone)
MESSAGE_BYTES = 64 * 2**20
MARKER_NAME = "replica_of.json"


def replica_dir(store_dir: str | None, run_dir: Path, rank: int) -> Path:
    """The replica folder of ``rank``: ``<store_dir>/rank<r>``, by default under the system temp dir in a
    folder named after the run folder (its name and a digest of its full path)."""
    if store_dir:
        return Path(store_dir).expanduser().resolve() / f"rank{rank}"
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"deltairis-replica-{run_dir.name}-{digest}" / f"rank{rank}"


def open_replica(directory: Path, run_id: str) -> ReplayStore:
    """The replica store in ``directory``, emptied when it was made for another run (``run_id``)."""
    directory.mkdir(parents=True, exist_ok=True)
    store = ReplayStore(directory / "train", backend="auto", create=True)
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


def _append(store: Any, ep: int, start: int, arrays: tuple[np.ndarray, ...]) -> None:
    have = int(store.lengths[ep]) if ep < store.num_episodes else 0
    skip = have - start
    if skip < 0:
        raise DistributedError(
            f"replica {store.directory}: episode {ep} has {have} steps, rank 0 sent from {start}"
        )
    part = tuple(a[skip:] for a in arrays)
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
    """Bring every rank's replica to rank 0's ``store`` (call on every rank; see the module docstring).

    Returns metrics (rank 0): steps and bytes sent. A no-op in a single process.
    """
    ctx = dist.current()
    if not ctx.is_distributed:
        return {}
    main = dist.from_main(what, _summary(store) if ctx.is_main else None)
    lengths = np.asarray(main["lengths"], dtype=np.int64)
    if not ctx.is_main and _holds_more(store, lengths):
        logger.warning(
            "replica %s holds steps rank 0 does not (an earlier run state): emptied", store.directory
        )
        store.clear()
    reported = dist.gather_objects(None if ctx.is_main else store.lengths)
    plan = _plan(lengths, [r for r in reported[1:]]) if ctx.is_main else None
    plan = dist.broadcast_object(plan)
    step_bytes = int(np.prod(store.obs_shape)) + 8 + 4 + 1 + 1
    sent = 0
    for group in _messages(plan, step_bytes):
        payload = None
        if ctx.is_main:
            payload = []
            for ep, start, stop in group:
                e = store.load_episode(ep)
                payload.append((ep, start, tuple(getattr(e, f)[start:stop] for f in STEP_FIELD_NAMES)))
        payload = dist.broadcast_object(payload)
        for ep, start, arrays in payload:
            sent += int(arrays[1].shape[0])
            if not ctx.is_main:
                _append(store, ep, start, arrays)
    if not ctx.is_main:
        if not np.array_equal(store.lengths, lengths):
            raise DistributedError(
                f"rank {ctx.rank}: replica {store.directory} does not match rank 0's store after the sync "
                f"({store.num_episodes} episodes, {store.num_steps} steps vs {lengths.shape[0]}, "
                f"{int(lengths.sum())})"
            )
        with store.lock:
            for consumer, counts in main["counts"].items():
                store.counts_for(consumer)[:] = counts
        store.commit()
    return {"distributed/synced_steps": float(sent)}


def store_digest(store: Any) -> list[tuple[str, Any]]:
    """What the end-of-epoch check compares of a store: lengths and visit counts (not the frames)."""
    with store.lock:
        items: list[tuple[str, Any]] = [("store/lengths", store.lengths)]
        items += [(f"store/counts/{c}", store.visit_counts(c)) for c in store.consumers]
    return items


__all__ = ["MESSAGE_BYTES", "open_replica", "replica_dir", "store_digest", "sync_replicas"]
