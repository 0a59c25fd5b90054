"""Evaluation: a policy's test episodes in the real environment (shared by ``deltairis-eval``, the trainer
and tests), the components' losses on those episodes, and the tokenizer's reconstructions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltairis.agent import Agent
from deltairis.config.schema import EnvConfig, TestCollectionConfig
from deltairis.data import ReplayStore
from deltairis.train.collector import CollectStats, run_test_episodes
from deltairis.train.components import Component
from deltairis.train.env_config import make_env
from deltairis.train.logging_utils import save_image_grid, to_uint8_hwc
from deltairis.train.phase import RunningSums

logger = logging.getLogger(__name__)


def episode_metrics(stats: CollectStats, prefix: str = "", strict: bool = True) -> dict[str, float]:
    """Mean/std/min/max return, mean length, and Crafter achievements + score when available.

    ``strict=False`` (the trainer) logs a warning and returns ``{}`` where a value cannot be computed (an
    unknown Crafter achievement name, say) instead of raising the ValueError.
    """
    try:
        return _episode_metrics(stats, prefix)
    except ValueError as exc:
        if strict:
            raise
        logger.warning("cannot compute episode metrics: %s", exc)
        return {}


def _episode_metrics(stats: CollectStats, prefix: str) -> dict[str, float]:
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


def _check_fits(agent: Agent | None, num_actions: int, env_name: str) -> None:
    """Refuse an agent whose action count is not the env's; switch it to eval mode."""
    if agent is None:
        return
    if agent.config.num_actions != num_actions:
        raise ValueError(
            f"the agent has {agent.config.num_actions} actions but the {env_name} env has "
            f"{num_actions}; wrong env, game id or preset for this checkpoint?"
        )
    agent.eval()


@torch.no_grad()
def play_test_episodes(
    agent: Agent | None,
    env_cfg: EnvConfig,
    settings: TestCollectionConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    split: str = "test",
    env_seed: int | None = None,
    store: ReplayStore | None = None,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefix: str = "",
    strict_metrics: bool = True,
) -> tuple[CollectStats, dict[str, float]]:
    """Play ``settings.num_episodes`` episodes with ``agent``'s policy (``None``: uniformly random actions).

    The reference's test protocol: ``min(settings.num_envs, settings.num_episodes)`` envs reset with
    ``env_seed`` (default ``seed``), the policy (ε-greedy at ``settings.epsilon``, sampled at
    ``settings.temperature``, its generator seeded with ``seed``) with its LSTM burned in on zero frames.
    ``store``, ``progress`` and ``should_stop`` are those of
    :func:`deltairis.train.collector.run_test_episodes`. Returns the per-episode statistics and their
    summary metrics (keys prefixed with ``prefix``; see :func:`episode_metrics` for ``strict_metrics``).
    """
    num_episodes = settings.num_episodes
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    device = torch.device(device)
    env = make_env(
        env_cfg, split, min(settings.num_envs, num_episodes), seed=seed if env_seed is None else env_seed
    )
    try:
        _check_fits(agent, env.num_actions, env_cfg.name)
        stats = run_test_episodes(
            env,
            num_episodes,
            None if agent is None else agent.actor_critic,
            device,
            epsilon=settings.epsilon,
            temperature=settings.temperature,
            seed=seed,
            store=store,
            progress=progress,
            burn_in=0 if agent is None else agent.config.actor_critic.burn_in,
            should_stop=should_stop,
        )
    finally:
        env.close()
    out = episode_metrics(stats, prefix, strict=strict_metrics)
    out[f"{prefix}steps_per_s"] = stats.steps_per_second
    return stats, out


def evaluate_policy(
    agent: Agent | None,
    env_cfg: EnvConfig,
    *,
    num_episodes: int,
    num_envs: int,
    seed: int,
    epsilon: float = 0.0,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
    split: str = "test",
) -> dict[str, float]:
    """The summary metrics of :func:`play_test_episodes` with these test settings."""
    settings = TestCollectionConfig(
        num_envs=num_envs, num_episodes=num_episodes, epsilon=epsilon, temperature=temperature
    )
    return play_test_episodes(agent, env_cfg, settings, seed=seed, device=device, split=split)[1]


def eval_chunks(lengths: Any, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive segments covering every episode, as the reference's evaluation traverses a store.

    Episode ``i`` of length ``n`` gives the segments ``[j*L, (j+1)*L)`` for ``j < ceil(n / L)`` (the last
    one right-padded), in episode order; a last segment with a single real step is dropped. Returns
    (episode ids, starts), int64.
    """
    eps, starts = [], []
    for ep, n in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        k = -(-n // seq_len)
        if n - (k - 1) * seq_len < 2:  # the last segment holds a single real step
            k -= 1
        eps.extend([ep] * k)
        starts.extend(j * seq_len for j in range(k))
    return np.asarray(eps, dtype=np.int64), np.asarray(starts, dtype=np.int64)


@torch.no_grad()
def eval_losses(
    component: Component, store: ReplayStore, device: torch.device, max_batches: int | None
) -> dict[str, float]:
    """Mean over batches of each loss metric, the batches covering every episode of ``store`` in order
    (at most ``max_batches``; no autocast)."""
    seq_len = component.seq_len
    batch_size = component.config.batch_size
    eps, starts = eval_chunks(store.lengths, seq_len)
    num_batches = -(-len(eps) // batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    sums = RunningSums()
    for b in range(num_batches):
        ep, st = eps[b * batch_size : (b + 1) * batch_size], starts[b * batch_size : (b + 1) * batch_size]
        batch = store.gather(ep, st, st + seq_len).to(device)
        sums.add(component.loss(batch, 0).metrics)
    return sums.means(num_batches, prefix="eval/")


@torch.no_grad()
def save_reconstructions(
    agent: Agent, store: ReplayStore, count: int, seq_len: int, seed: int, path: Path, device: torch.device
) -> Path:
    """Rows of real frames x_{t+1} above the tokenizer's reconstruction from (x_t, a_t, Δ-tokens), for
    ``count`` segments of ``seq_len`` steps drawn from ``store`` with ``seed``; written to ``path`` (PNG)."""
    batch = store.sample(
        "eval_reconstructions", count, seq_len, pad_mode="left", seed=seed, update_counts=False
    ).to(device)
    recon = agent.reconstruct(batch.obs[:, :-1], batch.act[:, :-1], batch.obs[:, 1:])  # (K, T-1, 3, H, W)
    mask = (batch.mask_padding[:, :-1] & batch.mask_padding[:, 1:]).cpu().numpy()
    real = to_uint8_hwc(batch.obs[:, 1:])
    fake = to_uint8_hwc(recon)
    rows = []
    for i in range(count):
        rows.append(real[i] * mask[i][:, None, None, None])
        rows.append(fake[i] * mask[i][:, None, None, None])
    save_image_grid(rows, path)
    return path


__all__ = [
    "episode_metrics",
    "eval_chunks",
    "eval_losses",
    "evaluate_policy",
    "play_test_episodes",
    "save_reconstructions",
]
