"""The ``VectorEnv`` interface shared by every environment backend, and a generic synchronous stepper.

Every backend (native Crafter, Python Crafter, ALE's C++ vector env, gymnasium + ale-py, the built-in
toy env) is exposed as a :class:`VectorEnv`. Observations are always ``uint8`` arrays of shape
``(N, 64, 64, 3)`` (height, width, RGB).

Auto-reset rule (per env, immediately)
--------------------------------------
When env ``i``'s episode ends at a step (``terminated[i] | truncated[i]``), that same step returns

* ``obs[i]``: the FIRST observation of env ``i``'s next episode (the env is already reset);
* ``info["final_obs"][i]``: the last observation of the episode that just finished;
* ``info["episode_return"][i]`` / ``info["episode_length"][i]``: the undiscounted return and the number
  of agent steps of that finished episode;
* ``info["final_info"][i]``: the env's own last info dict for that episode (``None`` where no episode
  finished).

Rows where no episode finished hold zeros in ``final_obs``, ``episode_return`` and ``episode_length``.
``terminated`` means the MDP reached a terminal state (death, game over, life loss in Atari training);
``truncated`` means a time limit cut the episode while it could have continued.

Seeding: ``reset(seed)`` makes env ``i`` behave like a fresh single env seeded with ``seed + i``; later
episodes of that env (auto-resets) continue that env's own random stream, so a whole run is determined
by the seed passed to the first ``reset``. The first ``reset()`` without a seed uses the seed given
when the env was made (``make_vector_env(..., seed=...)``); a later ``reset(None)`` starts a new
episode in every env without reseeding.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

OBS_SHAPE: tuple[int, int, int] = (64, 64, 3)

StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


class VectorEnv(abc.ABC):
    """A batch of ``num_envs`` environments stepped together (see the module docstring for the rules).

    Attributes:
        num_envs: number of environments N.
        num_actions: size of the discrete action space; valid actions are ``0 .. num_actions - 1``.
        action_names: one name per action.
    """

    num_envs: int
    num_actions: int
    action_names: list[str]
    #: the kind of exact state this env saves (``env_state`` / ``load_env_state``, see
    #: :mod:`deltairis.envs.state_blob`); None: it cannot be checkpointed exactly
    state_kind: str | None = None

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode in every env; env ``i`` is seeded with ``seed + i``.

        Returns:
            obs: uint8 (N, 64, 64, 3), the first observation of each env.
        """

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> StepResult:
        """Advance every env by one agent step, auto-resetting envs whose episode ended.

        Args:
            actions: integer array (N,) with values in ``[0, num_actions)``.

        Returns:
            obs uint8 (N, 64, 64, 3), reward float32 (N,), terminated bool (N,), truncated bool (N,), info
            with ``final_obs``, ``episode_return``, ``episode_length`` and ``final_info``.

        Raises:
            ValueError: when ``actions`` has a wrong dtype, shape or an out-of-range value.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the environments' resources. Safe to call twice."""

    def _check_step(self, actions: Any) -> np.ndarray:
        """The checks opening ``step()`` of an env that keeps ``_closed`` and ``_needs_reset``: raises
        RuntimeError after ``close()`` or before the first ``reset()``; returns the validated actions."""
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("step() called on a closed env")
        if self._needs_reset:  # type: ignore[attr-defined]
            raise RuntimeError("step() called before reset()")
        return validate_actions(actions, self.num_envs, self.num_actions)

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_seed(seed: Any) -> int | None:
    """Return ``seed`` as an int (or None).

    Raises:
        ValueError: when ``seed`` is not None, not an integer, or negative.
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> None:
    """Check a count argument (``num_envs``, ``num_threads``, ...).

    Raises:
        ValueError: when ``value`` is not a positive int (bools refused), or None without ``allow_none``.
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def validate_actions(actions: Any, num_envs: int, num_actions: int) -> np.ndarray:
    """Check a batch of discrete actions and return it as a contiguous int64 array.

    Raises:
        ValueError: naming the problem: not an integer dtype (floats and bools are refused), wrong shape,
            or a value outside ``[0, num_actions)``.
    """
    arr = np.asarray(actions)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"actions must have an integer dtype, got dtype {arr.dtype}")
    if arr.shape != (num_envs,):
        raise ValueError(f"actions must have shape ({num_envs},) (one per env), got shape {arr.shape}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_actions:
            bad = int(arr[(arr < 0) | (arr >= num_actions)][0])
            raise ValueError(f"actions must lie in [0, {num_actions}), got action {bad}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def empty_step_info(num_envs: int) -> dict[str, Any]:
    """The ``info`` dict of a step in which no episode finished (zero rows, ``final_info`` all None)."""
    return {
        "final_obs": np.zeros((num_envs, *OBS_SHAPE), dtype=np.uint8),
        "episode_return": np.zeros(num_envs, dtype=np.float64),
        "episode_length": np.zeros(num_envs, dtype=np.int64),
        "final_info": [None] * num_envs,
    }


class SingleEnv(Protocol):
    """A single environment as :class:`SyncVectorEnv` drives it (crafter-style ``step``)."""

    action_names: list[str]

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; reseed first when ``seed`` is given. Returns obs uint8 (64, 64, 3)."""
        ...

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """Returns ``(obs, reward, done, info)``."""
        ...

    def close(self) -> None: ...


def _default_truncated(done: bool, info: dict[str, Any]) -> bool:
    return bool(info.get("truncated", False))


class SyncVectorEnv(VectorEnv):
    """Steps a list of single envs one after the other in the calling thread (the Python backends).

    Args:
        env_fns: one constructor per env; each returns a :class:`SingleEnv`.
        is_truncated: ``(done, info) -> bool`` telling, for a finished episode, whether a time limit cut
            it (``truncated``) rather than a terminal state (``terminated``). The default reads
            ``info["truncated"]``.
        seed: the seed used by the first ``reset()`` when it is called without one.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], SingleEnv]],
        is_truncated: Callable[[bool, dict[str, Any]], bool] = _default_truncated,
        seed: int | None = 0,
    ) -> None:
        if len(env_fns) < 1:
            raise ValueError(f"num_envs must be >= 1, got {len(env_fns)}")
        self.envs: list[SingleEnv] = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self.action_names = list(self.envs[0].action_names)
        self.num_actions = len(self.action_names)
        self._is_truncated = is_truncated
        self._default_seed = seed
        self._ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self._obs = np.zeros((self.num_envs, *OBS_SHAPE), dtype=np.uint8)
        self._needs_reset = True
        self._closed = False

    def reset(self, seed: int | None = None) -> np.ndarray:
        if self._closed:
            raise RuntimeError("reset() called on a closed env")
        seed = check_seed(seed)
        if seed is None and self._needs_reset and self._default_seed is not None:
            seed = self._default_seed  # the first reset follows the seed given at construction
        for i, env in enumerate(self.envs):
            self._obs[i] = env.reset(None if seed is None else seed + i)
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._needs_reset = False
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        acts = self._check_step(actions)
        n = self.num_envs
        rew = np.zeros(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        trunc = np.zeros(n, dtype=bool)
        info = empty_step_info(n)
        for i, env in enumerate(self.envs):
            obs, r, done, env_info = env.step(int(acts[i]))
            rew[i] = r
            self._ep_return[i] += float(np.float32(r))
            self._ep_length[i] += 1
            if done:
                trunc[i] = self._is_truncated(bool(done), env_info)
                term[i] = not trunc[i]
                info["final_obs"][i] = obs
                info["episode_return"][i] = self._ep_return[i]
                info["episode_length"][i] = self._ep_length[i]
                info["final_info"][i] = env_info
                self._ep_return[i] = 0.0
                self._ep_length[i] = 0
                obs = env.reset(None)
            self._obs[i] = obs
        return self._obs.copy(), rew, term, trunc, info

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self.envs:
            close = getattr(env, "close", None)
            if close is not None:
                close()

    # Exact state (checkpoints, see deltairis.envs.state_blob): plain data only. Subclasses name their
    # ``state_kind``; every single env implements ``env_state()`` / ``load_env_state(state)``.
    def env_state(self) -> dict[str, Any]:
        """The exact state of this vector env and of each of its envs, as plain data."""
        singles = []
        for env in self.envs:
            get = getattr(env, "env_state", None)
            if get is None:
                raise NotImplementedError(f"{type(env).__name__} cannot save its exact state")
            singles.append(get())
        return {
            "num_envs": self.num_envs,
            "default_seed": self._default_seed,
            "needs_reset": self._needs_reset,
            "ep_return": self._ep_return.copy(),
            "ep_length": self._ep_length.copy(),
            "obs": self._obs.copy(),
            "envs": singles,
        }

    def load_env_state(self, state: dict[str, Any]) -> None:
        """Take what :meth:`env_state` returned (of a vector env with the same number of envs)."""
        if int(state["num_envs"]) != self.num_envs or len(state["envs"]) != self.num_envs:
            raise ValueError(f"the state is of {state['num_envs']} envs, this vector env has {self.num_envs}")
        for env, single in zip(self.envs, state["envs"]):
            env.load_env_state(single)  # type: ignore[attr-defined]
        seed = state["default_seed"]
        self._default_seed = None if seed is None else int(seed)
        self._needs_reset = bool(state["needs_reset"])
        self._ep_return[:] = np.asarray(state["ep_return"], dtype=np.float64)
        self._ep_length[:] = np.asarray(state["ep_length"], dtype=np.int64)
        self._obs[:] = np.asarray(state["obs"], dtype=np.uint8)
