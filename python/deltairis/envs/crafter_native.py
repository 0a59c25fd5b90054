"""Crafter on the native C++ engine (``deltairis._core``): a drop-in ``crafter.Env`` and a vector env.

The engine reproduces ``crafter`` 1.8.3 byte for byte (see ``docs/crafter_native.md``): world
generation, objects, chunk balancing, daylight, rendering, rewards and infos. The rules table
(``data.yaml``) and the textures are read at run time from the installed ``crafter`` package and handed to
the engine; nothing of crafter is copied into this repository.

One documented difference: Python crafter despawns ``creatures[randint(0, n)]`` from a ``set`` ordered
by memory addresses, so the package is not reproducible even against itself. The native engine uses
creation order there (the same law, a fixed seed-to-trajectory map); the equivalence tests compare it with
crafter patched the same way.

* :class:`CrafterNative`: ``crafter.Env``'s constructor, ``reset() -> obs`` and
  ``step(action) -> (obs, reward, done, info)`` with the same info keys.
* :class:`NativeCrafterVectorEnv`: N engines stepped by C++ threads with the GIL released, behind the
  :class:`~deltairis.envs.vector.VectorEnv` interface.
* :class:`CrafterGymEnv` / :class:`CrafterGymVectorEnv`: gymnasium's ``Env`` and ``VectorEnv`` APIs
  (the vector one on the C++ stepper, ``AutoresetMode.SAME_STEP``).
* :func:`register_gymnasium`: registers ``deltairis/Crafter-v1`` (terminated/truncated split) for
  ``gymnasium.make`` and ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np

from deltairis import _native
from deltairis.envs.vector import VectorEnv, check_positive_int

logger = logging.getLogger(__name__)

GYM_ID = "deltairis/Crafter-v1"
RENDER_FPS = 5  # crafter's own viewer (crafter/run_gui.py --fps) default


def native_available() -> bool:
    """Whether the compiled extension contains the native Crafter engine."""
    return _native.core is not None and hasattr(_native.core, "CrafterVectorEnv")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from exc
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a pair of positive ints, got {value!r}")
    return pair[0], pair[1]


@functools.lru_cache(maxsize=1)
def crafter_data() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The rules table and the decoded textures of the installed ``crafter`` package.

    Textures are decoded exactly as ``crafter.engine.Textures`` does (``imageio.v3.imread``), as
    (height, width, 3|4) uint8 arrays keyed by file stem.
    """
    import crafter
    import imageio.v3 as imageio

    root = pathlib.Path(crafter.__file__).parent
    constants = crafter.constants
    rules = {
        key: getattr(constants, key)
        for key in ("actions", "materials", "walkable", "items", "collect", "place", "make", "achievements")
    }
    textures: dict[str, np.ndarray] = {}
    for path in sorted((root / "assets").glob("*.png")):
        image = np.asarray(imageio.imread(path.read_bytes()), dtype=np.uint8)
        if image.ndim == 2:  # grey PNGs (none ship with crafter 1.8.3)
            image = np.repeat(image[..., None], 3, axis=2)
        textures[path.stem] = np.ascontiguousarray(image)
    return rules, textures


@functools.lru_cache(maxsize=16)
def _assets(
    area: tuple[int, int], view: tuple[int, int], size: tuple[int, int], reward: bool, length: int
) -> Any:
    core = _native.require_core()
    if not hasattr(core, "CrafterAssets"):
        raise RuntimeError("deltairis._core was built without the native Crafter engine")
    rules, textures = crafter_data()
    return core.CrafterAssets(rules, textures, list(area), list(view), list(size), bool(reward), int(length))


def _check_length(length: int | None) -> int:
    if length is None:
        return 0
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be a non-negative int or None, got {length!r}")
    return int(length)


class CrafterNative:
    """``crafter.Env`` on the native engine: same constructor, ``reset``, ``step``, infos and action names.

    Args:
        area: world size in tiles.
        view: view size in tiles (the local view loses the inventory bar's rows).
        size: observation size in pixels (width, height), obs shape ``(size[1], size[0], 3)``.
        reward: when False ``step`` returns reward 0 (``info["reward"]`` keeps the real one).
        length: episode length limit in steps (``None``/0: none).
        seed: the env seed; episode ``k`` uses world seed ``hash((seed, k)) % (2**31 - 1)`` like crafter.
            ``None`` draws one from numpy's global generator, as crafter does.
    """

    def __init__(
        self,
        area: int | Sequence[int] = (64, 64),
        view: int | Sequence[int] = (9, 9),
        size: int | Sequence[int] = (64, 64),
        reward: bool = True,
        length: int | None = 10000,
        seed: int | None = None,
    ) -> None:
        self._area = _pair(area, "area")
        self._view = _pair(view, "view")
        self._size = _pair(size, "size")
        self._reward = bool(reward)
        self._length = _check_length(length)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")  # noqa: TRY004 (project rule: bad input -> ValueError)
        if not -(2**63) <= int(seed) < 2**63:
            raise ValueError(f"seed must fit in int64, got {seed}")
        self._seed = int(seed)
        try:
            self._assets = _assets(self._area, self._view, self._size, self._reward, self._length)
        except ValueError as exc:
            raise ValueError(f"invalid Crafter configuration: {exc}") from exc
        self._env = _native.require_core().CrafterEnv(self._assets, self._seed)
        self._items = list(self._assets.item_names)
        self._achievements = list(self._assets.achievement_names)
        self._started = False

    @property
    def observation_space(self) -> Any:
        return gymnasium.spaces.Box(0, 255, (self._size[1], self._size[0], 3), np.uint8)

    @property
    def action_space(self) -> Any:
        return gymnasium.spaces.Discrete(self._assets.num_actions)

    @property
    def action_names(self) -> list[str]:
        return list(self._assets.action_names)

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def episode(self) -> int:
        """Number of episodes started so far (crafter's ``_episode``)."""
        return int(self._env.episode)

    @property
    def daylight(self) -> float:
        return float(self._env.daylight)

    def reset(self) -> np.ndarray:
        """Start the next episode. Returns obs uint8 (H, W, 3)."""
        self._started = True
        return self._env.reset()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """Advance one step. Returns ``(obs, reward, done, info)`` like ``crafter.Env.step``."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise ValueError(f"action must be an int, got {action!r}")  # noqa: TRY004 (project rule: bad input -> ValueError)
        obs, reward, done, _dead, _over, info_reward = self._env.step(int(action))
        return obs, reward, done, self.info(info_reward)

    def info(self, reward: float) -> dict[str, Any]:
        """The info dict of the current state (crafter's keys and value types)."""
        env = self._env
        dead = env.inventory[self._items.index("health")] <= 0
        return {
            "inventory": dict(zip(self._items, env.inventory)),
            "achievements": dict(zip(self._achievements, env.achievements)),
            "discount": 1 - float(dead),
            "semantic": env.semantic(),
            "player_pos": np.array(env.player_pos, dtype=np.int64),
            "reward": reward,
        }

    # Test hooks: the world state after a reset or step.
    def material_map(self) -> np.ndarray:
        """Material ids (area_x, area_y) with crafter's numbering (0 = none, then data.yaml's order)."""
        return self._env.material_map()

    def objects(self) -> list[dict[str, Any]]:
        """Live objects in creation order: kind, pos, health, facing, cooldown, grown."""
        return self._env.objects()

    def render(self, size: Any = None) -> np.ndarray:
        """Draw the current frame like ``crafter.Env.render``: uint8 (H, W, 3).

        As in crafter, rendering at night draws noise from the world's random generator, so calling it
        changes the rest of the episode. Only the configured ``size`` is supported.
        """
        if size is not None and _pair(size, "size") != self._size:
            raise ValueError(f"size must be None or the configured size {self._size}, got {size!r}")
        if not self._started:
            raise RuntimeError("call reset() before render()")
        return self._env.render()

    def close(self) -> None:
        pass

    # Pickling (checkpoints): the engine's exact state (Env::save_state, versioned bytes) with the
    # wrapper's fields; a restored env continues byte for byte as this one would.
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_assets", "_env")}
        state["_engine_state"] = self._env.save_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        blob = state.pop("_engine_state")
        self.__dict__.update(state)
        self._assets = _assets(self._area, self._view, self._size, self._reward, self._length)
        self._env = _native.require_core().CrafterEnv(self._assets, self._seed)
        self._env.load_state(blob)


class NativeCrafterVectorEnv(VectorEnv):
    """N native Crafter envs stepped by C++ threads (the GIL released), with auto-reset.

    Env ``i`` behaves like ``CrafterNative(seed=seed + i, length=length)``; ``terminated`` = the player
    died, ``truncated`` = ``length`` was reached alive. Results are identical for any ``num_threads``.

    With two or more threads the next episode of every env is generated ahead of time by idle pool
    workers (world generation costs as much as ~70 steps), so an auto-reset inside :meth:`step` is
    usually a swap and a copy instead of a stall of the whole batch; ``reset_counts`` tells how the
    episode starts were served. With one thread resets run inline.

    Picklable (checkpoints): the pickle holds every engine's exact state, the running episode returns
    and lengths and the wrapper's fields; the restored env (same ``num_threads`` argument, any thread
    count gives the same results) continues byte for byte, infos, auto-resets and final observations
    included. The next episodes built ahead are not pickled: they are a function of the saved state and
    are rebuilt after loading.

    Args:
        num_envs: number of envs.
        seed: seed of env 0 for the first ``reset()`` without a seed.
        num_threads: C++ worker threads (``None``: ``deltairis._core.default_num_threads()``).
        length: episode length limit in steps.
        reward: crafter's ``reward`` flag.
        area, view, size: crafter's world, view and image sizes.
    """

    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        num_threads: int | None = None,
        length: int = 10000,
        reward: bool = True,
        area: Sequence[int] = (64, 64),
        view: Sequence[int] = (9, 9),
        size: Sequence[int] = (64, 64),
    ) -> None:
        check_positive_int(num_envs, "num_envs")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")  # noqa: TRY004 (project rule: bad input -> ValueError)
        check_positive_int(num_threads, "num_threads", allow_none=True)
        core = _native.require_core()
        self._config = (
            _pair(area, "area"),
            _pair(view, "view"),
            _pair(size, "size"),
            bool(reward),
            _check_length(length),
        )
        self._num_threads_arg = num_threads
        self._assets = _assets(*self._config)
        self.num_envs = int(num_envs)
        self.action_names = list(self._assets.action_names)
        self.num_actions = len(self.action_names)
        self._items = list(self._assets.item_names)
        self._achievements = list(self._assets.achievement_names)
        self._vec = core.CrafterVectorEnv(
            self._assets, self.num_envs, 0 if num_threads is None else num_threads
        )
        self.num_threads = int(self._vec.num_threads)
        self.background_resets = bool(self._vec.background_resets)
        self._default_seed = int(seed)
        self._needs_reset = True
        self._closed = False
        n = self.num_envs
        obs_shape = tuple(self._assets.obs_shape)
        self._obs = np.zeros((n, *obs_shape), np.uint8)
        area_xy = _pair(area, "area")
        self._buffers = {  # per-episode-end scratch, reused (step returns fresh arrays for the rest)
            "final_inventory": np.zeros((n, len(self._items)), np.int32),
            "final_achievements": np.zeros((n, len(self._achievements)), np.int32),
            "final_semantic": np.zeros((n, *area_xy), np.uint8),
            "final_player_pos": np.zeros((n, 2), np.int64),
            "final_discount": np.zeros(n, np.float64),
            "final_reward": np.zeros(n, np.float64),
        }

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode everywhere; env ``i`` gets a fresh engine seeded ``seed + i``."""
        if self._closed:
            raise RuntimeError("reset() called on a closed env")
        if seed is None and self._needs_reset:
            seed = self._default_seed
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ValueError(f"seed must be an int or None, got {seed!r}")
            seeds = np.arange(self.num_envs, dtype=np.int64) + np.int64(seed)  # (N,)
            return self.reset_seeds(seeds)
        return self.reset_seeds(None)

    def reset_seeds(self, seeds: np.ndarray | None) -> np.ndarray:
        """Start a new episode everywhere: env ``i`` gets a fresh engine seeded ``seeds[i]`` (int64 (N,)),
        or, with ``None``, the next episode of its current engine (the first ``reset`` needs seeds)."""
        if self._closed:
            raise RuntimeError("reset() called on a closed env")
        if seeds is None and self._needs_reset:
            raise RuntimeError("the first reset needs seeds")
        if seeds is not None:
            seeds = np.asarray(seeds)
            if seeds.shape != (self.num_envs,) or not np.issubdtype(seeds.dtype, np.integer):
                raise ValueError(f"seeds must be an integer array of shape ({self.num_envs},), got {seeds!r}")
            self._vec.reset(np.ascontiguousarray(seeds, dtype=np.int64), self._obs)
        else:
            self._vec.reset(None, self._obs)
        self._needs_reset = False
        return self._obs.copy()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, truncated, final_obs, episode_return, episode_length = self._step(actions)
        done = terminated | truncated  # (N,)
        final_info: list[dict[str, Any] | None] = [None] * self.num_envs
        for i in np.flatnonzero(done):
            final_info[i] = self._row_info(int(i))
        info = {
            "final_obs": final_obs,  # zeros in rows where no episode finished
            "episode_return": episode_return,
            "episode_length": episode_length,
            "final_info": final_info,
        }
        return obs, reward, terminated, truncated, info

    def _step(self, actions: np.ndarray, all_infos: bool = False) -> tuple[np.ndarray, ...]:
        """One engine step: obs, reward, terminated, truncated, final_obs, episode_return, episode_length.

        The crafter info of row ``i`` is then :meth:`_row_info` ``(i)``: where an episode ended, its last
        state; with ``all_infos`` also, in every other row, the running env's state after this step
        (without it those rows of the scratch are stale).
        """
        acts = self._check_step(actions)
        b = self._buffers
        # The rows returned to the caller are written into fresh arrays (the engine fills every row), so
        # nothing is copied afterwards; the final_* scratch is read by _row_info.
        n = self.num_envs
        obs = np.empty_like(self._obs)
        reward = np.empty(n, np.float32)
        terminated = np.empty(n, bool)
        truncated = np.empty(n, bool)
        final_obs = np.empty_like(self._obs)
        episode_return = np.empty(n, np.float64)
        episode_length = np.empty(n, np.int64)
        self._vec.step(
            acts,
            obs,
            reward,
            terminated,
            truncated,
            final_obs,
            episode_return,
            episode_length,
            b["final_inventory"],
            b["final_achievements"],
            b["final_semantic"],
            b["final_player_pos"],
            b["final_discount"],
            b["final_reward"],
            all_infos=bool(all_infos),
        )
        return obs, reward, terminated, truncated, final_obs, episode_return, episode_length

    def _row_info(self, i: int) -> dict[str, Any]:
        """Row ``i`` of the last step's final_* scratch as crafter's info dict (keys and value types of
        :meth:`CrafterNative.info`)."""
        b = self._buffers
        return {
            "inventory": dict(zip(self._items, b["final_inventory"][i].tolist())),
            "achievements": dict(zip(self._achievements, b["final_achievements"][i].tolist())),
            "discount": float(b["final_discount"][i]),
            "semantic": b["final_semantic"][i].copy(),
            "player_pos": b["final_player_pos"][i].copy(),
            "reward": float(b["final_reward"][i]),
        }

    @property
    def reset_counts(self) -> dict[str, int]:
        """How episode starts after an auto-reset or ``reset()`` without a seed were served so far.

        ``ready``: a spare built in the background was waiting; ``waited``: its build was running and the
        step waited for it; ``inline``: built by the step itself (one thread, or a build not yet started).
        """
        return {k: int(v) for k, v in self._vec.reset_counts.items()}

    def close(self) -> None:
        self._closed = True

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_assets", "_vec")}
        state["_engine_state"] = self._vec.save_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        blob = state.pop("_engine_state")
        self.__dict__.update(state)
        self._assets = _assets(*self._config)
        threads = self._num_threads_arg
        self._vec = _native.require_core().CrafterVectorEnv(
            self._assets, self.num_envs, 0 if threads is None else threads
        )
        self._vec.load_state(blob)
        self.num_threads = int(self._vec.num_threads)
        self.background_resets = bool(self._vec.background_resets)


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
        entry_point="deltairis.envs.crafter_native:CrafterGymEnv",
        vector_entry_point="deltairis.envs.crafter_native:CrafterGymVectorEnv",
    )
