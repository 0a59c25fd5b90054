"""The native Crafter vector stepper: equal to N independent single envs, thread-count invariant, strict inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deltairis.envs import crafter_native

pytestmark = pytest.mark.skipif(
    not crafter_native.native_available(), reason="deltairis._core was built without native Crafter"
)


def _run_vector(
    num_envs: int, seed: int, steps: int, num_threads: int, length: int, action_seed: int = 0
) -> list[Any]:
    rng = np.random.default_rng(action_seed)
    env = crafter_native.NativeCrafterVectorEnv(num_envs, seed=seed, num_threads=num_threads, length=length)
    out: list[Any] = [env.reset()]
    for _ in range(steps):
        out.append(env.step(rng.integers(0, env.num_actions, num_envs)))
    env.close()
    return out


def _single_reference(num_envs: int, seed: int, steps: int, length: int, action_seed: int = 0) -> list[Any]:
    """The same run with independent CrafterNative envs and the VectorEnv auto-reset rule written out."""
    rng = np.random.default_rng(action_seed)
    envs = [crafter_native.CrafterNative(seed=seed + i, length=length) for i in range(num_envs)]
    out: list[Any] = [np.stack([e.reset() for e in envs])]
    returns = np.zeros(num_envs)
    lengths = np.zeros(num_envs, np.int64)
    for _ in range(steps):
        actions = rng.integers(0, 17, num_envs)
        obs = np.zeros((num_envs, 64, 64, 3), np.uint8)
        rew = np.zeros(num_envs, np.float32)
        term = np.zeros(num_envs, bool)
        trunc = np.zeros(num_envs, bool)
        info: dict[str, Any] = {
            "final_obs": np.zeros((num_envs, 64, 64, 3), np.uint8),
            "episode_return": np.zeros(num_envs),
            "episode_length": np.zeros(num_envs, np.int64),
            "final_info": [None] * num_envs,
        }
        for i, env in enumerate(envs):
            o, r, done, inf = env.step(int(actions[i]))
            rew[i] = r
            returns[i] += float(np.float32(r))
            lengths[i] += 1
            if done:
                term[i] = inf["discount"] == 0
                trunc[i] = not term[i]
                info["final_obs"][i] = o
                info["episode_return"][i] = returns[i]
                info["episode_length"][i] = lengths[i]
                info["final_info"][i] = inf
                returns[i], lengths[i] = 0.0, 0
                o = env.reset()
            obs[i] = o
        out.append((obs, rew, term, trunc, info))
    return out


def _assert_same(a: list[Any], b: list[Any]) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    for t, (x, y) in enumerate(zip(a[1:], b[1:])):
        for k in range(4):
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"step {t + 1} output {k}")
        assert x[1].dtype == np.float32 and x[2].dtype == bool and x[3].dtype == bool
        for key in ("final_obs", "episode_return", "episode_length"):
            np.testing.assert_array_equal(x[4][key], y[4][key], err_msg=f"step {t + 1} {key}")
        for i, (fa, fb) in enumerate(zip(x[4]["final_info"], y[4]["final_info"])):
            assert (fa is None) == (fb is None), (t, i)
            if fa is not None:
                assert fa.keys() == fb.keys()
                for key in fa:
                    np.testing.assert_array_equal(fa[key], fb[key], err_msg=f"step {t + 1} env {i} {key}")


def test_vector_equals_independent_single_envs() -> None:
    # length 150 forces truncations; random play also dies before it, so both auto-reset paths run.
    vec = _run_vector(6, seed=21, steps=450, num_threads=2, length=150)
    ref = _single_reference(6, seed=21, steps=450, length=150)
    _assert_same(vec, ref)
    terminated = sum(int(s[2].sum()) for s in vec[1:])
    truncated = sum(int(s[3].sum()) for s in vec[1:])
    assert terminated > 0 and truncated > 0


@pytest.mark.parametrize("num_envs", [1, 3, 8])
def test_same_results_for_any_thread_count(num_envs: int) -> None:
    runs = [
        _run_vector(num_envs, seed=5, steps=150, num_threads=t, length=80, action_seed=3) for t in (1, 2, 4)
    ]
    _assert_same(runs[0], runs[1])
    _assert_same(runs[0], runs[2])


def test_reset_seed_and_reset_none() -> None:
    env = crafter_native.NativeCrafterVectorEnv(3, seed=0, num_threads=2)
    first = env.reset(seed=40)
    singles = [crafter_native.CrafterNative(seed=40 + i) for i in range(3)]
    np.testing.assert_array_equal(first, np.stack([s.reset() for s in singles]))
    # reset(None) continues each env's own episode counter, like crafter.Env.reset().
    np.testing.assert_array_equal(env.reset(), np.stack([s.reset() for s in singles]))
    # The first reset without a seed uses the constructor's seed.
    other = crafter_native.NativeCrafterVectorEnv(2, seed=40, num_threads=1)
    np.testing.assert_array_equal(other.reset(), first[:2])


@pytest.mark.parametrize(
    ("actions", "match"),
    [
        (np.zeros(4, np.float32), "dtype"),
        (np.zeros(4, bool), "dtype"),
        (np.zeros((4, 1), np.int64), "shape"),
        (np.zeros(3, np.int64), "shape"),
        (np.array([0, 1, 17, 2]), "17"),
        (np.array([0, -1, 0, 2]), "-1"),
    ],
)
def test_bad_actions(actions: np.ndarray, match: str) -> None:
    env = crafter_native.NativeCrafterVectorEnv(4, seed=0, num_threads=1)
    env.reset()
    with pytest.raises(ValueError, match=match):
        env.step(actions)


def test_step_before_reset_and_bad_arguments() -> None:
    env = crafter_native.NativeCrafterVectorEnv(2, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.int64))
    for kwargs, match in (
        ({"num_envs": 0}, "num_envs"),
        ({"num_envs": 2, "num_threads": 0}, "num_threads"),
        ({"num_envs": 2, "seed": 1.5}, "seed"),
        ({"num_envs": 2, "length": -3}, "length"),
    ):
        with pytest.raises(ValueError, match=match):
            crafter_native.NativeCrafterVectorEnv(**kwargs)


def test_core_buffers_are_validated() -> None:
    """The binding names the buffer whose dtype or shape is wrong."""
    core = crafter_native._native.require_core()
    assets = crafter_native._assets((64, 64), (9, 9), (64, 64), True, 10000)
    vec = core.CrafterVectorEnv(assets, 2, 1)
    obs = np.zeros((2, 64, 64, 3), np.uint8)
    vec.reset(None, obs)
    good = {
        "obs": obs,
        "reward": np.zeros(2, np.float32),
        "terminated": np.zeros(2, bool),
        "truncated": np.zeros(2, bool),
        "final_obs": np.zeros((2, 64, 64, 3), np.uint8),
        "episode_return": np.zeros(2),
        "episode_length": np.zeros(2, np.int64),
        "final_inventory": np.zeros((2, 16), np.int32),
        "final_achievements": np.zeros((2, 22), np.int32),
        "final_semantic": np.zeros((2, 64, 64), np.uint8),
        "final_player_pos": np.zeros((2, 2), np.int64),
        "final_discount": np.zeros(2),
        "final_reward": np.zeros(2),
    }
    vec.step(np.zeros(2, np.int64), **good)
    for key, bad in (
        ("reward", np.zeros(2, np.float64)),
        ("obs", np.zeros((2, 64, 64), np.uint8)),
        ("final_semantic", np.zeros((2, 64, 63), np.uint8)),
        ("final_inventory", np.zeros((2, 16), np.int64)),
    ):
        with pytest.raises(ValueError, match=key):
            vec.step(np.zeros(2, np.int64), **{**good, key: bad})
    with pytest.raises(ValueError, match="C-contiguous"):
        vec.step(np.zeros(2, np.int64), **{**good, "final_obs": np.zeros((2, 64, 64, 6), np.uint8)[..., ::2]})
    with pytest.raises(ValueError, match="seeds"):
        vec.reset(np.zeros(3, np.int64), obs)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_core_step_all_infos_flag(num_threads: int) -> None:
    """Without all_infos (the default, NativeCrafterVectorEnv's step) the final_* info rows are written only
    where an episode ended and the others are left untouched; with all_infos=True every row holds the info
    a single env returns for that step (a running env's state after the step)."""
    core = crafter_native._native.require_core()
    n, length = 3, 6
    assets = crafter_native._assets((64, 64), (9, 9), (64, 64), True, length)
    vec = core.CrafterVectorEnv(assets, n, num_threads)
    obs = np.zeros((n, 64, 64, 3), np.uint8)
    vec.reset(np.arange(n, dtype=np.int64) + 20, obs)
    singles = [crafter_native.CrafterNative(seed=20 + i, length=length) for i in range(n)]
    for env in singles:
        env.reset()
    items, achievements = list(assets.item_names), list(assets.achievement_names)
    rng = np.random.default_rng(4)
    sentinel = {
        "final_inventory": (np.int32, (n, len(items)), -7),
        "final_achievements": (np.int32, (n, len(achievements)), -7),
        "final_semantic": (np.uint8, (n, 64, 64), 251),
        "final_player_pos": (np.int64, (n, 2), -7),
        "final_discount": (np.float64, (n,), -7.0),
        "final_reward": (np.float64, (n,), -7.0),
    }
    seen = {"done_flag_off": 0, "running_flag_off": 0, "done_flag_on": 0, "running_flag_on": 0}
    for t in range(20):
        all_infos = t % 4 in (1, 2)  # episode ends (every 6th step) with and without the flag
        actions = rng.integers(0, 17, n)
        bufs = {k: np.full(shape, fill, dtype) for k, (dtype, shape, fill) in sentinel.items()}
        terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
        kwargs = {"all_infos": True} if all_infos else {}  # the default is the training collector's path
        vec.step(
            actions.astype(np.int64),
            obs,
            np.zeros(n, np.float32),
            terminated,
            truncated,
            np.zeros_like(obs),
            np.zeros(n),
            np.zeros(n, np.int64),
            *bufs.values(),
            **kwargs,
        )
        for i, env in enumerate(singles):
            _, _, done, info = env.step(int(actions[i]))
            assert done == bool(terminated[i] | truncated[i])
            expected = {
                "final_inventory": [info["inventory"][k] for k in items],
                "final_achievements": [info["achievements"][k] for k in achievements],
                "final_semantic": info["semantic"],
                "final_player_pos": info["player_pos"],
                "final_discount": info["discount"],
                "final_reward": info["reward"],
            }
            for key, value in expected.items():
                if done or all_infos:
                    np.testing.assert_array_equal(bufs[key][i], value, err_msg=f"step {t} env {i} {key}")
                else:
                    assert (bufs[key][i] == sentinel[key][2]).all(), (
                        f"step {t} env {i}: {key} row was written"
                    )
            seen[f"{'done' if done else 'running'}_flag_{'on' if all_infos else 'off'}"] += 1
            if done:
                env.reset()
    assert min(seen.values()) > 0, seen


def test_factory_routes_native_backend() -> None:
    from deltairis.envs import make_vector_env

    env = make_vector_env("crafter", 2, seed=3, backend="native", num_threads=2, length=20)
    assert isinstance(env, crafter_native.NativeCrafterVectorEnv)
    np.testing.assert_array_equal(env.reset()[1], crafter_native.CrafterNative(seed=4).reset())
    env.close()


class _ReferenceVector:
    """Independent CrafterNative envs behind the vector interface (auto-reset rule written out)."""

    def __init__(self, num_envs: int, length: int) -> None:
        self.num_envs, self.length = num_envs, length
        self.envs: list[crafter_native.CrafterNative] = []
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, np.int64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.envs = [
                crafter_native.CrafterNative(seed=seed + i, length=self.length) for i in range(self.num_envs)
            ]
        self.returns[:] = 0.0
        self.lengths[:] = 0
        return np.stack([e.reset() for e in self.envs])

    def step(self, actions: np.ndarray) -> tuple[Any, ...]:
        n = self.num_envs
        obs = np.zeros((n, 64, 64, 3), np.uint8)
        rew = np.zeros(n, np.float32)
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        info: dict[str, Any] = {
            "final_obs": np.zeros((n, 64, 64, 3), np.uint8),
            "episode_return": np.zeros(n),
            "episode_length": np.zeros(n, np.int64),
            "final_info": [None] * n,
        }
        for i, env in enumerate(self.envs):
            o, r, done, inf = env.step(int(actions[i]))
            rew[i] = r
            self.returns[i] += float(np.float32(r))
            self.lengths[i] += 1
            if done:
                term[i] = inf["discount"] == 0
                trunc[i] = not term[i]
                info["final_obs"][i] = o
                info["episode_return"][i] = self.returns[i]
                info["episode_length"][i] = self.lengths[i]
                info["final_info"][i] = inf
                self.returns[i], self.lengths[i] = 0.0, 0
                o = env.reset()
            obs[i] = o
        return obs, rew, term, trunc, info


def _script(env: Any, num_envs: int, steps: int, action_seed: int) -> list[Any]:
    """reset(seed=3), steps, reset() (next episodes), steps, reset(seed=11), steps: every output recorded."""
    rng = np.random.default_rng(action_seed)
    third = steps // 3
    out: list[Any] = [env.reset(seed=3)]
    for t in range(steps):
        if t == third:
            out.append(env.reset())
        elif t == 2 * third:
            out.append(env.reset(seed=11))
        out.append(env.step(rng.integers(0, 17, num_envs)))
    return out


def _assert_same_script(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for t, (x, y) in enumerate(zip(a, b)):
        if isinstance(x, np.ndarray):  # an obs from reset
            np.testing.assert_array_equal(x, y, err_msg=f"entry {t}: reset obs")
        else:
            _assert_same([x[0], x], [y[0], y])


@pytest.mark.parametrize("num_threads", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [3, 9, 40])
def test_many_resets_equal_independent_envs(num_threads: int, length: int) -> None:
    """Short episodes: almost every step ends episodes, so spares are taken ready, waited for, built inline
    and re-queued all the time; reset() and reset(seed) in the middle drop or consume them."""
    num_envs, steps = 5, 90
    vec = crafter_native.NativeCrafterVectorEnv(num_envs, seed=0, num_threads=num_threads, length=length)
    got = _script(vec, num_envs, steps, action_seed=length)
    ref = _script(_ReferenceVector(num_envs, length), num_envs, steps, action_seed=length)
    _assert_same_script(got, ref)
    ends = sum(int((s[2] | s[3]).sum()) for s in got if not isinstance(s, np.ndarray))
    counts = vec.reset_counts
    # One served start per episode end, plus the reset() in the middle (reset(seed) starts fresh engines).
    assert sum(counts.values()) == ends + num_envs
    assert vec.background_resets == (num_threads > 1)
    if num_threads == 1:
        assert counts["ready"] == 0 and counts["waited"] == 0
    vec.close()


@pytest.mark.parametrize("num_threads", [2, 3])
def test_background_resets_are_used(num_threads: int) -> None:
    """With time between episode ends, the next episodes are ready when they are needed."""
    import time

    num_envs = 4
    vec = crafter_native.NativeCrafterVectorEnv(num_envs, seed=2, num_threads=num_threads, length=25)
    vec.reset()
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(100):
        time.sleep(0.001)  # room for the workers even on a loaded machine
        _, _, term, trunc, _ = vec.step(rng.integers(0, 17, num_envs))
        ends += int((term | trunc).sum())
    counts = vec.reset_counts
    assert sum(counts.values()) == ends
    assert counts["ready"] > ends // 2, counts


def test_many_envs_many_threads_long_run() -> None:
    """More envs than a batch of blocks, deaths and truncations mixed, 1 vs 4 threads, every output."""
    runs = [_run_vector(13, seed=9, steps=160, num_threads=t, length=17, action_seed=5) for t in (1, 4)]
    _assert_same(runs[0], runs[1])


def test_drop_without_close_with_builds_pending() -> None:
    """Destroying the vector env right after a step that queued many spares neither hangs nor crashes."""
    for _ in range(5):
        vec = crafter_native.NativeCrafterVectorEnv(16, seed=0, num_threads=3, length=1)
        vec.reset()
        vec.step(np.zeros(16, np.int64))  # every env ends its episode: 16 builds queued
        del vec
