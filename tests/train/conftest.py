"""Helpers for the training-pipeline tests: a tiny config that runs an epoch in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltairis.train.configuration import compose_config

# A 1-epoch run of these settings collects 64 random steps and makes 2 updates per component.
TINY = [
    "env=toy",
    "params=tiny",
    "common.device=cpu",
    "wandb.mode=disabled",
    "common.progress_bar=false",
    "common.seed=7",
    "collection.train.num_envs=2",
    "collection.train.num_steps_first_epoch=64",
    "collection.train.num_steps=16",
    "collection.test.num_envs=2",
    "collection.test.num_episodes=2",
    "collection.train.num_episodes_to_save=1",
    "collection.test.num_episodes_to_save=1",
    "training.tokenizer.steps_first_epoch=2",
    "training.tokenizer.steps_per_epoch=2",
    "training.tokenizer.batch_size=2",
    "training.tokenizer.seq_len=3",
    "training.world_model.steps_first_epoch=2",
    "training.world_model.steps_per_epoch=2",
    "training.world_model.batch_size=2",
    "training.world_model.seq_len=4",
    "training.actor_critic.start_after_epochs=0",
    "training.actor_critic.steps_first_epoch=2",
    "training.actor_critic.steps_per_epoch=2",
    "training.actor_critic.batch_size=2",
    "evaluation.every=1",
    "evaluation.num_batches=1",
    "evaluation.num_reconstructions=2",
    # small imagination horizon keeps the actor-critic step cheap
    "+agent.overrides.actor_critic.horizon=3",
]


def _tiny_config(*extra: str):
    return compose_config([*TINY, *extra])


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(*overrides)`` -> a validated config of a seconds-long tiny run."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The tiny run's overrides (for tests that start deltairis-train in a subprocess)."""
    return list(TINY)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
