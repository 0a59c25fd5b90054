"""A small built-in 64×64 RGB environment for tests and the ``tiny`` training preset.

``GridGoal``: a ``grid``×``grid`` board (default 4×4 of 16×16-pixel cells; 2..8) drawn on a dark background. The agent is a red square, the
goal a green square. Actions: ``noop, up, down, left, right`` (moving into a wall leaves the agent in
place). Reaching the goal gives +1; with ``respawn=True`` (default) the goal then reappears on a
uniformly random other cell and the episode goes on until ``max_steps`` agent steps (truncation); with
``respawn=False`` the episode terminates on reaching the goal (and is truncated after ``max_steps``).

Why it is learnable from pixels quickly: cells are large and high-contrast (an 8×8 latent grid sees
each cell as 2×2 latents), the dynamics are deterministic except for where the goal respawns, and the
reward is dense. A greedy policy (move along the Manhattan path) collects about one goal every 3.5
steps; a uniformly random policy collects several times fewer (see :func:`random_policy_return` and
:func:`oracle_policy_return`, and ``tests/envs/test_toy.py`` for the asserted margin).

Everything is deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from deltairis.envs.vector import OBS_SHAPE, SyncVectorEnv

GRID = 4  # default board size
CELL = OBS_SHAPE[0] // GRID  # 16 pixels at the default size
GRID_SIZES = range(2, 9)
MARGIN = 2  # pixels left dark around each square so neighbouring cells stay distinct
ACTION_NAMES = ["noop", "up", "down", "left", "right"]
# (d_row, d_col) per action, same order as ACTION_NAMES.
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
BACKGROUND = np.array([24, 24, 32], dtype=np.uint8)
GRID_LINE = np.array([64, 64, 72], dtype=np.uint8)
AGENT_COLOUR = np.array([230, 40, 40], dtype=np.uint8)
GOAL_COLOUR = np.array([40, 220, 60], dtype=np.uint8)


def _background(grid: int) -> np.ndarray:
    cell = OBS_SHAPE[0] // grid
    frame = np.empty(OBS_SHAPE, dtype=np.uint8)
    frame[:] = BACKGROUND
    for k in range(grid):
        frame[k * cell, :] = GRID_LINE
        frame[:, k * cell] = GRID_LINE
    return frame


_BACKGROUND_FRAMES = {g: _background(g) for g in GRID_SIZES}


class GridGoalEnv:
    """Single toy env with a crafter-style ``step`` returning ``(obs, reward, done, info)``.

    ``info`` holds ``agent_pos``, ``goal_pos`` (row, col), ``goals_reached`` and ``truncated``.

    Args:
        max_steps: episode length limit in agent steps (1..1000).
        respawn: keep the episode going after a goal (True) or terminate on the first goal (False).
        seed: seed for the first ``reset()`` when it is called without one.
        grid: board size, 2..8 cells a side (cells of ``64 // grid`` pixels; smaller boards make goals
            more frequent).
    """

    action_names: list[str] = list(ACTION_NAMES)

    def __init__(
        self, max_steps: int = 30, respawn: bool = True, seed: int | None = None, grid: int = GRID
    ) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or not 1 <= max_steps <= 1000:
            raise ValueError(f"max_steps must be an int in [1, 1000], got {max_steps!r}")
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or int(grid) not in GRID_SIZES:
            raise ValueError(f"grid must be an int in [2, 8], got {grid!r}")
        self.grid = int(grid)
        self.cell = OBS_SHAPE[0] // self.grid
        self.max_steps = int(max_steps)
        self.respawn = bool(respawn)
        self._rng = np.random.default_rng(seed)
        self.agent_pos = np.zeros(2, dtype=np.int64)
        self.goal_pos = np.zeros(2, dtype=np.int64)
        self._t = 0
        self._goals = 0
        self._started = False

    @property
    def num_actions(self) -> int:
        return len(ACTION_NAMES)

    def _place_goal(self) -> None:
        # Uniform over the cells other than the agent's.
        g = self.grid
        k = int(self._rng.integers(g * g - 1))
        agent_flat = int(self.agent_pos[0] * g + self.agent_pos[1])
        if k >= agent_flat:
            k += 1
        self.goal_pos[:] = (k // g, k % g)

    def render(self) -> np.ndarray:
        """The current frame, uint8 (64, 64, 3)."""
        frame = _BACKGROUND_FRAMES[self.grid].copy()
        cell = self.cell
        for pos, colour in ((self.goal_pos, GOAL_COLOUR), (self.agent_pos, AGENT_COLOUR)):
            r0, c0 = int(pos[0]) * cell + MARGIN, int(pos[1]) * cell + MARGIN
            frame[r0 : r0 + cell - 2 * MARGIN + 1, c0 : c0 + cell - 2 * MARGIN + 1] = colour
        return frame

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agent_pos[:] = self._rng.integers(self.grid, size=2)
        self._place_goal()
        self._t = 0
        self._goals = 0
        self._started = True
        return self.render()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("step() called before reset()")
        if not 0 <= int(action) < len(ACTION_NAMES):
            raise ValueError(f"action must lie in [0, {len(ACTION_NAMES)}), got {action}")
        self.agent_pos[:] = np.clip(self.agent_pos + _MOVES[int(action)], 0, self.grid - 1)
        self._t += 1
        reward = 0.0
        terminated = False
        if np.array_equal(self.agent_pos, self.goal_pos):
            reward = 1.0
            self._goals += 1
            if self.respawn:
                self._place_goal()
            else:
                terminated = True
        truncated = not terminated and self._t >= self.max_steps
        done = terminated or truncated
        if done:
            self._started = False
        info = {
            "agent_pos": self.agent_pos.copy(),
            "goal_pos": self.goal_pos.copy(),
            "goals_reached": self._goals,
            "truncated": truncated,
        }
        return self.render(), reward, done, info

    def oracle_action(self) -> int:
        """A shortest-path action towards the goal (vertical moves first)."""
        d_row, d_col = (self.goal_pos - self.agent_pos).tolist()
        if d_row < 0:
            return 1
        if d_row > 0:
            return 2
        if d_col < 0:
            return 3
        if d_col > 0:
            return 4
        return 0

    def close(self) -> None:
        self._started = False

    def env_state(self) -> dict[str, Any]:
        """The exact state as plain data (settings, generator, positions, counters)."""
        return {
            "grid": self.grid,
            "max_steps": self.max_steps,
            "respawn": self.respawn,
            "rng": self._rng.bit_generator.state,
            "agent_pos": self.agent_pos.copy(),
            "goal_pos": self.goal_pos.copy(),
            "t": self._t,
            "goals": self._goals,
            "started": self._started,
        }

    def load_env_state(self, state: dict[str, Any]) -> None:
        """Take what :meth:`env_state` returned; this env then continues exactly as the saved one."""
        grid = int(state["grid"])
        if grid not in GRID_SIZES:
            raise ValueError(f"grid must be in [2, 8], got {grid}")
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        self.grid, self.cell = grid, OBS_SHAPE[0] // grid
        self.max_steps, self.respawn = int(state["max_steps"]), bool(state["respawn"])
        self._rng = rng
        self.agent_pos[:] = np.asarray(state["agent_pos"], dtype=np.int64)
        self.goal_pos[:] = np.asarray(state["goal_pos"], dtype=np.int64)
        self._t, self._goals, self._started = int(state["t"]), int(state["goals"]), bool(state["started"])


class ToyVectorEnv(SyncVectorEnv):
    """``num_envs`` :class:`GridGoalEnv` behind the :class:`~deltairis.envs.vector.VectorEnv` interface.

    Its exact state is saved as plain data (``env_state`` / ``load_env_state``, see
    :mod:`deltairis.envs.state_blob`)."""

    state_kind = "toy"

    def __init__(
        self, num_envs: int, seed: int | None = 0, max_steps: int = 30, respawn: bool = True, grid: int = GRID
    ) -> None:
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        GridGoalEnv(max_steps=max_steps, respawn=respawn, grid=grid)  # validates the options once, clearly
        super().__init__(
            [lambda: GridGoalEnv(max_steps=max_steps, respawn=respawn, grid=grid) for _ in range(int(num_envs))],
            seed=seed,
        )

    def oracle_actions(self) -> np.ndarray:
        """Greedy shortest-path actions for the current state of every env, int64 (N,)."""
        return np.array([env.oracle_action() for env in self.envs], dtype=np.int64)  # type: ignore[attr-defined]


def evaluate_policy(
    policy: Callable[[ToyVectorEnv, np.ndarray, np.random.Generator], np.ndarray],
    num_episodes: int = 64,
    seed: int = 0,
    num_envs: int = 8,
    **env_kwargs: Any,
) -> float:
    """Mean undiscounted return of ``policy(env, obs, rng) -> actions`` over ``num_episodes`` episodes.

    The first ``num_episodes`` episodes to finish are counted (in step order, env index breaking ties),
    so the figure is deterministic given the seed.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    rng = np.random.default_rng(seed)
    env = ToyVectorEnv(num_envs, seed=seed, **env_kwargs)
    returns: list[float] = []
    try:
        obs = env.reset(seed)
        while len(returns) < num_episodes:
            obs, _, term, trunc, info = env.step(policy(env, obs, rng))
            returns.extend(float(x) for x in info["episode_return"][term | trunc])
    finally:
        env.close()
    return float(np.mean(returns[:num_episodes]))


def random_policy_return(num_episodes: int = 64, seed: int = 0, **env_kwargs: Any) -> float:
    """Mean return of the uniformly random policy on the toy env."""
    return evaluate_policy(
        lambda env, obs, rng: rng.integers(env.num_actions, size=env.num_envs),
        num_episodes,
        seed,
        **env_kwargs,
    )


def oracle_policy_return(num_episodes: int = 64, seed: int = 0, **env_kwargs: Any) -> float:
    """Mean return of the greedy shortest-path policy on the toy env (an upper reference)."""
    return evaluate_policy(lambda env, obs, rng: env.oracle_actions(), num_episodes, seed, **env_kwargs)
