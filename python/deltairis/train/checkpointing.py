"""Taking a checkpoint set of a run and writing it (on a background thread or not).

:func:`take_checkpoint` commits the stores and captures, on the host, everything the set holds at that
instant (a :class:`deltairis.train.state.CheckpointSet`); :func:`write_checkpoint` serializes it at once and
writes the files atomically (:func:`deltairis.checkpoint.write_checkpoint_set`), on the
:class:`~deltairis.checkpoint.BackgroundWriter`'s thread when asked: later training cannot change what is
written, and the bytes are the same either way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from deltairis.agent import Agent, agent_checkpoint
from deltairis.checkpoint import BackgroundWriter, non_finite_names, serialize_members, write_checkpoint_set
from deltairis.data import ReplayStore
from deltairis.data.replay_store import INDEX_NAME
from deltairis.errors import NonFiniteError
from deltairis.seeding import global_rng_state
from deltairis.train.collector import Collector
from deltairis.train.state import CheckpointSet, Position, TrainerState

logger = logging.getLogger(__name__)


def refuse_non_finite(agent: Agent, epoch: int, ckpt_dir: Path) -> None:
    """Raise :class:`NonFiniteError` when a weight or buffer of ``agent`` is not finite (one host sync)."""
    bad = non_finite_names(agent.state_dict())
    if bad:
        raise NonFiniteError(
            f"refusing to checkpoint epoch {epoch}: non-finite values in {', '.join(bad[:5])}"
            + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            + f"; the previous checkpoint in {ckpt_dir} is left as it was"
        )


def take_checkpoint(
    state: TrainerState,
    agent: Agent,
    optimizers: Mapping[str, torch.optim.Optimizer],
    stores: Mapping[str, ReplayStore],
    collector: Collector,
    position: Position | None,
) -> CheckpointSet:
    """Commit ``stores``, then the checkpoint set of this instant: ``state`` with the RNG states, the
    collector, the train store's committed index and ``position`` (a mid-epoch checkpoint's), the agent
    and the optimizers."""
    for store in stores.values():
        store.commit()
    index = stores["train"].directory / INDEX_NAME
    state = dataclasses.replace(
        state,
        rng=global_rng_state(),
        collector=collector.state_dict(),
        dataset_index={"train": index.read_bytes() if index.exists() else None},
        position=position,
    )
    return CheckpointSet(state, agent_checkpoint(agent), {k: o.state_dict() for k, o in optimizers.items()})


def write_checkpoint(
    writer: BackgroundWriter, ckpt_dir: Path, checkpoint: CheckpointSet, background: bool
) -> None:
    """Serialize ``checkpoint`` now, then write it to ``ckpt_dir``: on ``writer``'s thread when
    ``background`` (its error is raised by the writer's next ``wait``), else before this returns."""
    t0 = time.perf_counter()
    blobs = serialize_members(checkpoint.members())  # host bytes: later training cannot change them
    epoch = checkpoint.epoch
    if background:
        writer.submit(lambda: write_checkpoint_set(ckpt_dir, blobs, epoch))
        logger.debug("checkpoint of epoch %d handed to the writer in %.2fs", epoch, time.perf_counter() - t0)
    else:
        write_checkpoint_set(ckpt_dir, blobs, epoch)
        logger.debug("checkpoint of epoch %d written in %.2fs", epoch, time.perf_counter() - t0)


__all__ = ["refuse_non_finite", "take_checkpoint", "write_checkpoint"]
