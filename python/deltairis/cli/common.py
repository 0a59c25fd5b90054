"""Helpers shared by the command-line tools: loading a run's config and agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def load_run(run_dir: Path, checkpoint: Path | None, device: str) -> tuple[DictConfig, Any]:
    """The validated config of a run folder and its agent (``checkpoints/last.pt`` by default)."""
    from deltairis.agent import load_agent
    from deltairis.train.configuration import load_run_config

    cfg = load_run_config(run_dir / "config" / "trainer.yaml")
    path = checkpoint or run_dir / "checkpoints" / "last.pt"
    agent = load_agent(path, preset=cfg.agent.preset, device=device)
    return cfg, agent


def env_config(name: str, env_id: str | None) -> DictConfig:
    """The ``env`` section of the default config for ``name`` (crafter | atari | toy)."""
    from deltairis.train.configuration import compose_config

    overrides = [f"env={name}"]
    if env_id:
        overrides.append(f"env.train.id={env_id}")
    return compose_config(overrides).env


def resolve_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec
