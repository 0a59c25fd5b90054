"""Exact env state of the Atari reference path (issue #15 part 2): a pickled AtariPythonVectorEnv continues
byte for byte; ale-py's C++ vector env refuses pickling with a clear TypeError."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import numpy as np
import pytest

from deltairis.envs.atari import AleVectorEnv, AtariPythonVectorEnv, ale_vector_available

pytest.importorskip("ale_py")


def assert_identical(a: Any, b: Any, path: str = "result") -> None:
    """Same types, same dict key order, same array dtype/shape/bytes, same float bits."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{path}: arrays differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, (float, np.floating)):
        assert struct.pack("<d", float(a)) == struct.pack("<d", float(b)), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _steps(env: AtariPythonVectorEnv, actions: np.ndarray) -> list[Any]:
    return [env.step(a) for a in actions]


@pytest.mark.parametrize(("train", "before"), [(True, 0), (True, 130), (False, 70)])
def test_python_vector_env_continues_identically(train: bool, before: int) -> None:
    # A short time limit (in raw frames) and, when training, life losses: the continuation crosses
    # episode ends, full resets with freshly drawn no-ops and continued games.
    n = 2
    env = AtariPythonVectorEnv(n, seed=5, id="BreakoutNoFrameskip-v4", train=train, max_episode_frames=320)
    rng = np.random.default_rng(before)
    env.reset()
    _steps(env, rng.integers(0, env.num_actions, (before, n)))
    blob = pickle.dumps(env)
    actions = rng.integers(0, env.num_actions, (170, n))
    expected = _steps(env, actions)
    ends = sum(int((term | trunc).sum()) for _, _, term, trunc, _ in expected)
    assert ends >= 2 * n
    restored = pickle.loads(blob)
    assert_identical(_steps(restored, actions), expected)
    assert_identical(restored.reset(), env.reset())
    env.close()
    restored.close()


def test_pickled_before_the_first_reset() -> None:
    env = AtariPythonVectorEnv(1, seed=9, id="BreakoutNoFrameskip-v4", train=True, max_episode_frames=200)
    copy = pickle.loads(pickle.dumps(env))
    assert_identical(copy.reset(), env.reset())
    actions = np.random.default_rng(0).integers(0, env.num_actions, (60, 1))
    assert_identical(_steps(copy, actions), _steps(env, actions))


@pytest.mark.skipif(not ale_vector_available(), reason="ale-py without AtariVectorEnv")
def test_ale_vector_env_refuses_pickling_clearly() -> None:
    env = AleVectorEnv(1, seed=0, id="BreakoutNoFrameskip-v4", train=False)
    try:
        with pytest.raises(TypeError, match="cannot be checkpointed exactly"):
            pickle.dumps(env)
    finally:
        env.close()
