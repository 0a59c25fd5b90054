"""The settings of a tiny training run, shared by the tests that train end to end (any env), and a
snapshot of a run folder for the tests that check a refused command changed nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

#: The tiny preset cut to a 1-epoch run of seconds on a CPU: 64 random steps collected, 2 updates per component
#: (any env: prepend its ``env=`` choice).
TINY_SETTINGS = [
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

#: the tiny run on the built-in toy env
TINY = ["env=toy", *TINY_SETTINGS]


def run_folder_snapshot(run: Path) -> dict[str, str]:
    """A hash of every file of the run folder ``run``, except those a refused start still touches: the
    log, the lock files and the TensorBoard event files."""
    files = [p for p in run.rglob("*") if p.is_file() and p.name not in ("train.log", "lock", ".lock")]
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if "tensorboard" not in p.parts
    }
