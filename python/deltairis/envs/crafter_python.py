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

    # Exact state as plain data (checkpoints, see deltairis.envs.state_blob): the world (materials, object
    # and material maps, generator, daylight, chunks), every object's class (one of crafter's) and fields,
    # and the episode counters. Restored into a fresh crafter.Env, it continues as the saved one, but for
    # one thing crafter leaves to memory addresses: which creature despawns when a chunk holds several.
    def env_state(self) -> dict[str, Any]:
        env, world = self.env, self.env._world
        index = {id(obj): i for i, obj in enumerate(world._objects) if obj is not None}
        objects = [
            None
            if obj is None
            else {
                "class": type(obj).__name__,
                "fields": {k: v for k, v in vars(obj).items() if k not in ("world", "random", "player")},
            }
            for obj in world._objects
        ]
        return {
            "seed": int(env._seed),
            "length": self.length,
            "reward": bool(self.reward),
            "episode": int(env._episode),
            "step": env._step,
            "last_health": env._last_health,
            "unlocked": None if env._unlocked is None else sorted(env._unlocked),
            "player": None if env._player is None else index[id(env._player)],
            "world": {
                "materials": [world._mat_names[i] for i in range(len(world._mat_names))],
                "material_ids": list(world._mat_ids.items()),
                "random": world.random.get_state(),
                "daylight": float(world.daylight),
                "mat_map": world._mat_map.copy(),
                "obj_map": world._obj_map.copy(),
                "objects": objects,
                "chunks": [[list(key), sorted(index[id(o)] for o in objs)] for key, objs in world._chunks.items()],
            },
        }

    def load_env_state(self, state: dict[str, Any]) -> None:
        import collections

        from crafter import objects as crafter_objects

        classes = {c.__name__: c for c in (crafter_objects.Player, crafter_objects.Cow, crafter_objects.Zombie,
                                           crafter_objects.Skeleton, crafter_objects.Arrow, crafter_objects.Plant,
                                           crafter_objects.Fence)}
        self.length, self.reward = int(state["length"]), bool(state["reward"])
        env = self._make(int(state["seed"]))
        world, saved = env._world, state["world"]
        random = np.random.RandomState()
        random.set_state(saved["random"])
        world.random = random
        world.daylight = float(saved["daylight"])
        world._mat_names = dict(enumerate(saved["materials"]))
        world._mat_ids = {name: int(i) for name, i in saved["material_ids"]}
        world._mat_map = np.asarray(saved["mat_map"], dtype=np.uint8).reshape(world.area).copy()
        world._obj_map = np.asarray(saved["obj_map"], dtype=np.uint32).reshape(world.area).copy()
        objs: list[Any] = []
        for record in saved["objects"]:
            if record is None:
                objs.append(None)
                continue
            cls = classes.get(str(record["class"]))
            if cls is None:
                raise ValueError(f"unknown crafter object {record['class']!r}")
            obj = cls.__new__(cls)
            obj.__dict__.update(record["fields"])
            obj.world, obj.random = world, random
            objs.append(obj)
        player = None if state["player"] is None else objs[int(state["player"])]
        for obj in objs:
            if obj is not None and isinstance(obj, (crafter_objects.Zombie, crafter_objects.Skeleton)):
                obj.player = player
        world._objects = objs
        world._chunks = collections.defaultdict(set)
        for key, members in saved["chunks"]:
            world._chunks[tuple(key)] = {objs[int(i)] for i in members}
        env._episode, env._step = int(state["episode"]), state["step"]
        env._last_health, env._player = state["last_health"], player
        env._unlocked = None if state["unlocked"] is None else set(state["unlocked"])
        self.env = env


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

    state_kind = "crafter-python"

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
