"""Native Crafter against the Python ``crafter`` package (baselines in the same run, same machine).

Groups (``extra_info["steps_per_s"]`` / ``["resets_per_s"]`` hold the figures to report):

* ``crafter-single``: one env on one core, uniformly random actions, resets included (a new episode
  starts whenever one ends): ``CrafterNative`` vs ``crafter.Env``;
* ``crafter-reset``: ``reset()`` alone (world generation + first frame): ``CrafterNative`` vs
  ``crafter.Env``;
* ``crafter-vector-<N>envs``: N envs with auto-reset, random actions: ``NativeCrafterVectorEnv`` with 1
  and 2 threads (with 2, next episodes are generated in the background) vs gymnasium's
  ``AsyncVectorEnv`` over ``crafter.Env`` (one process per env) at N = 8; the native pair again at
  N = 32. ``extra_info["us_per_step"]`` is the time of one vector step, ``["reset_counts"]`` how the
  native env served its episode starts (ready spare / waited for one / built inline),
  ``["minor_faults_per_step"]`` the page faults of the benchmark process per step.

Run: ``python -m pytest benchmarks/bench_crafter.py --benchmark-only``.
"""

from __future__ import annotations

import resource
from typing import Any

import gymnasium
import numpy as np
import pytest

from deltairis.envs import crafter_native

pytestmark = pytest.mark.skipif(
    not crafter_native.native_available(), reason="deltairis._core was built without native Crafter"
)

VECTOR_ENVS = 8
VECTOR_ENVS_LARGE = 32  # the native pair only


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


def _vector_runner(steps: int, num_envs: int, step_fn: Any) -> Any:
    actions = np.random.default_rng(0).integers(0, 17, (steps, num_envs))

    def run() -> None:
        for act in actions:
            step_fn(act)

    return run


@pytest.mark.parametrize(
    ("impl", "num_envs"),
    [
        ("native-1thread", VECTOR_ENVS),
        ("native-2threads", VECTOR_ENVS),
        ("gymnasium-async", VECTOR_ENVS),
        ("native-1thread", VECTOR_ENVS_LARGE),
        ("native-2threads", VECTOR_ENVS_LARGE),
    ],
)
def test_vector_env(benchmark: Any, impl: str, num_envs: int) -> None:
    benchmark.group = f"crafter-vector-{num_envs}envs"
    benchmark.extra_info["impl"] = impl
    if impl.startswith("native"):
        threads = 1 if impl == "native-1thread" else 2
        env = crafter_native.NativeCrafterVectorEnv(num_envs, seed=0, num_threads=threads)
        env.reset()
        steps, rounds = (1000 if num_envs <= VECTOR_ENVS else 400), 5
        step_fn = env.step
    else:
        env = gymnasium.vector.AsyncVectorEnv([lambda i=i: _GymCrafter(seed=i) for i in range(num_envs)])
        env.reset(seed=0)
        steps, rounds = 250, 2  # long enough that auto-resets (~0.9 s each in crafter) are included
        step_fn = env.step
    try:
        run = _vector_runner(steps, num_envs, step_fn)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
        # Minor page faults of this process per vector step (warm-up round included). Dropping the large
        # output arrays at once every step can make glibc trim the heap top and fault it back next step.
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        benchmark.extra_info["minor_faults_per_step"] = faults / (steps * (rounds + 1))
        if impl.startswith("native"):
            benchmark.extra_info["reset_counts"] = env.reset_counts
    finally:
        env.close()
    benchmark.extra_info["steps_per_round"] = steps * num_envs
    benchmark.extra_info["steps_per_s"] = steps * num_envs / benchmark.stats.stats.mean
    benchmark.extra_info["us_per_step"] = 1e6 * benchmark.stats.stats.mean / steps
