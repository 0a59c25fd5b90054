"""Building the train / test vector envs from the ``env`` config section.

Auto-reset choice: every backend resets an env *immediately and individually* when its episode ends
(the rule of :mod:`deltairis.envs.vector`), instead of the reference's "wait until all envs are done".
The collector therefore stores, per env, the steps of the running episode and closes it in the store
when that env reports ``terminated`` (stored as ``end``) or ``truncated`` (time limit, stored as
``trunc``); the first observation of the next episode starts a new stored episode. No env idles while
others finish, and no step is thrown away.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypedDict

from omegaconf import DictConfig, OmegaConf

from deltairis.config.schema import EnvConfig, EnvSplitConfig
from deltairis.errors import ConfigError

if TYPE_CHECKING:
    from deltairis.envs.vector import VectorEnv

logger = logging.getLogger(__name__)


class EnvKwargs(TypedDict, total=False):
    """The env-specific keyword arguments of ``make_vector_env`` (each env's own settings)."""

    id: str  # atari, gymnasium
    train: bool  # atari: the train or the test preprocessing
    noop_max: int  # atari
    max_episode_frames: int  # atari
    length: int  # crafter
    max_steps: int  # toy
    respawn: bool  # toy
    grid: int  # toy
    max_episode_steps: int  # gymnasium
    frame_skip: int  # gymnasium
    max_pool: bool  # gymnasium
    make_kwargs: dict[str, Any]  # gymnasium: gymnasium.make's keyword arguments


def _plain_dict(value: Any) -> dict[str, Any]:
    """A config mapping as plain Python values (``gymnasium.make`` gets no OmegaConf nodes)."""
    return dict(OmegaConf.to_container(value, resolve=True)) if isinstance(value, DictConfig) else dict(value)


def env_kwargs(env_cfg: EnvConfig | DictConfig, split: str) -> EnvKwargs:
    """Keyword arguments of ``make_vector_env`` for the ``train`` or ``test`` settings.

    ``env_cfg`` is the typed ``env`` section (:class:`~deltairis.config.schema.EnvConfig`) or, from code
    that still holds the untyped config, its ``DictConfig``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    s: EnvSplitConfig | DictConfig = env_cfg.train if split == "train" else env_cfg.test
    name = env_cfg.name
    kw = EnvKwargs()
    if name == "atari":
        if not s.id:
            raise ConfigError(f"env.{split}.id is required with env=atari (e.g. BreakoutNoFrameskip-v4)")
        kw["id"] = str(s.id)
        kw["train"] = split == "train"
        if s.noop_max is not None:
            kw["noop_max"] = int(s.noop_max)
        if s.max_episode_frames is not None:
            kw["max_episode_frames"] = int(s.max_episode_frames)
    elif name == "crafter":
        if s.max_episode_steps is not None:
            kw["length"] = int(s.max_episode_steps)
    elif name == "gymnasium":
        if not s.id:
            raise ConfigError(f"env.{split}.id is required with env=gymnasium (a registered gymnasium id)")
        kw["id"] = str(s.id)
        if s.max_episode_steps is not None:
            kw["max_episode_steps"] = int(s.max_episode_steps)
        if s.frame_skip is not None:
            kw["frame_skip"] = int(s.frame_skip)
        if s.max_pool is not None:
            kw["max_pool"] = bool(s.max_pool)
        if s.make_kwargs:
            kw["make_kwargs"] = _plain_dict(s.make_kwargs)
    elif name == "toy":
        if s.max_episode_steps is not None:
            kw["max_steps"] = int(s.max_episode_steps)
        if s.respawn is not None:
            kw["respawn"] = bool(s.respawn)
        if s.grid is not None:
            kw["grid"] = int(s.grid)
    return kw


def make_env(env_cfg: EnvConfig | DictConfig, split: str, num_envs: int, seed: int) -> VectorEnv:
    """A :class:`~deltairis.envs.vector.VectorEnv` with the ``split`` settings, seeded with ``seed``."""
    kw = env_kwargs(env_cfg, split)
    from deltairis.envs import make_vector_env

    return make_vector_env(
        env_cfg.name, num_envs, seed=seed, backend=env_cfg.backend, num_threads=env_cfg.num_threads, **kw
    )


__all__ = ["EnvKwargs", "env_kwargs", "make_env"]
