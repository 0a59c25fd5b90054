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

The gymnasium adapters of both (``deltairis/Crafter-v1``) live in :mod:`deltairis.envs.crafter_gym`.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np

from deltairis import _native
from deltairis.envs.vector import VectorEnv, check_positive_int

logger = logging.getLogger(__name__)


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

    state_kind = "crafter-native"

    def env_state(self) -> dict[str, Any]:
        """The exact state as plain data: the engine's own versioned, checksummed blob
        (``save_state``), the settings, the last observations and the episode-end scratch."""
        area, view, size, reward, length = self._config
        return {
            "config": {"area": list(area), "view": list(view), "size": list(size), "reward": reward, "length": length},
            "num_envs": self.num_envs,
            "default_seed": self._default_seed,
            "needs_reset": self._needs_reset,
            "obs": self._obs.copy(),
            "buffers": {k: v.copy() for k, v in self._buffers.items()},
            "engine": self._vec.save_state(),
        }

    def load_env_state(self, state: dict[str, Any]) -> None:
        """Take what :meth:`env_state` returned (the engine checks its blob's version, checksum and
        configuration); this env then continues byte for byte as the saved one."""
        cfg = state["config"]
        config = (
            _pair(list(cfg["area"]), "area"),
            _pair(list(cfg["view"]), "view"),
            _pair(list(cfg["size"]), "size"),
            bool(cfg["reward"]),
            _check_length(int(cfg["length"])),
        )
        if int(state["num_envs"]) != self.num_envs:
            raise ValueError(f"the state is of {state['num_envs']} envs, this vector env has {self.num_envs}")
        assets = _assets(*config)
        threads = self._num_threads_arg
        vec = _native.require_core().CrafterVectorEnv(assets, self.num_envs, 0 if threads is None else threads)
        engine = state["engine"]
        if not isinstance(engine, bytes):
            raise ValueError("the engine state is not bytes")  # noqa: TRY004 (project rule: bad input -> ValueError)
        vec.load_state(engine)
        buffers = {k: np.asarray(state["buffers"][k], dtype=v.dtype).reshape(v.shape) for k, v in self._buffers.items()}
        obs = np.asarray(state["obs"], dtype=np.uint8).reshape(self._obs.shape)
        self._config, self._assets, self._vec = config, assets, vec
        self.num_threads = int(vec.num_threads)
        self.background_resets = bool(vec.background_resets)
        self._default_seed = int(state["default_seed"])
        self._needs_reset = bool(state["needs_reset"])
        self._obs, self._buffers = obs, buffers

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
