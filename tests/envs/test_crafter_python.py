"""The Python Crafter backend against crafter.Env itself, and the Crafter metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deltairis.envs import make_vector_env
from deltairis.envs.crafter_metrics import achievement_success_rates, crafter_metrics, crafter_score
from deltairis.envs.crafter_python import CrafterPythonVectorEnv, crafter_achievements, crafter_action_names

crafter = pytest.importorskip("crafter")


def test_vector_env_equals_independent_crafter_envs() -> None:
    """Env i of the vector env == crafter.Env(seed=seed + i) stepped alone, across an auto-reset."""
    seed, n, length, steps = 21, 2, 6, 9
    env = make_vector_env("crafter", n, seed=seed, backend="python", length=length)
    assert env.action_names == crafter_action_names() and env.num_actions == 17
    refs = [crafter.Env(area=(64, 64), view=(9, 9), size=(64, 64), reward=True, length=length, seed=seed + i)
            for i in range(n)]
    obs = env.reset()
    ref_obs = np.stack([r.reset() for r in refs])
    np.testing.assert_array_equal(obs, ref_obs)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        acts = rng.integers(17, size=n)
        obs, rew, term, trunc, info = env.step(acts)
        for i, ref in enumerate(refs):
            r_obs, r_rew, r_done, r_info = ref.step(int(acts[i]))
            assert rew[i] == np.float32(r_rew)
            assert bool(term[i] or trunc[i]) == r_done
            if r_done:
                np.testing.assert_array_equal(info["final_obs"][i], r_obs)
                assert trunc[i] == (r_info["discount"] == 1.0)
                fin = info["final_info"][i]
                assert set(fin) == {"inventory", "achievements", "discount", "semantic", "player_pos", "reward"}
                assert fin["achievements"] == r_info["achievements"]
                np.testing.assert_array_equal(fin["semantic"], r_info["semantic"])
                r_obs = ref.reset()  # crafter's next episode of the same env
            np.testing.assert_array_equal(obs[i], r_obs)
    env.close()


def test_death_is_terminated_and_length_is_truncated() -> None:
    env = CrafterPythonVectorEnv(1, seed=0, length=3)
    env.reset()
    _, _, term, trunc, _ = env.step(np.zeros(1, dtype=np.int64))
    assert not term[0] and not trunc[0]
    env.envs[0].env._player.health = 0  # type: ignore[attr-defined]  # kill the player
    _, _, term, trunc, info = env.step(np.zeros(1, dtype=np.int64))
    assert term[0] and not trunc[0] and info["final_info"][0]["discount"] == 0.0
    for t in range(3):
        _, _, term, trunc, info = env.step(np.zeros(1, dtype=np.int64))
    assert trunc[0] and not term[0] and info["episode_length"][0] == 3
    assert info["final_info"][0]["discount"] == 1.0
    with pytest.raises(ValueError, match="length"):
        CrafterPythonVectorEnv(1, length=0)


def test_crafter_score_formula() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        rates = rng.uniform(0, 100, size=22)
        expected = math.exp(sum(math.log(1 + s) for s in rates) / 22) - 1
        assert crafter_score(rates) == pytest.approx(expected, rel=1e-12)
    assert crafter_score([0.0] * 22) == 0.0
    assert crafter_score([37.5] * 22) == pytest.approx(37.5)
    # Geometric-style mean: one unlocked achievement among 22 gives far less than the arithmetic mean.
    assert crafter_score([100.0] + [0.0] * 21) == pytest.approx(101 ** (1 / 22) - 1)
    names = crafter_achievements()
    assert crafter_score(dict.fromkeys(names, 10.0)) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="22 rates"):
        crafter_score([1.0] * 21)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        crafter_score([101.0] + [0.0] * 21)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        crafter_score([float("nan")] * 22)


def test_achievement_success_rates() -> None:
    names = crafter_achievements()
    assert len(names) == 22 and names == sorted(names)
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 3, size=(40, 22)) * (rng.random((40, 22)) < 0.3)
    episodes = [dict(zip(names, row.tolist(), strict=True)) for row in counts]
    rates = achievement_success_rates(episodes)
    assert list(rates) == names
    for k, name in enumerate(names):
        assert rates[name] == pytest.approx(100.0 * np.mean(counts[:, k] > 0))
    metrics = crafter_metrics(episodes)
    assert metrics["crafter_score"] == pytest.approx(crafter_score(rates))
    assert metrics["num_achievements_unlocked"] == sum(r > 0 for r in rates.values())
    with pytest.raises(ValueError, match="empty"):
        achievement_success_rates([])
    with pytest.raises(ValueError, match="unknown Crafter achievement 'fly'"):
        achievement_success_rates([{"fly": 1}])
