"""Crafter's gymnasium APIs on the native engine of :mod:`deltairis.envs.crafter_native`.

* :class:`CrafterGymEnv`: gymnasium's ``Env`` over :class:`~deltairis.envs.crafter_native.CrafterNative`
  (``terminated`` = death, ``truncated`` = length).
* :class:`CrafterGymVectorEnv`: gymnasium's ``VectorEnv`` over the C++ stepper
  (:class:`~deltairis.envs.crafter_native.NativeCrafterVectorEnv`, ``AutoresetMode.SAME_STEP``).
* :func:`register_gymnasium`: registers ``deltairis/Crafter-v1`` for ``gymnasium.make`` and
  ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``; importing :mod:`deltairis.envs`
  calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np

from deltairis.envs.crafter_native import CrafterNative, NativeCrafterVectorEnv, _check_length, _pair
from deltairis.envs.vector import check_positive_int

GYM_ID = "deltairis/Crafter-v1"
RENDER_FPS = 5  # crafter's own viewer (crafter/run_gui.py --fps) default


class CrafterGymEnv(gymnasium.Env):
    """Gymnasium wrapper of :class:`CrafterNative` (``terminated`` = death, ``truncated`` = length).

    ``reset(seed=s)`` starts a fresh ``CrafterNative(seed=s)`` (its first episode); ``reset()`` without a
    seed starts the current env's next episode, like ``crafter.Env.reset``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self.render_mode = render_mode
        self._env = CrafterNative(**kwargs)
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self._last_obs: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        del options
        super().reset(seed=seed)
        if seed is not None:
            self._env = CrafterNative(**{**self._kwargs, "seed": int(seed)})
        self._last_obs = self._env.reset()
        return self._last_obs, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, done, info = self._env.step(int(action))
        self._last_obs = obs
        terminated = bool(info["discount"] == 0.0)
        truncated = bool(done) and not terminated
        return obs, float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self._last_obs

    def close(self) -> None:
        pass


def _exact_rewards(reward: np.ndarray) -> np.ndarray:
    """The float64 rewards of the engine, recovered from the stepper's float32 copies.

    The engine computes ``(health - last_health) / 10`` (+ ``1.0`` when an achievement was unlocked) in
    double precision; health moves by at most +1 per step, so ``k = round(10 * reward)`` tells the terms
    apart (``k <= 1``: no unlock; ``k >= 2``: unlock, health change ``k - 10``) and the double is rebuilt
    with the engine's own operations. The one ambiguous value, ``k == 1`` (+1 health, or dying from 9
    health while unlocking), is read as +1 health. Anything else keeps the float32 value.
    """
    r32 = np.asarray(reward, dtype=np.float32)
    k = np.rint(r32.astype(np.float64) * 10.0)
    exact = np.where(k <= 1, k / 10.0, (k - 10.0) / 10.0 + 1.0)
    ok = (np.abs(k) <= 11) & (exact.astype(np.float32) == r32)
    return np.where(ok, exact, r32.astype(np.float64))


class CrafterGymVectorEnv(gymnasium.vector.VectorEnv):
    """``deltairis/Crafter-v1`` as a :class:`gymnasium.vector.VectorEnv` on the native C++ stepper.

    ``gymnasium.make_vec("deltairis/Crafter-v1", num_envs=N, vectorization_mode="vector_entry_point",
    **kwargs)`` builds it. It steps exactly like ``gymnasium.vector.SyncVectorEnv`` over N
    ``gymnasium.make("deltairis/Crafter-v1", **kwargs)`` envs with ``autoreset_mode=SAME_STEP``
    (``tests/envs/test_gym_vector.py``):

    * an env whose episode ends is reset inside the same step: ``obs[i]`` is the next episode's first
      frame, ``info["final_obs"][i]`` (object array, ``None`` elsewhere, mask ``info["_final_obs"]``) the
      last frame and ``info["final_info"]`` the finished episode's crafter info, batched by gymnasium's
      ``_add_info`` (``final_info["inventory"]["wood"]`` (N,) with masks ``_inventory``, ``_wood``, ...,
      outer mask ``info["_final_info"]``);
    * ``reward`` float64 (N,), ``terminated`` = the player died, ``truncated`` = ``length`` was reached alive;
    * seeding: ``reset(seed=s)`` makes env ``i`` a fresh engine seeded ``s + i`` (a list gives one seed per
      env), as the single env's ``reset(seed=)`` does; ``reset()`` without a seed starts every env's next
      episode; the very first unseeded ``reset()`` uses the constructor's ``seed`` for every env, or, when
      it is ``None``, one seed per env drawn from numpy's global generator in env order (what N single
      envs constructed one after the other draw);
    * the infos are SyncVectorEnv's, key for key, dtype for dtype, mask for mask: each running env's
      crafter step info (``inventory``, ``achievements``, ``discount``, ``semantic``, ``player_pos``,
      ``reward``, batched with masks ``_inventory``, ...), while an env that auto-reset in the step has
      its step info only in ``final_info`` (its reset info, ``{}``, replaces it; its rows of the top-level
      keys are masked off).

    Difference from the SyncVectorEnv: ``reset(options={"reset_mask": ...})`` (partial resets) is not
    supported.

    Picklable: the pickle holds the native stepper's exact state (see :class:`NativeCrafterVectorEnv`)
    and the gymnasium fields, so a restored env continues byte for byte, infos included.

    Args:
        num_envs: number of envs.
        render_mode: ``None`` or ``"rgb_array"``; ``render()`` returns each env's current frame either way
            (like the single env).
        num_threads: C++ worker threads (``None``: the default of ``deltairis._core``).
        seed, area, view, size, reward, length: the single env's constructor arguments.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": RENDER_FPS,
        "autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        render_mode: str | None = None,
        num_threads: int | None = None,
        seed: int | None = None,
        area: int | Sequence[int] = (64, 64),
        view: int | Sequence[int] = (9, 9),
        size: int | Sequence[int] = (64, 64),
        reward: bool = True,
        length: int | None = 10000,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        check_positive_int(num_envs, "num_envs")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ValueError(f"seed must be an int or None, got {seed!r}")
            if not -(2**63) <= int(seed) < 2**63:
                raise ValueError(f"seed must fit in int64, got {seed}")
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self._native = NativeCrafterVectorEnv(
            self.num_envs,
            num_threads=num_threads,
            length=_check_length(length),
            reward=reward,
            area=_pair(area, "area"),
            view=_pair(view, "view"),
            size=_pair(size, "size"),
        )
        self.action_names = list(self._native.action_names)
        self.num_threads = self._native.num_threads
        w, h = _pair(size, "size")
        self.single_observation_space = gymnasium.spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.single_action_space = gymnasium.spaces.Discrete(self._native.num_actions)
        self.observation_space = gymnasium.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, self.num_envs)
        # What N single envs draw one after the other at construction (CrafterNative(seed=None)).
        if seed is None:
            self._initial_seeds = np.array(
                [np.random.randint(0, 2**31 - 1) for _ in range(self.num_envs)], dtype=np.int64
            )
        else:
            self._initial_seeds = np.full(self.num_envs, int(seed), dtype=np.int64)
        self._started = False
        self._frames: np.ndarray | None = None

    def _seeds(self, seed: Any) -> np.ndarray | None:
        if seed is None:
            return None
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            if int(seed) < 0:
                raise ValueError(f"seed must be a non-negative int, got {seed}")
            if int(seed) + self.num_envs - 1 >= 2**63:
                raise ValueError(f"seed + i must fit in int64, got seed {seed}")
            return np.arange(self.num_envs, dtype=np.int64) + np.int64(seed)
        if isinstance(seed, (list, tuple, np.ndarray)):
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(
                    f"a list of seeds must have one seed per env ({self.num_envs}), got length {len(seeds)}"
                )
            if all(s is None for s in seeds):
                return None
            for s in seeds:
                if s is None:
                    raise ValueError(
                        "seeds mixing None and ints are not supported: the native stepper resets every env "
                        "with a seed or every env without one"
                    )
                if (
                    isinstance(s, (bool, np.bool_))
                    or not isinstance(s, (int, np.integer))
                    or not 0 <= s < 2**63
                ):
                    raise ValueError(f"every seed must be a non-negative int (int64), got {s!r}")
            return np.array([int(s) for s in seeds], dtype=np.int64)
        raise ValueError(f"seed must be None, an int or a list of {self.num_envs} ints, got {seed!r}")

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env (see the class docstring for seeding). Returns obs uint8 (N, H, W, 3) and ``{}``."""
        if self.closed:
            raise RuntimeError("reset() called on a closed env")
        if options is not None:
            if not isinstance(options, dict):
                raise ValueError(f"options must be a dict or None, got {options!r}")
            if "reset_mask" in options:
                raise ValueError(
                    "options['reset_mask'] (partial reset) is not supported by the native Crafter stepper; "
                    "reset all envs or rely on the auto-reset"
                )
        seeds = self._seeds(seed)
        if isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))  # the vector env's own np_random, like gymnasium's envs
        if seeds is None and not self._started:
            seeds = self._initial_seeds
        obs = self._native.reset_seeds(seeds)
        self._started = True
        self._frames = obs
        return obs.copy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env (actions: integers (N,) in ``[0, 17)``); SAME_STEP auto-reset.

        Raises:
            ValueError: actions of a wrong dtype (floats, bools), shape or out of range.
            RuntimeError: before ``reset()`` or after ``close()``.
        """
        if self.closed:
            raise RuntimeError("step() called on a closed env")
        obs, reward32, terminated, truncated, final_obs, _, _ = self._native._step(actions, all_infos=True)
        # Batched as SyncVectorEnv (SAME_STEP) does, env by env: an env whose episode ended puts its last
        # frame and step info under final_obs/final_info, then the info of its reset (the single env's
        # reset info is {}: nothing) takes the step info's place; a running env adds its step info.
        done = terminated | truncated
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            step_info = self._native._row_info(i)
            if done[i]:
                infos = self._add_info(infos, {"final_obs": final_obs[i].copy(), "final_info": step_info}, i)
                step_info = {}  # the reset info
            infos = self._add_info(infos, step_info, i)
        self._frames = obs
        return obs.copy(), _exact_rewards(reward32), terminated, truncated, infos

    def render(self) -> tuple[np.ndarray | None, ...]:
        """Each env's current frame (uint8 (H, W, 3)), like the single env's ``render()``; ``None``s
        before the first ``reset()``."""
        if self._frames is None:
            return tuple(None for _ in range(self.num_envs))
        return tuple(frame.copy() for frame in self._frames)

    def close_extras(self, **kwargs: Any) -> None:
        self._native.close()


def register_gymnasium() -> None:
    """Register ``deltairis/Crafter-v1`` with gymnasium (idempotent), single and vector entry points."""
    if GYM_ID in gymnasium.envs.registry:
        return
    gymnasium.register(
        id=GYM_ID,
        entry_point="deltairis.envs.crafter_gym:CrafterGymEnv",
        vector_entry_point="deltairis.envs.crafter_gym:CrafterGymVectorEnv",
    )
