"""Native Crafter against the Python ``crafter`` package (baselines in the same run, same machine).

Groups (``extra_info["steps_per_s"]`` / ``["resets_per_s"]`` hold the figures to report):

* ``crafter-single``: one env on one core, uniformly random actions, resets included (a new episode
  starts whenever one ends): ``CrafterNative`` vs ``crafter.Env``;
* ``crafter-reset``: ``reset()`` alone (world generation + first frame): ``CrafterNative`` vs
  ``crafter.Env``;
* ``crafter-vector-<N>envs``: N envs with auto-reset, random actions: ``NativeCrafterVectorEnv`` with 1
  and 2 threads vs gymnasium's ``AsyncVectorEnv`` over ``crafter.Env`` (one process per env).

Run: ``python -m pytest benchmarks/bench_crafter.py --benchmark-only``.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest

from deltairis.envs import crafter_native

pytestmark = pytest.mark.skipif(
    not crafter_native.native_available(), reason="deltairis._core was built without native Crafter"
)

VECTOR_ENVS = 8


def _single_runner(env: Any, steps: int, seed: int = 0) -> Any:
    actions = np.random.default_rng(seed).integers(0, 17, steps).tolist()

    def run() -> None:
        env.reset()
        for action in actions:
            _, _, done, _ = env.step(action)
            if done:
                env.reset()

    return run


@pytest.mark.parametrize("impl", ["native", "python"])
def test_single_env_random_with_resets(benchmark: Any, impl: str) -> None:
    import crafter

    benchmark.group = "crafter-single"
    benchmark.extra_info["impl"] = impl
    steps = 20000 if impl == "native" else 600
    env = crafter_native.CrafterNative(seed=0) if impl == "native" else crafter.Env(seed=0)
    run = _single_runner(env, steps)
    benchmark.pedantic(run, rounds=5 if impl == "native" else 2, iterations=1)
    benchmark.extra_info["steps_per_round"] = steps
    benchmark.extra_info["steps_per_s"] = steps / benchmark.stats.stats.mean


@pytest.mark.parametrize("impl", ["native", "python"])
def test_reset(benchmark: Any, impl: str) -> None:
    import crafter

    benchmark.group = "crafter-reset"
    benchmark.extra_info["impl"] = impl
    env = crafter_native.CrafterNative(seed=0) if impl == "native" else crafter.Env(seed=0)
    env.reset()
    benchmark.pedantic(env.reset, rounds=200 if impl == "native" else 4, iterations=1)
    benchmark.extra_info["resets_per_s"] = 1.0 / benchmark.stats.stats.mean


class _GymCrafter(gymnasium.Env):
    """``crafter.Env`` as a gymnasium env (terminated = death, truncated = length), for AsyncVectorEnv."""

    def __init__(self, seed: int = 0) -> None:
        import crafter

        self._env = crafter.Env(seed=seed)
        self.observation_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(17)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return self._env.reset(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, done, info = self._env.step(int(action))
        terminated = info["discount"] == 0
        return obs, reward, terminated, bool(done) and not terminated, {}


def _vector_runner(env: Any, steps: int, step_fn: Any) -> Any:
    actions = np.random.default_rng(0).integers(0, 17, (steps, VECTOR_ENVS))

    def run() -> None:
        for act in actions:
            step_fn(act)

    return run


@pytest.mark.parametrize("impl", ["native-1thread", "native-2threads", "gymnasium-async"])
def test_vector_env(benchmark: Any, impl: str) -> None:
    benchmark.group = f"crafter-vector-{VECTOR_ENVS}envs"
    benchmark.extra_info["impl"] = impl
    if impl.startswith("native"):
        threads = 1 if impl == "native-1thread" else 2
        env = crafter_native.NativeCrafterVectorEnv(VECTOR_ENVS, seed=0, num_threads=threads)
        env.reset()
        steps, rounds = 1000, 5
        step_fn = env.step
    else:
        env = gymnasium.vector.AsyncVectorEnv([lambda i=i: _GymCrafter(seed=i) for i in range(VECTOR_ENVS)])
        env.reset(seed=0)
        steps, rounds = 250, 2  # long enough that auto-resets (~0.9 s each in crafter) are included
        step_fn = env.step
    try:
        run = _vector_runner(env, steps, step_fn)
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    finally:
        env.close()
    benchmark.extra_info["steps_per_round"] = steps * VECTOR_ENVS
    benchmark.extra_info["steps_per_s"] = steps * VECTOR_ENVS / benchmark.stats.stats.mean
