"""Test oracle for the native Crafter engine: the Python ``crafter`` package with creation-order balancing.

Python crafter despawns ``creatures[randint(0, n)]`` where ``creatures`` comes from a ``set`` ordered by
memory address, so the unmodified package is not reproducible even against itself. The oracle patches
``Env._balance_object`` so that ``creatures`` follows creation order (each object's slot index in
``world._objects``); the random draws and the law of the environment are unchanged.

The reference must run with ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"`` set before numpy
is imported (numpy's AVX-512 ``exp`` differs from glibc's in the last bits), so :func:`run_reference`
runs this file as subprocesses (two, to use both cores of a CI machine). Cases go in as JSON,
trajectories come back as one ``.npz`` per case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NPY_FLAGS = "X86_V4 AVX512_ICL AVX512_SPR"


def patch_creation_order() -> None:
    """Make ``crafter.Env._balance_object`` pick creatures in creation order (idempotent)."""
    import crafter
    import numpy as np

    if getattr(crafter.Env, "_deltairis_creation_order", False):
        return

    def _balance_object(
        self: Any,
        chunk: Any,
        objs: Any,
        cls: Any,
        material: str,
        span_dist: int,
        despan_dist: int,
        spawn_prob: float,
        despawn_prob: float,
        ctor: Any,
        target_fn: Any,
    ) -> None:
        xmin, xmax, ymin, ymax = chunk
        random = self._world.random
        slot = self._world._obj_map
        creatures = sorted(
            (obj for obj in objs if isinstance(obj, cls)), key=lambda o: int(slot[tuple(o.pos)])
        )
        mask = self._world.mask(*chunk, material)
        target_min, target_max = target_fn(len(creatures), mask.sum())
        if len(creatures) < int(target_min) and random.uniform() < spawn_prob:
            xs = np.tile(np.arange(xmin, xmax)[:, None], [1, ymax - ymin])
            ys = np.tile(np.arange(ymin, ymax)[None, :], [xmax - xmin, 1])
            xs, ys = xs[mask], ys[mask]
            i = random.randint(0, len(xs))
            pos = np.array((xs[i], ys[i]))
            empty = self._world[pos][1] is None
            away = self._player.distance(pos) >= span_dist
            if empty and away:
                self._world.add(ctor(pos))
        elif len(creatures) > int(target_max) and random.uniform() < despawn_prob:
            obj = creatures[random.randint(0, len(creatures))]
            away = self._player.distance(obj.pos) >= despan_dist
            if away:
                self._world.remove(obj)

    crafter.Env._balance_object = _balance_object
    crafter.Env._deltairis_creation_order = True


def patch_record_despawns() -> None:
    """Keep crafter's own (address-ordered) balancing but record which object each despawn removes.

    ``Env._balance_object`` is replaced by the same code plus one line that appends the removed object's
    slot index to ``env._deltairis_despawns``; the trajectory is the unmodified package's. The native
    engine replays those choices through its test hook (tier 2 of docs/crafter_native.md).
    """
    import crafter
    import numpy as np

    if getattr(crafter.Env, "_deltairis_record", False):
        return

    def _balance_object(
        self: Any,
        chunk: Any,
        objs: Any,
        cls: Any,
        material: str,
        span_dist: int,
        despan_dist: int,
        spawn_prob: float,
        despawn_prob: float,
        ctor: Any,
        target_fn: Any,
    ) -> None:
        xmin, xmax, ymin, ymax = chunk
        random = self._world.random
        creatures = [obj for obj in objs if isinstance(obj, cls)]
        mask = self._world.mask(*chunk, material)
        target_min, target_max = target_fn(len(creatures), mask.sum())
        if len(creatures) < int(target_min) and random.uniform() < spawn_prob:
            xs = np.tile(np.arange(xmin, xmax)[:, None], [1, ymax - ymin])
            ys = np.tile(np.arange(ymin, ymax)[None, :], [xmax - xmin, 1])
            xs, ys = xs[mask], ys[mask]
            i = random.randint(0, len(xs))
            pos = np.array((xs[i], ys[i]))
            empty = self._world[pos][1] is None
            away = self._player.distance(pos) >= span_dist
            if empty and away:
                self._world.add(ctor(pos))
        elif len(creatures) > int(target_max) and random.uniform() < despawn_prob:
            obj = creatures[random.randint(0, len(creatures))]
            self.__dict__.setdefault("_deltairis_despawns", []).append(
                int(self._world._obj_map[tuple(obj.pos)])
            )
            away = self._player.distance(obj.pos) >= despan_dist
            if away:
                self._world.remove(obj)

    crafter.Env._balance_object = _balance_object
    crafter.Env._deltairis_record = True


def apply_pokes_python(env: Any, pokes: list[list[Any]]) -> None:
    """Apply scenario edits to a reset ``crafter.Env``: ``["inventory", name, value]``,
    ``["material", x, y, name]``, ``["object", kind, x, y, health, fx, fy, grown]``."""
    import crafter

    for what, *args in pokes:
        if what == "inventory":
            env._player.inventory[args[0]] = args[1]
        elif what == "material":
            env._world[(args[0], args[1])] = args[2]
        elif what == "object":
            kind, x, y, health, fx, fy, grown = args
            cls = getattr(crafter.objects, kind)
            if kind in ("Zombie", "Skeleton"):
                obj = cls(env._world, (x, y), env._player)
            elif kind == "Arrow":
                obj = cls(env._world, (x, y), (fx, fy))
            else:
                obj = cls(env._world, (x, y))
            obj.health = health
            if kind == "Plant":
                obj.grown = grown
            env._world.add(obj)
        else:
            raise ValueError(f"unknown poke {what!r}")


def apply_pokes_native(env: Any, pokes: list[list[Any]]) -> None:
    """The same edits on a reset ``CrafterNative`` through its test hook."""
    items = list(env._assets.item_names)
    mats = list(env._assets.material_names)
    for what, *args in pokes:
        if what == "inventory":
            env._env._poke("inventory", (items.index(args[0]), args[1]))
        elif what == "material":
            env._env._poke("material", (args[0], args[1], mats.index(args[2])))
        else:
            env._env._poke(what, tuple(args))


def export_state(env: Any) -> dict[str, Any]:
    """The full state of a ``crafter.Env`` between two steps, as the native engine's ``_import_state`` reads it."""
    world, player = env._world, env._player
    _, key, pos, *_ = world.random.get_state()
    objects = []
    for slot, obj in enumerate(world._objects):
        if obj is None:
            continue
        kind = type(obj).__name__
        facing = tuple(int(v) for v in obj.facing) if kind in ("Player", "Arrow") else (0, 0)
        cooldown = obj.cooldown if kind == "Zombie" else obj.reload if kind == "Skeleton" else 0
        grown = obj.grown if kind == "Plant" else 0
        pos_x, pos_y = (int(v) for v in obj.pos)
        objects.append((slot, kind, pos_x, pos_y, int(obj.health), *facing, int(cooldown), int(grown)))
    chunks_y = -(-world.area[1] // 12)
    return {
        "step": int(env._step),
        "episode": int(env._episode),
        "mt_key": [int(v) for v in key],
        "mt_pos": int(pos),
        "materials": world._mat_map.ravel().tolist(),
        "num_slots": len(world._objects),
        "objects": objects,
        "chunk_order": [int(k[0] // 12 * chunks_y + k[2] // 12) for k in world._chunks],
        "sleeping": bool(player.sleeping),
        "player_last_health": int(player._last_health),
        "hunger": float(player._hunger),
        "thirst": float(player._thirst),
        "fatigue": int(player._fatigue),
        "recover": float(player._recover),
        "inventory": [int(v) for v in player.inventory.values()],
        "achievements": [int(v) for v in player.achievements.values()],
        "env_last_health": int(env._last_health),
        "unlocked": [name in env._unlocked for name in player.achievements],
    }


def _objects_of(env: Any) -> list[tuple[str, int, int, int]]:
    return [(type(o).__name__, int(o.pos[0]), int(o.pos[1]), int(o.health)) for o in env._world.objects]


def _run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case: a crafter.Env(seed) and one action list per episode (stops early at done)."""
    import crafter
    import numpy as np

    env = crafter.Env(
        area=tuple(case.get("area", (64, 64))),
        view=tuple(case.get("view", (9, 9))),
        size=tuple(case.get("size", (64, 64))),
        length=case.get("length", 10000),
        seed=case["seed"],
        reward=case.get("reward", True),
    )
    out: dict[str, Any] = {}
    for e, actions in enumerate(case["episodes"]):
        env._deltairis_despawns = []
        obs = env.reset()
        out[f"e{e}_reset_obs"] = obs
        out[f"e{e}_material"] = env._world._mat_map.copy()
        out[f"e{e}_objects"] = np.array(json.dumps(_objects_of(env)))
        apply_pokes_python(env, case.get("pokes", [[]] * len(case["episodes"]))[e])
        rows: dict[str, list[Any]] = {
            k: []
            for k in (
                "obs",
                "reward",
                "done",
                "discount",
                "inventory",
                "achievements",
                "semantic",
                "player_pos",
                "info_reward",
                "daylight",
                "render",
            )
        }
        export_every = case.get("export_every", 0)
        states = []
        for t, action in enumerate(actions):
            exported = export_every and t % export_every == 0
            if exported:
                state, before = export_state(env), len(env._deltairis_despawns)
            obs, reward, done, info = env.step(int(action))
            if exported:
                states.append({"t": t, "state": state, "despawns": env._deltairis_despawns[before:]})
            rows["obs"].append(obs)
            rows["reward"].append(np.float64(reward))
            rows["done"].append(bool(done))
            rows["discount"].append(np.float64(info["discount"]))
            rows["inventory"].append(list(info["inventory"].values()))
            rows["achievements"].append(list(info["achievements"].values()))
            rows["semantic"].append(info["semantic"])
            rows["player_pos"].append(np.asarray(info["player_pos"], np.int64))
            rows["info_reward"].append(np.float64(info["reward"]))
            rows["daylight"].append(np.float64(env._world.daylight))
            if t in case.get("render_at", ()):
                rows["render"].append(env.render())
            if done:
                break
        for key, values in rows.items():
            out[f"e{e}_{key}"] = np.array(values)
        out[f"e{e}_states"] = np.array(json.dumps(states))
        if rows["reward"]:
            out[f"e{e}_inventory_keys"] = np.array(list(info["inventory"].keys()))
        out[f"e{e}_final_objects"] = np.array(json.dumps(_objects_of(env)))
        out[f"e{e}_despawns"] = np.array(env._deltairis_despawns, dtype=np.int64)
    return out


# ----------------------------------------------------------------------------------------------------
# A scripted agent that reaches crafting, placing, combat, sleeping and drinking (actions recorded from
# the native env, then replayed in the reference).
# ----------------------------------------------------------------------------------------------------

_DIRS = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}


def _bfs_step(sem: Any, start: tuple[int, int], targets: set[int], walk: set[int], radius: int = 24) -> Any:
    """First move toward the nearest tile adjacent to a ``targets`` tile, ``("face", dir)`` when adjacent."""
    from collections import deque

    w, h = sem.shape
    sx, sy = start
    for name, (dx, dy) in _DIRS.items():
        x, y = sx + dx, sy + dy
        if 0 <= x < w and 0 <= y < h and int(sem[x, y]) in targets:
            return ("face", name)
    prev: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        if abs(cur[0] - sx) + abs(cur[1] - sy) > radius:
            continue
        for name, (dx, dy) in _DIRS.items():
            nxt = (cur[0] + dx, cur[1] + dy)
            if nxt in prev or not (0 <= nxt[0] < w and 0 <= nxt[1] < h):
                continue
            if int(sem[nxt]) in targets and cur != start:
                node = cur
                while prev[node] is not None and prev[node][0] != start:
                    node = prev[node][0]
                return ("move", prev[node][1] if prev[node] is not None else name)
            if int(sem[nxt]) in walk:
                prev[nxt] = (cur, name)
                queue.append(nxt)
    return None


def scripted_actions(env: Any, steps: int, rng: Any, explore: float = 0.1) -> list[int]:
    """Play one episode of ``env`` (a reset ``CrafterNative``) with a greedy crafting agent; return actions."""
    names = env.action_names
    act = {n: i for i, n in enumerate(names)}
    mats = list(env._assets.material_names)
    mid = {n: i for i, n in enumerate(mats) if n}
    obj_base = len(mats)
    cow, zombie, skeleton = obj_base + 1, obj_base + 2, obj_base + 3
    walk = {mid["grass"], mid["sand"], mid["path"]}
    info = env.info(0.0)
    facing = (0, 1)
    actions: list[int] = []
    for _ in range(steps):
        inv, sem = info["inventory"], info["semantic"]
        px, py = (int(v) for v in info["player_pos"])
        fx, fy = px + facing[0], py + facing[1]
        front = int(sem[fx, fy]) if 0 <= fx < sem.shape[0] and 0 <= fy < sem.shape[1] else -1
        near = {int(v) for v in sem[max(px - 1, 0) : px + 2, max(py - 1, 0) : py + 2].ravel()}
        choice: str | None = None
        if rng.random() < explore:
            choice = names[int(rng.integers(len(names)))]
        elif inv["energy"] < 3:
            choice = "sleep"
        elif (
            front in (zombie, skeleton, cow)
            or front == mid["tree"]
            or front == mid["water"]
            and inv["drink"] < 9
            or front in (mid["stone"], mid["coal"])
            and inv["wood_pickaxe"]
            or front == mid["iron"]
            and inv["stone_pickaxe"]
        ):
            choice = "do"
        else:
            for item in (
                "wood_pickaxe",
                "wood_sword",
                "stone_pickaxe",
                "stone_sword",
                "iron_pickaxe",
                "iron_sword",
            ):
                if inv[item] == 0 and mid["table"] in near and rng.random() < 0.5:
                    choice = "make_" + item
                    break
            if choice is None and mid["table"] not in near and inv["wood"] >= 2 and rng.random() < 0.5:
                choice = "place_table"
            elif choice is None and mid["table"] in near and mid["furnace"] not in near and inv["stone"] >= 2:
                choice = "place_furnace"
            elif choice is None and inv["sapling"] and rng.random() < 0.2:
                choice = "place_plant"
            elif choice is None and inv["stone"] >= 3 and rng.random() < 0.1:
                choice = "place_stone"
        if choice is None:
            if inv["wood"] < 4 and not inv["wood_pickaxe"] or inv["wood"] < 2:
                targets = {mid["tree"]}
            elif inv["drink"] < 5:
                targets = {mid["water"]}
            elif inv["food"] < 5:
                targets = {cow}
            elif inv["stone"] < 4 or not inv["stone_pickaxe"]:
                targets = {mid["stone"]}
            else:
                targets = {mid["coal"], mid["iron"], mid["stone"], zombie}
            step = _bfs_step(sem, (px, py), targets, walk)
            choice = step[1] if step is not None else names[int(rng.integers(1, 5))]
            if step is not None and step[0] == "face" and _DIRS[step[1]] == facing:
                choice = "do"
        if choice in _DIRS:
            facing = _DIRS[choice]
        actions.append(act[choice])
        _, _, done, info = env.step(act[choice])
        if done:
            break
    return actions


def case_cost(case: dict[str, Any]) -> float:
    """Rough CPU cost of ``case`` in the reference, in units of one 64x64 reset (about 0.7 s).

    World generation dominates (its cost follows the area); a step costs about 1/3000 of a reset.
    """
    area = case.get("area", (64, 64))
    episodes = case["episodes"]
    return len(episodes) * area[0] * area[1] / 4096 + sum(len(a) for a in episodes) / 3000


def split_cases(cases: list[dict[str, Any]], workers: int) -> list[list[int]]:
    """Deterministic split of case indices over ``workers``: costliest first, each to the least loaded
    worker (ties to the lowest worker); every index appears exactly once, in increasing order per worker."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    loads = [0.0] * workers
    parts: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(cases)), key=lambda i: (-case_cost(cases[i]), i)):
        w = min(range(workers), key=lambda w: (loads[w], w))
        loads[w] += case_cost(cases[i])
        parts[w].append(i)
    return [sorted(part) for part in parts if part]


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


def run_reference(
    cases: list[dict[str, Any]],
    timeout: float = 600,
    mode: str = "creation_order",
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Run the Python reference on ``cases`` in subprocesses with numpy's AVX-512 disabled.

    ``mode="creation_order"``: the creation-order oracle (tier 1). ``mode="record"``: the unmodified
    package, recording each despawn's choice in ``e{episode}_despawns`` (tier 2).

    Each case: ``{"seed": int, "episodes": [[action, ...], ...], "length": int, "reward": bool}``.
    Returns one dict of arrays per case (keys ``e{episode}_{field}``), in the order of ``cases``.

    The cases are split over ``workers`` subprocesses (default: 2, or 1 on a one-CPU machine) by
    :func:`split_cases`. Each case builds its own ``crafter.Env`` from its seed, so a case's result does
    not depend on which worker runs it or what ran before it. ``timeout`` bounds the whole call; if a
    worker fails or the time runs out, every worker still running is killed before the error is raised.
    """
    import numpy as np

    if mode not in ("creation_order", "record"):
        raise ValueError(f"mode must be 'creation_order' or 'record', got {mode!r}")
    parts = split_cases(cases, _default_workers() if workers is None else workers)
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=NPY_FLAGS)
    with tempfile.TemporaryDirectory() as tmp:
        procs: list[tuple[list[str], subprocess.Popen[bytes]]] = []
        try:
            for w, part in enumerate(parts):
                spec = Path(tmp) / f"cases{w}.json"
                jobs = {str(i): cases[i] for i in part}
                spec.write_text(json.dumps({"cases": jobs, "out": tmp, "mode": mode}))
                cmd = [sys.executable, __file__, str(spec)]
                procs.append((cmd, subprocess.Popen(cmd, env=env)))
            deadline = time.monotonic() + timeout
            for cmd, proc in procs:
                left = max(deadline - time.monotonic(), 0.0)
                try:
                    rc = proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    raise subprocess.TimeoutExpired(cmd, timeout) from None
                if rc != 0:
                    raise subprocess.CalledProcessError(rc, cmd)
        finally:
            for _, proc in procs:  # no worker outlives the call (or writes into the removed folder)
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        results = []
        for i in range(len(cases)):
            with np.load(Path(tmp) / f"case{i}.npz") as data:
                results.append({k: data[k] for k in data.files})
        return results


def _main(spec_path: str) -> None:
    """Worker: run the cases of one spec file (``{"cases": {index: case}, "out": dir, "mode": ...}``)."""
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("mode", "creation_order") == "record":
        patch_record_despawns()
    else:
        patch_creation_order()
    for i, case in spec["cases"].items():
        np.savez(Path(spec["out"]) / f"case{i}.npz", **_run_case(case))


if __name__ == "__main__":
    _main(sys.argv[1])
