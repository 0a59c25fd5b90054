"""Building a run's agent and restoring its optimizers, from what a trainer starts with
(:class:`deltairis.train.roles.RunStart`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from deltairis.agent import Agent
from deltairis.errors import CorruptCheckpointError
from deltairis.seeding import derive_seed
from deltairis.train.components import Component
from deltairis.train.configuration import agent_config_from, untyped_config
from deltairis.train.roles import RunStart
from deltairis.train.run_folder import check_same_model
from deltairis.train.state import CheckpointSet
from deltairis.train.warm_start import COMPONENTS, warm_start

logger = logging.getLogger(__name__)


def build_agent(start: RunStart, load_initial: bool) -> Agent:
    """The agent of a run on ``start.device``: initialised from the run's seed, then the checkpoint's
    weights (a resume, refused when the config changes a parameter's shape) or, for a fresh run and
    ``load_initial``, those of ``agent.path_to_ckpt`` for the components ``agent.load_<component>`` chooses
    (a warm start; the other ranks get the weights from rank 0)."""
    agent_cfg = agent_config_from(untyped_config(start.cfg), start.num_actions)
    if start.saved is not None:
        check_same_model(start.saved.agent, agent_cfg)
    torch.manual_seed(derive_seed(start.seed, "init") % 2**63)
    agent = Agent(agent_cfg).to(start.device)
    path = start.cfg.agent.path_to_ckpt
    if start.saved is not None:
        agent.load_state_dict(start.saved.agent["state_dict"], strict=True)
    elif path and load_initial:  # a warm start: the chosen components, strictly (train/warm_start.py)
        agent_section = start.cfg.agent
        chosen = [c for c in COMPONENTS if getattr(agent_section, f"load_{c}")]
        warm_start(agent, path, chosen)
    return agent


def load_optimizers(components: Mapping[str, Component], saved: CheckpointSet, ckpt_dir: Path) -> None:
    """Each component's optimizer state from the checkpoint; a missing or mismatched one is a
    :class:`CorruptCheckpointError` naming ``ckpt_dir/optimizer.pt``."""
    for name, component in components.items():
        try:
            component.optimizer.load_state_dict(saved.optimizers[name])
        except (KeyError, ValueError) as exc:
            raise CorruptCheckpointError(
                f"{ckpt_dir / 'optimizer.pt'} does not hold the {name} optimizer of this model ({exc})"
            ) from exc


__all__ = ["build_agent", "load_optimizers"]
