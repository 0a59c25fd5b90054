"""Crafter through the ``crafter`` package itself (the reference backend and the fallback).

Each env is a ``crafter.Env(area=(64, 64), view=(9, 9), size=(64, 64), reward=True, length=...,
seed=seed + i)`` stepped in the calling thread by :class:`~deltairis.envs.vector.SyncVectorEnv`.

``crafter.Env.step`` only reports ``done``; it is set when the player dies or when the episode reaches
``length`` steps. We split it: ``terminated`` = the player died (``info["discount"] == 0``), ``truncated``
= the length was reached with the player alive. A death on the last allowed step counts as terminated.
``final_info`` is crafter's own info dict (``inventory``, ``achievements``, ``discount``, ``semantic``,
``player_pos``, ``reward``).

Seeding follows ``crafter.Env(seed=s)`` exactly: ``reset(seed)`` gives env ``i`` a fresh
``crafter.Env(seed=seed + i)``, whose episode ``k`` uses crafter's own world seed
``hash((seed + i, k)) % (2**31 - 1)``; auto-resets continue with episode ``k + 1``. The native engine is
byte-compatible with this, so both backends produce the same trajectories for the same seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deltairis.envs.vector import SyncVectorEnv

CRAFTER_AREA = (64, 64)
CRAFTER_VIEW = (9, 9)
CRAFTER_SIZE = (64, 64)
DEFAULT_LENGTH = 10000


def crafter_action_names() -> list[str]:
    """The 17 action names, in crafter's own order (from its data file)."""
    import crafter

    return list(crafter.constants.actions)


def crafter_achievements() -> list[str]:
    """The 22 achievement names, in crafter's own (sorted) order."""
    import crafter

    return list(crafter.constants.achievements)


class CrafterPythonEnv:
    """One ``crafter.Env`` with a reseeding ``reset(seed)`` (crafter's own ``reset`` takes no seed)."""

    def __init__(self, seed: int, length: int = DEFAULT_LENGTH, reward: bool = True) -> None:
        import crafter

        self._crafter = crafter
        self.length = length
        self.reward = reward
        self.action_names = crafter_action_names()
        self.env = self._make(seed)

    def _make(self, seed: int) -> Any:
        return self._crafter.Env(
            area=CRAFTER_AREA,
            view=CRAFTER_VIEW,
            size=CRAFTER_SIZE,
            reward=self.reward,
            length=self.length,
            seed=int(seed),
        )

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.env = self._make(seed)  # identical to a fresh crafter.Env(seed=seed)
        return self.env.reset()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        return self.env.step(action)

    def close(self) -> None:
        pass


def crafter_is_truncated(done: bool, info: dict[str, Any]) -> bool:
    """A finished crafter episode was cut by the length limit (player alive), not ended by death."""
    return bool(done) and float(info["discount"]) > 0.0


class CrafterPythonVectorEnv(SyncVectorEnv):
    """``num_envs`` Python ``crafter.Env`` behind the :class:`~deltairis.envs.vector.VectorEnv` interface.

    Args:
        num_envs: number of envs.
        seed: env ``i`` starts as ``crafter.Env(seed=seed + i)``.
        length: episode length limit in steps (crafter's ``length``), 10,000 in the paper's setting.
        reward: crafter's ``reward`` flag.
    """

    def __init__(self, num_envs: int, seed: int = 0, length: int = DEFAULT_LENGTH, reward: bool = True) -> None:
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        super().__init__(
            [
                (lambda i=i: CrafterPythonEnv(seed + i, length=int(length), reward=reward))
                for i in range(int(num_envs))
            ],
            is_truncated=crafter_is_truncated,
            seed=int(seed),
        )
        self.length = int(length)
