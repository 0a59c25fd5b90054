"""What a checkpoint set holds, as named fields instead of hand-built dictionaries.

A checkpoint set is three files of ``checkpoints/`` (see :mod:`deltairis.train.run_folder`), written together:

- ``trainer_state.pt``: :meth:`TrainerState.state_dict` (epoch, seed, update counters, RNG states, the
  collector, the train store's committed index, and where a mid-epoch checkpoint stopped);
- ``optimizer.pt``: the components' optimizer states by name, with the version and the epoch;
- ``last.pt``: the agent (:func:`deltairis.agent.agent_checkpoint`) with the epoch.

:class:`CheckpointSet` turns the three payloads into named fields (:meth:`CheckpointSet.from_members`) and
back (:meth:`CheckpointSet.members`); the keys inside each file are those earlier versions wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deltairis.checkpoint import from_plain, to_plain
from deltairis.train.components import COMPONENT_NAMES

#: Format version of checkpoints/trainer_state.pt and optimizer.pt. Version 2: plain data only (RNG
#: states and the collector without NumPy pickles, the env state as a blob), readable with
#: ``torch.load(weights_only=True)``; a trainer_state.pt of version 1 is an earlier version's format.
STATE_VERSION = 2
#: the first version of trainer_state.pt that is plain data
PLAIN_STATE_VERSION = 2


def _per_component() -> dict[str, int]:
    return dict.fromkeys(COMPONENT_NAMES, 0)


@dataclass
class Position:
    """Where a mid-epoch checkpoint stopped: the epoch, its phase and the step to go on from.

    ``partial`` is the interrupted phase's :meth:`deltairis.train.phase.PhaseProgress.state_dict` (None for
    a phase that starts over or goes on by itself, as the collection does), ``metrics`` those of the
    epoch's phases already done, ``seconds`` the time the epoch had taken so far.
    """

    epoch: int
    phase: str
    step: int
    partial: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "phase": self.phase,
            "step": self.step,
            "partial": self.partial,
            "metrics": dict(self.metrics),
            "seconds": self.seconds,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any] | None) -> Position | None:
        if state is None:
            return None
        return cls(
            epoch=int(state["epoch"]),
            phase=str(state["phase"]),
            step=int(state["step"]),
            partial=state.get("partial"),
            metrics=dict(state.get("metrics", {})),
            seconds=float(state.get("seconds", 0.0)),
        )


@dataclass
class TrainerState:
    """The trainer's progress: what ``checkpoints/trainer_state.pt`` holds.

    ``epoch``, the counters and ``position`` change while a run trains; ``rng``, ``collector`` and
    ``dataset_index`` are filled when a checkpoint is taken (and read back when a run resumes).
    ``collector`` is already plain data (:meth:`deltairis.train.collector.Collector.state_dict`);
    :meth:`state_dict` makes ``rng`` plain (NumPy's generator state) and :meth:`load_state_dict` undoes it.
    """

    seed: int
    epoch: int = 0
    num_updates: dict[str, int] = field(default_factory=_per_component)
    skipped_steps: dict[str, int] = field(default_factory=_per_component)
    #: steps skipped in a row by the non-finite guard, across epochs
    consecutive_skips: dict[str, int] = field(default_factory=_per_component)
    position: Position | None = None
    rng: dict[str, Any] | None = None
    collector: dict[str, Any] | None = None
    #: the committed index of each checkpointed store (``None``: the store did not exist yet)
    dataset_index: dict[str, bytes | None] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "num_updates": dict(self.num_updates),
            "skipped_steps": dict(self.skipped_steps),
            "consecutive_skips": dict(self.consecutive_skips),
            "rng": None if self.rng is None else to_plain(self.rng),  # NumPy's state as tagged bytes
            "collector": self.collector,
            "dataset_index": dict(self.dataset_index),
            "position": None if self.position is None else self.position.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take a saved state (counters that older files lack keep their values)."""
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
        self.num_updates = dict(state["num_updates"])
        self.skipped_steps.update(state.get("skipped_steps", {}))
        self.consecutive_skips.update(state.get("consecutive_skips", {}))
        self.position = Position.from_state_dict(state.get("position"))
        rng = state.get("rng")
        self.rng = None if rng is None else from_plain(rng, "the RNG states in trainer_state.pt")
        self.collector = state.get("collector")
        self.dataset_index = dict(state.get("dataset_index", {}))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> TrainerState:
        out = cls(seed=int(state["seed"]))
        out.load_state_dict(state)
        return out

    def take_position(self, epoch: int) -> Position | None:
        """The saved position if it is inside ``epoch`` (it is used once: the next epochs start afresh)."""
        position, self.position = self.position, None
        return position if position is not None and position.epoch == epoch else None


@dataclass
class CheckpointSet:
    """The three files of a checkpoint set as named fields (see the module docstring)."""

    trainer: TrainerState
    #: ``last.pt``: format, version, config, state_dict (and the epoch)
    agent: dict[str, Any]
    #: ``optimizer.pt``: each component's optimizer state by name
    optimizers: dict[str, dict[str, Any]]

    @property
    def epoch(self) -> int:
        return self.trainer.epoch

    def members(self) -> dict[str, dict[str, Any]]:
        """The payload of each file, by file name (what :func:`deltairis.checkpoint.serialize_members` takes)."""
        return {
            "last.pt": {**self.agent, "epoch": self.epoch},
            "optimizer.pt": {"version": STATE_VERSION, "epoch": self.epoch, **self.optimizers},
            "trainer_state.pt": self.trainer.state_dict(),
        }

    @classmethod
    def from_members(
        cls, state: Mapping[str, Any], agent: Mapping[str, Any], optim: Mapping[str, Any]
    ) -> CheckpointSet:
        """The set of three payloads read back (checked by :func:`deltairis.train.run_folder.read_checkpoint`)."""
        return cls(
            trainer=TrainerState.from_state_dict(state),
            agent=dict(agent),
            optimizers={k: v for k, v in optim.items() if k not in ("version", "epoch")},
        )


__all__ = ["PLAIN_STATE_VERSION", "STATE_VERSION", "CheckpointSet", "Position", "TrainerState"]
