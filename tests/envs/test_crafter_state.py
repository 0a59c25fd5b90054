"""Exact env state of native Crafter (issue #15 part 2): a pickled env continues byte for byte.

For the single env, the vector stepper (threads 1 and 2, background resets) and the gymnasium vector env:
run N steps of random actions, pickle, keep stepping the original M more steps while recording everything
a step returns, then step the restored copy with the same M actions: observations, rewards, terminations,
truncations and infos (final observations and the auto-reset rule included) must be identical, dtype and
bytes. Also: bad blobs (another kind, another version, truncated, corrupted, another configuration) raise
a ValueError naming the problem. The engine's own round-trip tests are in csrc/envs/crafter/engine_test.cc.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import numpy as np
import pytest
from identical import assert_identical

from deltairis.envs import crafter_gym, crafter_native

pytestmark = pytest.mark.skipif(
    not crafter_native.native_available(), reason="deltairis._core was built without native Crafter"
)


# ---- single env ------------------------------------------------------------------------------------


def _single_steps(env: crafter_native.CrafterNative, actions: np.ndarray) -> list[Any]:
    """Steps with crafter's rule: reset after done (the reset obs recorded too)."""
    out: list[Any] = []
    for a in actions:
        obs, reward, done, info = env.step(int(a))
        out.append((obs, reward, done, info))
        if done:
            out.append(env.reset())
    return out


@pytest.mark.parametrize(("length", "before", "after"), [(40, 57, 90), (10000, 230, 60), (10000, 0, 30)])
def test_single_env_continues_identically(length: int, before: int, after: int) -> None:
    rng = np.random.default_rng(length + before)
    env = crafter_native.CrafterNative(seed=11, length=length)
    env.reset()
    _single_steps(env, rng.integers(0, 17, before))
    blob = pickle.dumps(env)
    actions = rng.integers(0, 17, after)
    expected = _single_steps(env, actions)
    restored = pickle.loads(blob)
    assert restored.seed == 11
    assert_identical(_single_steps(restored, actions), expected)
    if length == 40:
        assert any(isinstance(x, np.ndarray) for x in expected), (
            "the continuation should cross an episode end"
        )
    assert restored.episode == env.episode
    assert_identical(restored.material_map(), env.material_map())
    assert_identical(restored.objects(), env.objects())


def test_single_env_pickled_before_reset_and_after_render() -> None:
    env = crafter_native.CrafterNative(seed=5)
    copy = pickle.loads(pickle.dumps(env))
    with pytest.raises(RuntimeError, match="reset"):
        copy.step(0)
    assert_identical(copy.reset(), env.reset())
    for _ in range(200):  # into the night: render() draws from the world's generator
        env.step(0)
    env.render()
    copy = pickle.loads(pickle.dumps(env))
    assert env.daylight < 0.5
    assert_identical(copy.render(), env.render())
    assert_identical(_single_steps(copy, np.arange(17)), _single_steps(env, np.arange(17)))


# ---- vector envs -----------------------------------------------------------------------------------


def _vector_steps(env: Any, actions: np.ndarray) -> list[Any]:
    return [env.step(a) for a in actions]


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("before", [0, 45])
def test_vector_env_continues_identically(num_threads: int, before: int) -> None:
    n = 4
    rng = np.random.default_rng(before)
    env = crafter_native.NativeCrafterVectorEnv(n, seed=3, num_threads=num_threads, length=30)
    env.reset()
    _vector_steps(env, rng.integers(0, 17, (before, n)))
    blob = pickle.dumps(env)
    actions = rng.integers(0, 17, (70, n))
    expected = _vector_steps(env, actions)
    assert sum(int((term | trunc).sum()) for _, _, term, trunc, _ in expected) >= n  # auto-resets crossed
    restored = pickle.loads(blob)
    assert restored.num_threads == env.num_threads
    assert restored.background_resets == (num_threads > 1)
    assert_identical(_vector_steps(restored, actions), expected)
    # Episode starts after the restore came from rebuilt spares (two threads) or inline resets.
    assert_identical(restored.reset(), env.reset())


def test_vector_state_does_not_depend_on_the_thread_count() -> None:
    rng = np.random.default_rng(1)
    one = crafter_native.NativeCrafterVectorEnv(3, seed=8, num_threads=1, length=25)
    two = crafter_native.NativeCrafterVectorEnv(3, seed=8, num_threads=2, length=25)
    one.reset()
    _vector_steps(one, rng.integers(0, 17, (40, 3)))
    state = one.__getstate__()
    two.__setstate__({**state, "_num_threads_arg": 2})
    assert two.num_threads == 2
    actions = rng.integers(0, 17, (60, 3))
    assert_identical(_vector_steps(two, actions), _vector_steps(one, actions))


def test_vector_env_pickled_before_reset() -> None:
    env = crafter_native.NativeCrafterVectorEnv(2, seed=4, num_threads=2, length=20)
    copy = pickle.loads(pickle.dumps(env))
    assert_identical(copy.reset(), env.reset())
    actions = np.random.default_rng(0).integers(0, 17, (30, 2))
    assert_identical(_vector_steps(copy, actions), _vector_steps(env, actions))


@pytest.mark.parametrize("num_threads", [1, 2])
def test_gym_vector_env_continues_identically(num_threads: int) -> None:
    n = 3
    rng = np.random.default_rng(7)
    env = crafter_gym.CrafterGymVectorEnv(n, num_threads=num_threads, seed=2, length=20)
    env.reset()
    _vector_steps(env, rng.integers(0, 17, (25, n)))
    blob = pickle.dumps(env)
    actions = rng.integers(0, 17, (45, n))
    expected = _vector_steps(env, actions)
    assert any("final_info" in info for *_, info in expected)
    restored = pickle.loads(blob)
    assert_identical(_vector_steps(restored, actions), expected)
    assert_identical(restored.render(), env.render())


# ---- bad blobs -------------------------------------------------------------------------------------


def _single_state(**kwargs: Any) -> dict[str, Any]:
    env = crafter_native.CrafterNative(seed=1, **kwargs)
    env.reset()
    for a in range(12):
        env.step(a)
    return env.__getstate__()


def _restore_single(state: dict[str, Any]) -> crafter_native.CrafterNative:
    env = crafter_native.CrafterNative.__new__(crafter_native.CrafterNative)
    env.__setstate__(state)
    return env


def _with_version(blob: bytes, version: int) -> bytes:
    return blob[:8] + struct.pack("<I", version) + blob[12:]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[: len(b) - 10], "truncated"),
        (lambda b: b[:15], "truncated"),
        (lambda b: b[:5], "bad magic"),
        (lambda b: b"garbage" * 20, "bad magic"),
        (lambda b: _with_version(b, 2), "version mismatch .*format version 2, this build reads version 1"),
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "checksum mismatch"),
        (lambda b: b + b"\0", "bytes after the end"),
    ],
)
def test_bad_single_blob_raises_a_clear_error(mutate: Any, message: str) -> None:
    state = _single_state()
    state["_engine_state"] = mutate(state["_engine_state"])
    with pytest.raises(ValueError, match=f"Crafter env state: .*{message}"):
        _restore_single(state)


def test_blob_of_another_kind_or_configuration_is_refused() -> None:
    state = _single_state(length=50)
    with pytest.raises(ValueError, match="configuration mismatch .*length 50.*length 10000"):
        _restore_single({**state, "_length": 10000})
    vec = crafter_native.NativeCrafterVectorEnv(2, seed=0, num_threads=1)
    vec.reset()
    vec_state = vec.__getstate__()
    with pytest.raises(ValueError, match="Crafter env state: not a saved state of this kind"):
        _restore_single({**state, "_engine_state": vec_state["_engine_state"]})
    other = crafter_native.NativeCrafterVectorEnv.__new__(crafter_native.NativeCrafterVectorEnv)
    with pytest.raises(
        ValueError, match="Crafter vector env state: num_envs mismatch .*2 envs, this one has 3"
    ):
        other.__setstate__({**vec_state, "num_envs": 3})
    with pytest.raises(ValueError, match="Crafter vector env state: .*checksum mismatch"):
        blob = vec_state["_engine_state"]
        other.__setstate__({**vec_state, "_engine_state": blob[:-1] + bytes([blob[-1] ^ 0xFF])})
    with pytest.raises(ValueError, match="Crafter vector env state: version mismatch"):
        other.__setstate__({**vec_state, "_engine_state": _with_version(vec_state["_engine_state"], 7)})


def test_failed_load_leaves_the_engine_as_it_was() -> None:
    env = crafter_native.CrafterNative(seed=2)
    env.reset()
    before = env._env.save_state()
    with pytest.raises(ValueError, match="truncated"):
        env._env.load_state(before[:-3])
    assert env._env.save_state() == before
