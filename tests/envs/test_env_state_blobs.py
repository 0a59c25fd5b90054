"""Env states as versioned data (issue 25): a blob restores an env built with the same settings, which then
continues byte for byte; a blob of another version, of another env, damaged, or a pickle is refused by name
and nothing in it runs."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from identical import assert_identical

from deltairis.envs import crafter_native
from deltairis.envs.state_blob import (
    ENV_STATE_VERSION,
    MAGIC,
    EnvStateError,
    pack_env_state,
    read_env_state,
    restore_env_state,
)
from deltairis.envs.toy import ToyVectorEnv


def _steps(env: Any, actions: np.ndarray) -> list[Any]:
    return [env.step(a) for a in actions]


def _continues_identically(make: Any, before: int, after: int, num_actions: int, n: int = 2) -> None:
    """Step ``before``, pack, step ``after`` more; a fresh env (stepped elsewhere first) restored from
    the blob steps exactly the same ``after`` steps."""
    rng = np.random.default_rng(before)
    env = make()
    env.reset()
    _steps(env, rng.integers(0, num_actions, (before, n)))
    blob = pack_env_state(env)
    actions = rng.integers(0, num_actions, (after, n))
    expected = _steps(env, actions)
    other = make()
    other.reset(12345)  # a different history: everything must come from the blob
    _steps(other, rng.integers(0, num_actions, (3, n)))
    restore_env_state(other, blob, "the test blob")
    assert_identical(_steps(other, actions), expected)
    assert_identical(other.reset(), env.reset())
    env.close()
    other.close()


@pytest.mark.parametrize("before", [0, 37])
def test_toy_env_continues_identically(before: int) -> None:
    _continues_identically(lambda: ToyVectorEnv(2, seed=4, max_steps=9, grid=3), before, 40, 5)


@pytest.mark.skipif(not crafter_native.native_available(), reason="no native Crafter")
@pytest.mark.parametrize("threads", [1, 2])
def test_native_crafter_continues_identically(threads: int) -> None:
    make = lambda: crafter_native.NativeCrafterVectorEnv(2, seed=7, num_threads=threads, length=30)
    _continues_identically(make, 41, 45, 17)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


def test_python_crafter_continues_identically() -> None:
    """The Python fallback: its world, objects, generator and counters come back. Crafter itself picks
    which creature of a chunk despawns (every 10th step) in memory-address order, so the continuation
    stays between two balancing steps (steps 12 to 19 of the episode)."""
    pytest.importorskip("crafter")
    from deltairis.envs.crafter_python import CrafterPythonVectorEnv

    env = CrafterPythonVectorEnv(1, seed=3, length=40)
    env.reset()
    rng = np.random.default_rng(0)
    _steps(env, rng.integers(0, 17, (11, 1)))
    blob = pack_env_state(env)
    actions = rng.integers(0, 17, (8, 1))
    expected = _steps(env, actions)
    other = CrafterPythonVectorEnv(1, seed=8, length=40)
    other.reset()
    restore_env_state(other, blob, "the test blob")
    assert _same(read_env_state(pack_env_state(other), "x")[1], read_env_state(blob, "x")[1])
    assert_identical(_steps(other, actions), expected)
    assert _same(read_env_state(pack_env_state(other), "x")[1], read_env_state(pack_env_state(env), "x")[1])


def test_atari_reference_path_continues_identically() -> None:
    pytest.importorskip("ale_py")
    from deltairis.envs.atari import AtariPythonVectorEnv

    make = lambda: AtariPythonVectorEnv(2, seed=5, train=True, max_episode_frames=240)
    _continues_identically(make, 60, 110, 4)


def test_a_blob_is_plain_data_with_its_kind_and_version() -> None:
    env = ToyVectorEnv(2, seed=1)
    env.reset()
    blob = pack_env_state(env)
    assert blob.startswith(MAGIC) and struct.unpack_from("<I", blob, len(MAGIC))[0] == ENV_STATE_VERSION
    kind, state = read_env_state(blob, "x")
    assert kind == "toy" and state["num_envs"] == 2 and state["envs"][0]["grid"] == 4


class _Marker:
    """A pickle that would create a file when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def _damaged(blob: bytes) -> bytes:
    out = bytearray(blob)
    out[-10] ^= 0xFF
    return bytes(out)


def _other_version(blob: bytes) -> bytes:
    return blob[: len(MAGIC)] + struct.pack("<I", ENV_STATE_VERSION + 1) + blob[len(MAGIC) + 4 :]


def _other_kind(blob: bytes) -> bytes:
    head = len(MAGIC) + 6
    n = struct.unpack_from("<H", blob, len(MAGIC) + 4)[0]
    payload = blob[head + n + 32 :]
    return (
        blob[: len(MAGIC) + 4] + struct.pack("<H", 4) + b"tyo!" + hashlib.sha256(payload).digest() + payload
    )


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_damaged, "the saved env state is damaged"),
        (_other_version, rf"format version {ENV_STATE_VERSION + 1}"),
        (_other_kind, "state of a 'tyo!' env, but this run's env is 'toy'"),
        (lambda b: b[: len(b) // 2], "damaged"),
        (lambda b: b"", "not a delta-iris env state"),
    ],
)
def test_bad_blobs_are_refused_by_name(spoil: Any, message: str) -> None:
    env = ToyVectorEnv(2, seed=1)
    env.reset()
    blob = pack_env_state(env)
    with pytest.raises(EnvStateError, match=message):
        restore_env_state(env, spoil(blob), "the saved env state")


def test_a_pickle_in_place_of_a_blob_is_refused_and_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    env = ToyVectorEnv(2, seed=1)
    env.reset()
    for crafted in (pickle.dumps(_Marker(marker)), pickle.dumps(env)):
        with pytest.raises(EnvStateError, match="the saved env state is not a delta-iris env state"):
            restore_env_state(env, crafted, "the saved env state")
    assert not marker.exists()
