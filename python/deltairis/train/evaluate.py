"""Evaluating a policy in the real environment (shared by ``deltairis-eval``, the trainer and tests)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from deltairis.train.collector import CollectStats, run_test_episodes
from deltairis.train.env_config import make_env


def episode_metrics(stats: CollectStats, prefix: str = "") -> dict[str, float]:
    """Mean/std/min/max return, mean length, and Crafter achievements + score when available."""
    out: dict[str, float] = {f"{prefix}num_episodes": float(len(stats.episode_returns))}
    if stats.episode_returns:
        r = np.asarray(stats.episode_returns, dtype=np.float64)
        out[f"{prefix}return_mean"] = float(r.mean())
        out[f"{prefix}return_std"] = float(r.std())
        out[f"{prefix}return_min"] = float(r.min())
        out[f"{prefix}return_max"] = float(r.max())
        out[f"{prefix}episode_length_mean"] = float(np.mean(stats.episode_lengths))
    if stats.achievements:
        from deltairis.envs.crafter_metrics import crafter_metrics

        out.update({f"{prefix}{k}": v for k, v in crafter_metrics(stats.achievements).items()})
    return out


@torch.no_grad()
def play_test_episodes(
    agent: Any | None,
    env_cfg: DictConfig,
    *,
    num_episodes: int,
    num_envs: int,
    seed: int,
    epsilon: float = 0.0,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
    split: str = "test",
) -> tuple[CollectStats, dict[str, float]]:
    """Play ``num_episodes`` episodes with ``agent``'s policy (``None``: uniformly random actions).

    The reference's test protocol: the policy's LSTM starts from a burn-in on zero frames. Returns the
    per-episode statistics and their summary metrics.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    device = torch.device(device)
    env = make_env(env_cfg, split, min(num_envs, num_episodes), seed=seed)
    try:
        ac = None
        if agent is not None:
            if agent.config.num_actions != env.num_actions:
                raise ValueError(
                    f"the agent has {agent.config.num_actions} actions but the {env_cfg.name} env has "
                    f"{env.num_actions}; wrong env, game id or preset for this checkpoint?"
                )
            agent.eval()
            ac = agent.actor_critic
        burn_in = 0 if agent is None else int(agent.config.actor_critic.burn_in)
        stats = run_test_episodes(
            env,
            num_episodes,
            ac,
            device,
            epsilon=epsilon,
            temperature=temperature,
            seed=seed,
            burn_in=burn_in,
        )
    finally:
        env.close()
    out = episode_metrics(stats)
    out["steps_per_s"] = stats.steps_per_second
    return stats, out


def evaluate_policy(agent: Any | None, env_cfg: DictConfig, **kwargs: Any) -> dict[str, float]:
    """The summary metrics of :func:`play_test_episodes` (same arguments)."""
    return play_test_episodes(agent, env_cfg, **kwargs)[1]


__all__ = ["episode_metrics", "evaluate_policy", "play_test_episodes"]
