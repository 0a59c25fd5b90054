"""VectorEnv interface compliance for every backend, the auto-reset rule, validation and the factory."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from deltairis.envs import make_vector_env
from deltairis.envs.vector import OBS_SHAPE, SyncVectorEnv, VectorEnv, validate_actions


def _native_crafter_available() -> bool:
    try:
        from deltairis.envs.crafter_native import native_available
    except ImportError:
        return False
    return bool(native_available())


# (name, backend, options, steps): small limits so every backend finishes episodes within the run.
BACKENDS = [
    pytest.param("toy", "python", {"max_steps": 7}, 40, id="toy"),
    pytest.param("crafter", "python", {"length": 9}, 14, id="crafter-python"),
    pytest.param(
        "crafter",
        "native",
        {"length": 9},
        30,
        id="crafter-native",
        marks=pytest.mark.skipif(not _native_crafter_available(), reason="native Crafter engine not built"),
    ),
    pytest.param("atari", "python", {"max_episode_frames": 48}, 40, id="atari-python"),
    pytest.param("atari", "ale_vector", {"max_episode_frames": 48}, 40, id="atari-ale_vector"),
]


def _rollout(env: VectorEnv, seed: int, actions: np.ndarray) -> dict[str, list[Any]]:
    """Step ``env`` through ``actions`` (T, N) and check the interface at every step."""
    n = env.num_envs
    obs = env.reset(seed)
    assert obs.shape == (n, *OBS_SHAPE) and obs.dtype == np.uint8
    out: dict[str, list[Any]] = {"obs": [obs], "rew": [], "term": [], "trunc": [], "final_obs": [], "stats": []}
    ret = np.zeros(n, dtype=np.float64)
    length = np.zeros(n, dtype=np.int64)
    finished = 0
    for act in actions:
        obs, rew, term, trunc, info = env.step(act)
        assert obs.shape == (n, *OBS_SHAPE) and obs.dtype == np.uint8
        assert rew.shape == (n,) and rew.dtype == np.float32
        assert term.shape == (n,) and term.dtype == np.bool_
        assert trunc.shape == (n,) and trunc.dtype == np.bool_
        assert not np.any(term & trunc), "a step cannot be both terminated and truncated"
        assert info["final_obs"].shape == (n, *OBS_SHAPE) and info["final_obs"].dtype == np.uint8
        assert info["episode_return"].dtype == np.float64 and info["episode_length"].dtype == np.int64
        assert len(info["final_info"]) == n
        ret += rew
        length += 1
        done = term | trunc
        for i in range(n):
            if done[i]:
                assert info["episode_return"][i] == pytest.approx(ret[i])
                assert info["episode_length"][i] == length[i]
                assert isinstance(info["final_info"][i], dict)
                ret[i] = 0.0
                length[i] = 0
                finished += 1
            else:
                assert info["episode_return"][i] == 0.0 and info["episode_length"][i] == 0
                assert info["final_info"][i] is None
                assert not info["final_obs"][i].any()
        out["obs"].append(obs)
        out["rew"].append(rew)
        out["term"].append(term)
        out["trunc"].append(trunc)
        out["final_obs"].append(info["final_obs"])
        out["stats"].append((info["episode_return"], info["episode_length"]))
    assert finished > 0, "the run must finish episodes to exercise auto-reset"
    return out


@pytest.mark.parametrize("name,backend,options,steps", BACKENDS)
def test_backend_compliance_and_determinism(name: str, backend: str, options: dict, steps: int) -> None:
    env = make_vector_env(name, 2, seed=3, backend=backend, **options)
    try:
        assert env.num_envs == 2
        assert env.num_actions == len(env.action_names) > 1
        actions = np.random.default_rng(0).integers(env.num_actions, size=(steps, 2))
        first = _rollout(env, 11, actions)
        second = _rollout(env, 11, actions)  # reset(seed) alone must reproduce the run
    finally:
        env.close()
    for key in first:
        for a, b in zip(first[key], second[key], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}/{backend}: {key} differs between seeded runs")
    if name == "crafter":
        # Auto-reset: the observation returned at an episode end starts a new world, the last frame
        # of the finished episode is in final_obs.
        done_t, done_i = np.nonzero(np.stack(first["trunc"]) | np.stack(first["term"]))
        for t, i in zip(done_t, done_i, strict=True):
            assert not np.array_equal(first["final_obs"][t][i], first["obs"][t + 1][i])


@pytest.mark.parametrize("name,backend,options,steps", BACKENDS)
def test_bad_actions_are_rejected(name: str, backend: str, options: dict, steps: int) -> None:
    env = make_vector_env(name, 2, seed=0, backend=backend, **options)
    try:
        env.reset()
        n = env.num_actions
        with pytest.raises(ValueError, match="integer dtype"):
            env.step(np.zeros(2, dtype=np.float32))
        with pytest.raises(ValueError, match="integer dtype"):
            env.step(np.zeros(2, dtype=bool))
        with pytest.raises(ValueError, match=r"shape \(2,\)"):
            env.step(np.zeros(3, dtype=np.int64))
        with pytest.raises(ValueError, match=r"shape \(2,\)"):
            env.step(np.zeros((2, 1), dtype=np.int64))
        with pytest.raises(ValueError, match=rf"\[0, {n}\).*got action {n}"):
            env.step(np.array([0, n], dtype=np.int64))
        with pytest.raises(ValueError, match="got action -1"):
            env.step(np.array([-1, 0], dtype=np.int32))
        with pytest.raises(ValueError, match="seed must be"):
            env.reset(1.5)  # type: ignore[arg-type]
        if backend != "native":  # the native engine accepts negative seeds like crafter.Env does
            with pytest.raises(ValueError, match="seed must be a non-negative int"):
                env.reset(-3)
        obs, *_ = env.step(np.array([0, n - 1], dtype=np.int32))  # still usable, int32 accepted
        assert obs.shape == (2, *OBS_SHAPE)
    finally:
        env.close()


def test_different_seeds_give_different_episodes() -> None:
    # Crafter's per-env seeds are checked against crafter.Env itself in test_crafter_python.py.
    env = make_vector_env("toy", 2, seed=0)
    try:
        a = env.reset(0)
        b = env.reset(1)
    finally:
        env.close()
    assert not np.array_equal(a[0], a[1]), "env i is seeded with seed + i"
    np.testing.assert_array_equal(a[1], b[0])  # seed 0 + 1 == seed 1 + 0


def test_validate_actions_returns_int64_copy() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 3, 17):
        acts = rng.integers(5, size=n).astype(np.uint8)
        out = validate_actions(acts, n, 5)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, acts)
        np.testing.assert_array_equal(validate_actions(acts.tolist(), n, 5), acts)
    with pytest.raises(ValueError, match="got action 5"):
        validate_actions(np.array([5], dtype=np.uint8), 1, 5)


class _ScriptedEnv:
    """Episode k of this env lasts k + 2 steps; obs encode (episode, t); reward = t; even episodes truncate."""

    action_names = ["a", "b", "c"]

    def __init__(self) -> None:
        self.episode = -1
        self.t = 0
        self.seed: int | None = None
        self.closed = False

    def _obs(self) -> np.ndarray:
        return np.full(OBS_SHAPE, 10 * (self.episode + 1) + self.t, dtype=np.uint8)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.seed = seed
            self.episode = -1
        self.episode += 1
        self.t = 0
        return self._obs()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        self.t += 1
        done = self.t >= self.episode + 2
        return self._obs(), float(self.t) + 0.5 * action, done, {"truncated": done and self.episode % 2 == 0}

    def close(self) -> None:
        self.closed = True


def test_sync_vector_env_auto_reset_rule() -> None:
    env = SyncVectorEnv([_ScriptedEnv, _ScriptedEnv], seed=5)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(2, dtype=np.int64))
    obs = env.reset()
    assert [e.seed for e in env.envs] == [5, 6]  # type: ignore[attr-defined]
    assert obs[:, 0, 0, 0].tolist() == [10, 10]
    acts = np.array([1, 2], dtype=np.int64)
    # Step 1: nobody done. Step 2: episode 0 (2 steps) ends in both envs and is truncated.
    obs, rew, term, trunc, info = env.step(acts)
    assert rew.tolist() == [1.5, 2.0] and not (term | trunc).any()
    obs, rew, term, trunc, info = env.step(acts)
    assert trunc.tolist() == [True, True] and not term.any()
    assert info["final_obs"][:, 0, 0, 0].tolist() == [12, 12]  # last obs of episode 0
    assert obs[:, 0, 0, 0].tolist() == [20, 20]  # first obs of episode 1
    assert info["episode_return"].tolist() == [1.5 + 2.5, 2.0 + 3.0]
    assert info["episode_length"].tolist() == [2, 2]
    assert info["final_info"] == [{"truncated": True}, {"truncated": True}]
    # Episode 1 lasts 3 steps and terminates (odd episode).
    for _ in range(2):
        obs, rew, term, trunc, info = env.step(acts)
        assert not (term | trunc).any() and info["final_info"] == [None, None]
    obs, rew, term, trunc, info = env.step(acts)
    assert term.tolist() == [True, True] and not trunc.any()
    assert info["final_obs"][:, 0, 0, 0].tolist() == [23, 23]
    assert obs[:, 0, 0, 0].tolist() == [30, 30]
    assert info["episode_length"].tolist() == [3, 3]
    env.close()
    assert all(e.closed for e in env.envs)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="closed"):
        env.step(acts)


def test_sync_vector_env_needs_an_env() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        SyncVectorEnv([])


def test_factory_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown env name 'pong'"):
        make_vector_env("pong", 1)
    with pytest.raises(ValueError, match="unknown backend 'native' for env 'atari'"):
        make_vector_env("atari", 1, backend="native")
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env("toy", 0)
    with pytest.raises(ValueError, match="seed"):
        make_vector_env("toy", 1, seed=-1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['lenght'\]"):
        make_vector_env("crafter", 1, backend="python", lenght=10)
    with pytest.raises(ValueError, match="max_steps"):
        make_vector_env("toy", 1, max_steps=0)
    with pytest.raises(ValueError, match="'view' must be"):
        make_vector_env("crafter", 1, backend="python", view=(7, 7))


class _FakeNative(VectorEnv):
    def __init__(self, num_envs: int, seed: int, num_threads: int | None, **kwargs: Any) -> None:
        self.args = (num_envs, seed, num_threads, kwargs)
        self.num_envs = num_envs
        self.num_actions = 17
        self.action_names = ["x"] * 17

    def reset(self, seed: int | None = None) -> np.ndarray:
        return np.zeros((self.num_envs, *OBS_SHAPE), dtype=np.uint8)

    def step(self, actions: np.ndarray) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_crafter_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    from deltairis.envs.crafter_python import CrafterPythonVectorEnv

    # Native module missing: "auto" falls back to Python, "native" raises naming the reason.
    monkeypatch.setitem(sys.modules, "deltairis.envs.crafter_native", None)
    env = make_vector_env("crafter", 1, backend="auto", length=5)
    assert isinstance(env, CrafterPythonVectorEnv)
    env.close()
    with pytest.raises(RuntimeError, match="'native' is not available.*crafter_native"):
        make_vector_env("crafter", 1, backend="native")
    # Native module present: "auto" and "native" use it, with the documented constructor arguments.
    fake = types.ModuleType("deltairis.envs.crafter_native")
    fake.NativeCrafterVectorEnv = _FakeNative  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deltairis.envs.crafter_native", fake)
    for backend in ("auto", "native"):
        env = make_vector_env("crafter", 3, seed=7, backend=backend, num_threads=2, length=100)
        assert isinstance(env, _FakeNative) and env.args == (3, 7, 2, {"length": 100})
    # Module present but the extension lacks the engine: "auto" falls back.
    fake.native_available = lambda: False  # type: ignore[attr-defined]
    assert isinstance(make_vector_env("crafter", 1, backend="auto", length=5), CrafterPythonVectorEnv)
    with pytest.raises(RuntimeError, match="no native Crafter engine"):
        make_vector_env("crafter", 1, backend="native")


def test_atari_auto_backend_is_the_reference_path() -> None:
    # The faithful default: the reference preprocessing; ALE's vector env only when asked for.
    from deltairis.envs.atari import AleVectorEnv, AtariPythonVectorEnv

    env = make_vector_env("atari", 1, backend="auto")
    assert isinstance(env, AtariPythonVectorEnv)
    env.close()
    env = make_vector_env("atari", 1, backend="ale_vector")
    assert isinstance(env, AleVectorEnv)
    env.close()
