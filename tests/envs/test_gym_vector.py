"""``deltairis/Crafter-v1`` through ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``:
the native C++ stepper as a gymnasium ``VectorEnv``, checked step for step against gymnasium's own
``SyncVectorEnv`` over single ``deltairis/Crafter-v1`` envs (``autoreset_mode=SAME_STEP``)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
crafter_native = pytest.importorskip("deltairis.envs.crafter_native")
if not crafter_native.native_available():
    pytest.skip("deltairis._core was built without the native Crafter engine", allow_module_level=True)

from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.vector import AutoresetMode

from deltairis.envs import crafter_gym

ID = crafter_gym.GYM_ID
# The crafter infos a single env returns at every step (batched at the top level for running envs).
PER_STEP_KEYS = ("inventory", "achievements", "discount", "semantic", "player_pos", "reward")


@pytest.fixture(autouse=True)
def _registered() -> None:
    crafter_gym.register_gymnasium()


def make_native(num_envs: int, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. make_vec's "missing AutoresetMode metadata" warning
        return gym.make_vec(ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)


def make_sync(num_envs: int, **kwargs: Any) -> Any:
    return gym.make_vec(
        ID,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **kwargs,
    )


def assert_same_step(a: tuple, b: tuple, where: str) -> None:
    names = ("obs", "reward", "terminated", "truncated")
    for name, x, y in zip(names, a[:4], b[:4]):
        assert x.dtype == y.dtype and x.shape == y.shape, (
            f"{where}: {name} {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        )
        np.testing.assert_array_equal(x, y, err_msg=f"{where}: {name}")
    info_a, info_b = a[4], b[4]
    assert list(info_a) == list(info_b), f"{where}: info keys {list(info_a)} vs {list(info_b)}"
    for key in info_b:  # key by key first, for a message naming the key
        assert data_equivalence(info_a[key], info_b[key], exact=True), f"{where}: info[{key!r}] differs"
    assert data_equivalence(info_a, info_b, exact=True), f"{where}: infos differ"


def run_side_by_side(native: Any, sync: Any, steps: int, policy, seed: int) -> dict[str, int]:
    """Step both envs with the same actions; returns how many episode ends of each kind were seen."""
    obs_n, info_n = native.reset(seed=seed)
    obs_s, info_s = sync.reset(seed=seed)
    np.testing.assert_array_equal(obs_n, obs_s)
    assert info_n == info_s == {}
    rng = np.random.default_rng(seed)
    counts = {
        "terminated": 0,
        "truncated": 0,
        "final_info_rows": 0,
        "running_info_steps": 0,
        "mixed_steps": 0,
    }
    for t in range(steps):
        actions = policy(rng, native.num_envs)
        a = native.step(actions)
        b = sync.step(actions)
        assert_same_step(a, b, f"step {t}")
        counts["terminated"] += int(a[2].sum())
        counts["truncated"] += int(a[3].sum())
        done = a[2] | a[3]
        if not done.all():  # every running env has its step info at the top level, the others none
            for key in PER_STEP_KEYS:
                np.testing.assert_array_equal(a[4][f"_{key}"], ~done, err_msg=f"step {t}: _{key}")
            counts["running_info_steps"] += 1
        else:
            assert not any(key in a[4] for key in PER_STEP_KEYS)
        if done.any() and not done.all():
            counts["mixed_steps"] += 1
        if "final_info" in a[4]:
            np.testing.assert_array_equal(a[4]["_final_obs"], done)
            np.testing.assert_array_equal(a[4]["_final_info"], done)
            assert all((x is None) != bool(d) for x, d in zip(a[4]["final_obs"], done))
            counts["final_info_rows"] += int(done.sum())
        else:
            assert not (a[2] | a[3]).any()
    return counts


def random_policy(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 17, size=n)


def mostly_noop_policy(rng: np.random.Generator, n: int) -> np.ndarray:
    # Standing still starves the player and lets zombies in at night: deaths within ~200 steps.
    return np.where(rng.random(n) < 0.85, 0, rng.integers(0, 17, size=n))


def test_make_vec_builds_the_native_vector_env_with_gymnasium_metadata_and_spaces() -> None:
    env = make_native(3, length=20)
    sync = make_sync(3, length=20)
    try:
        assert isinstance(env, gym.vector.VectorEnv) and isinstance(env, crafter_gym.CrafterGymVectorEnv)
        assert env.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        assert env.metadata["render_fps"] > 0 and "rgb_array" in env.metadata["render_modes"]
        assert env.metadata == sync.metadata  # SyncVectorEnv: the single env's metadata + its autoreset mode
        single = gym.make(ID, length=20)
        assert (
            env.single_observation_space
            == single.observation_space
            == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        )
        assert env.single_action_space == single.action_space == gym.spaces.Discrete(17)
        assert (
            env.observation_space
            == sync.observation_space
            == gym.spaces.Box(0, 255, (3, 64, 64, 3), np.uint8)
        )
        assert env.action_space == sync.action_space == gym.spaces.MultiDiscrete([17, 17, 17])
        assert env.num_envs == 3 and env.spec.id == ID and env.spec.kwargs["length"] == 20
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert (reward.dtype, terminated.dtype, truncated.dtype) == (np.float64, np.bool_, np.bool_)
        assert reward.shape == terminated.shape == truncated.shape == (3,)
        # The default vectorization of an id with a vector entry point is that entry point.
        default = gym.make_vec(ID, num_envs=2)
        assert isinstance(default, crafter_gym.CrafterGymVectorEnv)
        default.close()
    finally:
        env.close()
        sync.close()


def test_single_env_passes_gymnasiums_env_checker() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(ID, length=50, render_mode="rgb_array").unwrapped)


@pytest.mark.parametrize(
    ("kwargs", "steps", "policy", "expect"),
    [
        ({"length": 25}, 90, random_policy, "truncated"),
        ({"length": 400}, 260, mostly_noop_policy, "terminated"),
        ({"length": 20, "reward": False, "size": (48, 32), "area": (24, 24)}, 50, random_policy, "truncated"),
    ],
    ids=["truncations", "deaths", "no-reward-small"],
)
def test_steps_like_sync_vector_env_step_for_step(kwargs: dict, steps: int, policy, expect: str) -> None:
    n = 4
    native = make_native(n, **kwargs)
    sync = make_sync(n, **kwargs)
    try:
        counts = run_side_by_side(native, sync, steps, policy, seed=11)
        assert counts[expect] >= 2, counts  # episode ends of the intended kind happened
        assert counts["final_info_rows"] == counts["terminated"] + counts["truncated"]
        assert counts["running_info_steps"] >= steps // 2, counts
        if expect == "terminated":  # deaths at different steps: envs ending next to running ones
            assert counts["mixed_steps"] >= 2, counts
        # A later unseeded reset starts every env's next episode in both; then keep stepping.
        obs_n, _ = native.reset()
        obs_s, _ = sync.reset()
        np.testing.assert_array_equal(obs_n, obs_s)
        rng = np.random.default_rng(5)
        for t in range(30):
            actions = policy(rng, n)
            assert_same_step(native.step(actions), sync.step(actions), f"after reset(), step {t}")
    finally:
        native.close()
        sync.close()


def test_terminated_and_truncated_follow_the_single_env() -> None:
    # Deaths: terminated with final_info discount 0; time limit: truncated with discount 1.
    n = 4
    native = make_native(n, length=400)
    sync = make_sync(n, length=400)
    try:
        native.reset(seed=2)
        sync.reset(seed=2)
        rng = np.random.default_rng(0)
        seen_death = False
        for t in range(300):
            actions = mostly_noop_policy(rng, n)
            a, b = native.step(actions), sync.step(actions)
            assert_same_step(a, b, f"step {t}")
            if a[2].any():
                fi = a[4]["final_info"]
                assert (fi["discount"][a[2]] == 0.0).all() and (fi["inventory"]["health"][a[2]] <= 0).all()
                seen_death = True
        assert seen_death
    finally:
        native.close()
        sync.close()


def test_episode_statistics_wrapper_agrees_with_sync() -> None:
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    native = RecordEpisodeStatistics(make_native(3, length=15))
    sync = RecordEpisodeStatistics(make_sync(3, length=15))
    try:
        native.reset(seed=7)
        sync.reset(seed=7)
        rng = np.random.default_rng(1)
        episodes = 0
        for _ in range(40):
            actions = random_policy(rng, 3)
            a, b = native.step(actions), sync.step(actions)
            assert ("episode" in a[4]) == ("episode" in b[4])
            if "episode" in a[4]:
                ea, eb = a[4]["episode"], b[4]["episode"]
                np.testing.assert_array_equal(a[4]["_episode"], b[4]["_episode"])
                np.testing.assert_array_equal(ea["r"], eb["r"])
                np.testing.assert_array_equal(ea["l"], eb["l"])
                episodes += int(a[4]["_episode"].sum())
        assert episodes == 6  # 40 steps, length 15: two episodes per env
    finally:
        native.close()
        sync.close()


def test_seeding_matches_the_single_env_convention() -> None:
    n = 3
    env = make_native(n, length=50)
    try:
        obs, _ = env.reset(seed=40)
        for i in range(n):  # env i is a fresh single env reset with seed 40 + i
            single_obs, _ = gym.make(ID, length=50).reset(seed=40 + i)
            np.testing.assert_array_equal(obs[i], single_obs)
        obs_list, _ = env.reset(seed=[40, 41, 42])
        np.testing.assert_array_equal(obs_list, obs)
        other, _ = env.reset(seed=[7, 40, 9])
        np.testing.assert_array_equal(other[1], obs[0])
        assert not np.array_equal(other[0], obs[0])
    finally:
        env.close()


def test_first_unseeded_reset_draws_like_single_envs_do() -> None:
    # Single envs draw their seed from numpy's global generator when made; SyncVectorEnv makes them in
    # order, and the native vector env draws its per-env seeds the same way.
    np.random.seed(123)
    native = make_native(3, length=30)
    np.random.seed(123)
    sync = make_sync(3, length=30)
    np.random.seed(124)
    other = make_native(3, length=30)
    try:
        obs_n, _ = native.reset()
        obs_s, _ = sync.reset()
        np.testing.assert_array_equal(obs_n, obs_s)
        assert not np.array_equal(other.reset()[0], obs_n)
        rng = np.random.default_rng(0)
        for t in range(40):
            actions = random_policy(rng, 3)
            assert_same_step(native.step(actions), sync.step(actions), f"step {t}")
        # A constructor seed is given to every env, as make_vec(..., seed=s) does for the sync envs.
        fixed_n, fixed_s = make_native(2, seed=5), make_sync(2, seed=5)
        np.testing.assert_array_equal(fixed_n.reset()[0], fixed_s.reset()[0])
        np.testing.assert_array_equal(fixed_n.reset(seed=5)[0][0], fixed_s.reset(seed=5)[0][0])
    finally:
        native.close()
        sync.close()
        other.close()


def test_render_returns_the_frames_the_single_envs_render() -> None:
    native = make_native(2, length=10, render_mode="rgb_array")
    sync = make_sync(2, length=10, render_mode="rgb_array")
    try:
        assert native.render_mode == sync.render_mode == "rgb_array"
        native.reset(seed=3)
        sync.reset(seed=3)
        rng = np.random.default_rng(2)
        for t in range(25):  # crosses two auto-resets
            if t % 4 == 0 or t in (9, 10, 19, 20):
                frames_n, frames_s = native.render(), sync.render()
                assert isinstance(frames_n, tuple) and len(frames_n) == 2
                assert data_equivalence(frames_n, frames_s, exact=True), f"render at step {t}"
                assert frames_n[0].shape == (64, 64, 3) and frames_n[0].dtype == np.uint8
            actions = random_policy(rng, 2)
            obs, *_ = native.step(actions)
            sync.step(actions)
        np.testing.assert_array_equal(np.stack(native.render()), obs)
    finally:
        native.close()
        sync.close()


def test_returned_arrays_are_not_reused() -> None:
    env = make_native(2, length=5)
    try:
        obs0, _ = env.reset(seed=1)
        keep = obs0.copy()
        last = None
        for _ in range(6):
            out = env.step(np.array([1, 2]))
            if "final_obs" in out[4]:
                last = out[4]["final_obs"][0]
                keep_last = last.copy()
        env.step(np.array([3, 4]))
        np.testing.assert_array_equal(obs0, keep)
        assert last is not None
        np.testing.assert_array_equal(last, keep_last)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("actions", "needle"),
    [
        (np.zeros(2, np.int64), r"shape \(3,\)"),
        (np.zeros((3, 1), np.int64), r"shape \(3,\)"),
        (np.zeros(3, np.float32), "integer dtype"),
        (np.array([True, False, True]), "integer dtype"),
        (np.array([0, 17, 1]), r"\[0, 17\)"),
        (np.array([0, -1, 1]), r"\[0, 17\)"),
        ([0, 1], r"shape \(3,\)"),
    ],
)
def test_bad_actions_are_rejected_clearly(actions: Any, needle: str) -> None:
    env = make_native(3, length=20)
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match=needle):
            env.step(actions)
        env.step([0, 16, 5])  # lists of ints are fine, and the env is still usable
    finally:
        env.close()


def test_bad_usage_is_rejected_clearly() -> None:
    env = make_native(3, length=20)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="one seed per env"):
        env.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="mixing None"):
        env.reset(seed=[1, None, 2])
    with pytest.raises(ValueError, match="non-negative"):
        env.reset(seed=-1)
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed="7")  # type: ignore[arg-type]
    env.reset(seed=0)
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([True, False, True])})
    env.close()
    env.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros(3, np.int64))
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()
    with pytest.raises(ValueError, match="render_mode"):
        make_native(2, render_mode="human")
    with pytest.raises(ValueError, match="num_envs"):
        crafter_gym.CrafterGymVectorEnv(num_envs=0)
    with pytest.raises(ValueError, match="length"):
        make_native(2, length=-3)


def test_exact_rewards_rebuild_the_engines_doubles() -> None:
    # Every reward the engine can produce: (health change in [-9, 1]) / 10, plus 1.0 on an unlock.
    doubles = [dh / 10 for dh in range(-9, 2)] + [dh / 10 + 1.0 for dh in range(-8, 2)]
    r32 = np.array(doubles, dtype=np.float32)
    out = crafter_gym._exact_rewards(r32)
    assert out.dtype == np.float64
    assert out.tolist() == doubles  # exact, not merely close
