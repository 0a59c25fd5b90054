"""Taking a checkpoint set of a run and writing it (on a background thread or not).

:func:`take_checkpoint` commits the stores and captures, on the host, everything the set holds at that
instant (a :class:`deltairis.train.state.CheckpointSet`); :func:`write_checkpoint` serializes it at once and
writes the files atomically (:func:`deltairis.checkpoint.write_checkpoint_set`), on the
:class:`~deltairis.checkpoint.BackgroundWriter`'s thread when asked: later training cannot change what is
written, and the bytes are the same either way.

Reading a set back is reading data: :func:`read_checkpoint_members` loads the three files with
``torch.load(weights_only=True)`` (:func:`deltairis.checkpoint.load_safe`) and checks the env state blob
inside ``trainer_state.pt`` before anything of the run folder changes; a file that would run code is
refused by name. A set in an earlier version's format (pickled NumPy arrays and env objects) is refused
too, unless the user vouches for the folder with ``common.trust_checkpoint=true``: then it is loaded once
with full unpickling and rewritten in the safe format, atomically (:func:`upgrade_legacy_set`).
:func:`check_checkpoint_files` is the same check for the tools that only read the agent (play, eval).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltairis.agent import Agent, agent_checkpoint
from deltairis.checkpoint import (
    TRUST_HINT,
    BackgroundWriter,
    CorruptCheckpointError,
    LegacyCheckpointError,
    load_safe,
    load_trusted,
    non_finite_names,
    pickle_globals,
    refuse_foreign_names,
    serialize_members,
    write_checkpoint_set,
)
from deltairis.data import ReplayStore
from deltairis.data.replay_store import INDEX_NAME
from deltairis.envs.state_blob import (
    legacy_env_name_allowed,
    pack_env_state,
    read_env_state,
    supports_env_state,
)
from deltairis.errors import NonFiniteError
from deltairis.seeding import global_rng_state
from deltairis.train.collector import ENV_STATE_WHERE, Collector, paused_to_plain
from deltairis.train.state import PLAIN_STATE_VERSION, CheckpointSet, Position, TrainerState

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


#: the members of a checkpoint set, with how errors name them
MEMBERS = {"trainer_state.pt": "trainer state", "last.pt": "agent checkpoint", "optimizer.pt": "optimizer checkpoint"}


def _legacy_error(path: Path) -> LegacyCheckpointError:
    return LegacyCheckpointError(
        f"trainer state at {path} was written by an earlier delta-iris version, in a format that can run code "
        f"when it is loaded; the run folder was not loaded and was left untouched. {TRUST_HINT}."
    )


def check_env_state(state: Mapping[str, Any], path: Path) -> None:
    """Refuse (naming ``path``) a trainer state whose env state is not a valid blob of this version."""
    collector = state.get("collector")
    blob = collector.get("env") if isinstance(collector, Mapping) else None
    if blob is not None:
        read_env_state(blob, f"the env state in {path}")


def read_checkpoint_members(ckpt_dir: Path, trust: bool = False) -> tuple[dict[str, Any], Any, Any]:
    """(trainer state, agent, optimizers) payloads of a checkpoint set, read as data and checked.

    An earlier version's set raises :class:`LegacyCheckpointError` unless ``trust``
    (``common.trust_checkpoint``), which upgrades it first (:func:`upgrade_legacy_set`).
    """
    state_path = ckpt_dir / "trainer_state.pt"
    try:
        state = load_safe(state_path, MEMBERS["trainer_state.pt"])
    except LegacyCheckpointError:
        if not trust:
            raise _legacy_error(state_path) from None
        upgrade_legacy_set(ckpt_dir)
        state = load_safe(state_path, MEMBERS["trainer_state.pt"])
    else:
        version = state.get("version") if isinstance(state, dict) else None
        if isinstance(version, int) and version < PLAIN_STATE_VERSION:
            if not trust:
                raise _legacy_error(state_path)
            upgrade_legacy_set(ckpt_dir)
            state = load_safe(state_path, MEMBERS["trainer_state.pt"])
    agent = load_safe(ckpt_dir / "last.pt", MEMBERS["last.pt"])
    optim = load_safe(ckpt_dir / "optimizer.pt", MEMBERS["optimizer.pt"])
    if isinstance(state, dict):
        check_env_state(state, state_path)
    return state, agent, optim


def _upgrade_collector(collector: Mapping[str, Any]) -> dict[str, Any]:
    """An earlier version's collector state (NumPy arrays, a pickled env, pickled objects) as plain data."""
    env_blob = None
    if collector.get("env") is not None:
        what = "the pickled env state in trainer_state.pt"
        try:
            names = pickle_globals(collector["env"])
        except ValueError as exc:
            raise CorruptCheckpointError(f"{what} is not a pickle ({exc}); the run folder was left untouched") from exc
        refuse_foreign_names(names, legacy_env_name_allowed, what)  # what an earlier version pickled, nothing else
        env = pickle.loads(collector["env"])  # only under common.trust_checkpoint=true (see upgrade_legacy_set)
        try:
            env_blob = pack_env_state(env) if supports_env_state(env) else None
        except NotImplementedError:
            env_blob = None
        finally:
            env.close()
    return {
        "obs": torch.from_numpy(np.array(collector["obs"], dtype=np.uint8)),
        "episode_ids": torch.from_numpy(np.array(collector["episode_ids"], dtype=np.int64)),
        "recent": torch.from_numpy(np.array(collector["recent"], dtype=np.uint8)),
        "recent_len": torch.from_numpy(np.array(collector["recent_len"], dtype=np.int64)),
        "total_steps": int(collector["total_steps"]),
        "env": env_blob,
        "paused": paused_to_plain(collector.get("paused")),
    }


def upgrade_legacy_set(ckpt_dir: Path) -> None:
    """Load an earlier version's checkpoint set once, with full unpickling (the user vouched for it:
    ``common.trust_checkpoint=true``), and rewrite it in the safe format as one atomic set (the journaled
    writer: a crash leaves the old set or the new one). Every new member is checked to read back as
    data before anything is written."""
    logger.warning(
        "common.trust_checkpoint=true: loading the checkpoint set in %s with full unpickling, which runs any "
        "code a crafted file holds, and rewriting it in the safe format",
        ckpt_dir,
    )
    payloads = {name: load_trusted(ckpt_dir / name, what) for name, what in MEMBERS.items()}
    for name, payload in payloads.items():
        if not isinstance(payload, dict):
            raise CorruptCheckpointError(f"{ckpt_dir / name} holds a {type(payload).__name__}, not a checkpoint")
    state = dict(payloads["trainer_state.pt"])
    if state.get("collector") is not None:
        state["collector"] = _upgrade_collector(state["collector"])
    saved = CheckpointSet.from_members(state, payloads["last.pt"], payloads["optimizer.pt"])
    blobs = serialize_members(saved.members())
    for name, blob in blobs.items():  # the new set must read back as data, or nothing is written
        try:
            torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptCheckpointError(
                f"{ckpt_dir / name} cannot be rewritten as plain data ({type(exc).__name__}: {exc}); "
                "the checkpoint set was left as it was"
            ) from exc
    write_checkpoint_set(ckpt_dir, blobs, saved.epoch)
    logger.warning("the checkpoint set in %s is now in the safe format", ckpt_dir)


def check_checkpoint_files(ckpt_dir: Path) -> None:
    """For the tools that read a run folder's agent (play, eval): every member of the checkpoint set that
    exists must be data (:func:`~deltairis.checkpoint.load_safe`, tensors mapped, not read) and the env
    state a valid blob; a file that would run code is refused by name. An earlier version's
    ``trainer_state.pt`` (not read by these tools) only gets a warning."""
    for name, what in MEMBERS.items():
        path = ckpt_dir / name
        if not path.is_file():
            continue
        try:
            payload = load_safe(path, what, mmap=True)
        except LegacyCheckpointError:
            if name != "trainer_state.pt":
                raise
            logger.warning("%s is in an earlier version's format (not read here). %s.", path, TRUST_HINT)
            continue
        version = payload.get("version") if isinstance(payload, dict) else None
        if name == "trainer_state.pt" and isinstance(version, int) and version >= PLAIN_STATE_VERSION:
            check_env_state(payload, path)


__all__ = [
    "ENV_STATE_WHERE",
    "MEMBERS",
    "check_checkpoint_files",
    "check_env_state",
    "read_checkpoint_members",
    "refuse_non_finite",
    "take_checkpoint",
    "upgrade_legacy_set",
    "write_checkpoint",
]
