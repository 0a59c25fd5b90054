"""Exact env state of the Atari reference path (issue #15 part 2): a pickled AtariPythonVectorEnv continues
byte for byte; ale-py's C++ vector env refuses pickling with a clear TypeError."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from identical import assert_identical

from deltairis.envs.atari import AleVectorEnv, AtariPythonVectorEnv, ale_vector_available

pytest.importorskip("ale_py")


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
