"""Environment throughput (agent steps per second, all envs together) for every ``VectorEnv`` backend.

Each group runs the fast path and its baseline in the same session on the same random actions:

* ``atari-<N>envs``: ale-py's C++ vector env (``backend="ale_vector"``) vs gymnasium + ale-py with the
  reference preprocessing (``backend="python"``), Breakout, training settings (auto-resets included);
* ``crafter-<N>envs``: native C++ Crafter vs ``crafter.Env`` (steady stepping; the reset cost, ~0.9 s
  per Python reset, is measured separately in ``crafter-reset``);
* ``toy``: the built-in toy env.

Run: ``python -m pytest benchmarks/bench_envs.py --benchmark-only``. ``extra_info["steps_per_s"]``
holds the figure to report; ``extra_info["device"]`` the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from deltairis.envs import make_vector_env
from deltairis.envs.vector import VectorEnv

STEPS_PER_ROUND = 100


def _native_crafter_available() -> bool:
    try:
        from deltairis.envs.crafter_native import native_available
    except ImportError:
        return False
    return bool(native_available())


def _stepper(env: VectorEnv, steps: int, seed: int = 0) -> Callable[[], None]:
    rng = np.random.default_rng(seed)
    actions = rng.integers(env.num_actions, size=(steps, env.num_envs))

    def run() -> None:
        for act in actions:
            env.step(act)

    return run


def _bench_steps(benchmark, env: VectorEnv, rounds: int, steps: int = STEPS_PER_ROUND) -> None:
    env.reset(0)
    run = _stepper(env, steps)
    run()  # warm-up (first frames, lazy allocations)
    benchmark.pedantic(run, rounds=rounds, iterations=1)
    benchmark.extra_info["num_envs"] = env.num_envs
    benchmark.extra_info["steps_per_round"] = steps * env.num_envs
    benchmark.extra_info["steps_per_s"] = steps * env.num_envs / benchmark.stats.stats.mean
    env.close()


@pytest.mark.parametrize("num_envs", [1, 4])
@pytest.mark.parametrize("backend", ["ale_vector", "python"])
def test_atari_steps(benchmark, backend: str, num_envs: int) -> None:
    benchmark.group = f"atari-{num_envs}envs"
    benchmark.extra_info["backend"] = backend
    env = make_vector_env("atari", num_envs, seed=0, backend=backend, id="BreakoutNoFrameskip-v4", train=True)
    _bench_steps(benchmark, env, rounds=10)


@pytest.mark.parametrize("backend", ["native", "python"])
def test_crafter_steps(benchmark, backend: str) -> None:
    if backend == "native" and not _native_crafter_available():
        pytest.skip("native Crafter engine not built")
    benchmark.group = "crafter-2envs"
    benchmark.extra_info["backend"] = backend
    env = make_vector_env("crafter", 2, seed=0, backend=backend)
    _bench_steps(benchmark, env, rounds=3 if backend == "python" else 20)


@pytest.mark.parametrize("backend", ["native", "python"])
def test_crafter_reset(benchmark, backend: str) -> None:
    if backend == "native" and not _native_crafter_available():
        pytest.skip("native Crafter engine not built")
    benchmark.group = "crafter-reset"
    benchmark.extra_info["backend"] = backend
    env = make_vector_env("crafter", 1, seed=0, backend=backend)
    env.reset(0)
    benchmark.pedantic(env.reset, rounds=3 if backend == "python" else 50, iterations=1)
    env.close()


def test_toy_steps(benchmark) -> None:
    benchmark.group = "toy"
    env = make_vector_env("toy", 8, seed=0)
    _bench_steps(benchmark, env, rounds=10)
