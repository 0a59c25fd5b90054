"""Helpers shared by the command-line tools: loading a run's config and agent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    from deltairis.agent import Agent

logger = logging.getLogger("deltairis.cli")

#: The environment (``env=`` group) and parameters (``params=`` group) that go with each model preset.
PRESET_GROUPS = {"crafter": ("crafter", "crafter"), "atari": ("atari", "atari"), "tiny": ("toy", "tiny")}
#: The model preset of each environment (``--env`` of deltairis-eval); ``gymnasium`` has none of its own
#: (a checkpoint's preset is read from it, or given with ``--preset``).
ENV_PRESET = {"crafter": "crafter", "atari": "atari", "toy": "tiny"}


def default_config(preset: str, env_id: str | None = None) -> DictConfig:
    """The default training configuration of a model preset (the config a published checkpoint goes with).

    Raises:
        ConfigError: unknown preset, or an Atari preset without ``env_id``.
    """
    from deltairis.train.configuration import ConfigError, compose_config

    if preset not in PRESET_GROUPS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_GROUPS)}")
    env, params = PRESET_GROUPS[preset]
    overrides = [f"env={env}", f"params={params}"]
    if env == "atari":
        if not env_id:
            raise ConfigError(
                "an Atari checkpoint needs the game: pass --env-id, e.g. --env-id BreakoutNoFrameskip-v4"
            )
        overrides.append(f"env.train.id={env_id}")
    return compose_config(overrides)


def load_run(
    run_dir: Path | None,
    checkpoint: Path | None,
    device: str,
    *,
    preset: str | None = None,
    env_id: str | None = None,
) -> tuple[DictConfig, Agent]:
    """The validated config of a run and its agent (``RUN/checkpoints/last.pt`` unless ``checkpoint``).

    A run folder (``RUN/config/trainer.yaml``) gives its own config. Without one (a folder holding only
    ``checkpoints/last.pt``, e.g. the published checkpoint, or ``checkpoint`` given outside a run folder),
    the default config of the model preset is used and a notice says so: the preset saved in our own
    checkpoint format, else ``preset``, else ``crafter`` (the published checkpoint) or, when the tensors
    do not fit it, the first of ``atari``, ``tiny`` that fits. ``atari`` needs ``env_id``; ``tiny`` plays
    the toy env. Both checkpoint layouts load (see :func:`deltairis.agent.load_agent`).

    Raises:
        ConfigError: not a run folder and no checkpoint, or a preset problem.
        CheckpointError, FileNotFoundError: the checkpoint cannot be loaded, or a file of the run
            folder's checkpoint set is not plain data (it would run code: refused, never loaded).
    """
    from deltairis.agent import CheckpointError, load_agent
    from deltairis.train.configuration import ConfigError, load_run_config

    config_path = None if run_dir is None else run_dir / "config" / "trainer.yaml"
    if checkpoint is None:
        if run_dir is None:
            raise ConfigError("give a run folder or --checkpoint PATH")
        checkpoint = run_dir / "checkpoints" / "last.pt"
        from deltairis.train.checkpointing import check_checkpoint_files

        check_checkpoint_files(
            run_dir / "checkpoints"
        )  # every file of the set is data, or it is refused by name
    if config_path is not None and config_path.is_file():
        cfg = load_run_config(config_path)
        if preset is not None and preset != cfg.agent.preset:
            logger.warning(
                "ignoring --preset %s: the run %s has the %s preset", preset, run_dir, cfg.agent.preset
            )
        return cfg, load_agent(checkpoint, preset=cfg.agent.preset, device=device)
    if not checkpoint.is_file():
        where = f"no saved configuration at {config_path} and " if config_path is not None else ""
        raise ConfigError(
            f"{where}no checkpoint at {checkpoint}: is this a run folder? For a published checkpoint, "
            "put it at checkpoints/last.pt of a folder (mkdir -p checkpoints && cp last.pt checkpoints/) "
            "or pass --checkpoint PATH"
        )
    if preset is not None:
        agent = load_agent(checkpoint, preset=preset, device=device)
    else:  # a reference layout does not name its preset: Crafter (the published checkpoint), else the one that fits
        try:
            agent = load_agent(checkpoint, preset="crafter", device=device)
        except CheckpointError as first:
            for other in ("atari", "tiny"):
                try:
                    agent = load_agent(checkpoint, preset=other, device=device)
                except CheckpointError:
                    continue
                logger.warning(
                    "checkpoint %s does not fit the crafter preset but fits the %s preset", checkpoint, other
                )
                break
            else:
                raise CheckpointError(
                    f"no preset fits this checkpoint; is it a delta-iris agent? {first}"
                ) from first
    used = agent.config.preset  # our format saves its preset; for a reference layout this is `preset`
    if preset is not None and preset != used:
        logger.warning(
            "ignoring --preset %s: checkpoint %s was saved with the %s preset", preset, checkpoint, used
        )
    cfg = default_config(used, env_id)
    env, params = PRESET_GROUPS[used]
    game = f" env.train.id={cfg.env.train.id}" if env == "atari" else ""
    logger.warning(
        "no run configuration%s: using the default configuration of the %s preset (env=%s params=%s%s) "
        "for checkpoint %s",
        f" in {run_dir}" if run_dir is not None else "",
        used,
        env,
        params,
        game,
        checkpoint,
    )
    return cfg, agent


def env_config(name: str, env_id: str | None) -> DictConfig:
    """The ``env`` section of the default config for ``name`` (crafter | atari | toy | gymnasium)."""
    from deltairis.train.configuration import compose_config

    overrides = [f"env={name}"]
    if env_id:
        overrides.append(f"env.train.id={env_id}")
    return compose_config(overrides).env
