"""The collector writes env experience to the replay store exactly (per-env auto-reset, end vs trunc)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltairis.config import make_agent_config
from deltairis.data import ReplayStore
from deltairis.envs.toy import AGENT_COLOUR, CELL, GOAL_COLOUR, GRID
from deltairis.seeding import derive_seed
from deltairis.train.collector import Collector, run_test_episodes
from deltairis.train.configuration import compose_config
from deltairis.train.env_config import make_env

MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


def _cell_of(frame_chw: np.ndarray, colour: np.ndarray) -> np.ndarray:
    hwc = frame_chw.transpose(1, 2, 0)
    ys, xs = np.nonzero(np.all(hwc == colour, axis=-1))
    assert ys.size > 0, "colour not found in frame"
    return np.array([ys.min() // CELL, xs.min() // CELL])


def _check_episode(ep, expect_len: int | None) -> None:
    t = len(ep.act)
    for k in range(t - 1):
        agent, goal = _cell_of(ep.obs[k], AGENT_COLOUR), _cell_of(ep.obs[k], GOAL_COLOUR)
        nxt = np.clip(agent + MOVES[ep.act[k]], 0, GRID - 1)
        assert np.array_equal(_cell_of(ep.obs[k + 1], AGENT_COLOUR), nxt)
        assert ep.rew[k] == float(np.array_equal(nxt, goal))
    if expect_len is not None:
        assert t == expect_len


def _env_cfg(*extra: str):
    # The 4x4 board the pixel checks above are written for (the config's default board is 2x2).
    return compose_config(["env=toy", "params=tiny", f"env.train.grid={GRID}", f"env.test.grid={GRID}", *extra]).env


@pytest.mark.parametrize("rounds", [[45, 60], [30], [7, 7, 7, 50]])
def test_random_collection_stores_exact_episodes(tmp_path, rounds: list[int]) -> None:
    n = 3
    env = make_env(_env_cfg(), "train", n, seed=11)
    store = ReplayStore(tmp_path / "s", backend="numpy")
    col = Collector(env, store, burn_in=4, seed=11)
    total = 0
    for r, steps in enumerate(rounds):
        stats = col.collect(steps * n, None, torch.device("cpu"), epsilon=0.0, temperature=1.0, seed=r)
        assert stats.num_steps == steps * n
        total += steps * n
        assert all(x == 30 for x in stats.episode_lengths)
    assert store.num_steps == total == int(np.sum(store.lengths))
    running = set(int(i) for i in col.episode_ids if i >= 0)
    for ep_id in range(store.num_episodes):
        ep = store.load_episode(ep_id)
        assert not ep.end.any()  # respawning goals never terminate
        if ep_id in running:
            assert not ep.trunc.any() and len(ep.act) < 30
            _check_episode(ep, None)
        else:
            assert ep.trunc[-1] == 1 and not ep.trunc[:-1].any()  # time limit -> trunc, not end
            _check_episode(ep, 30)
    # the last frames kept for burn-in are those of the running episodes
    for i in range(n):
        if col.episode_ids[i] >= 0:
            ep = store.load_episode(int(col.episode_ids[i]))
            k = int(col.recent_len[i])
            assert k == min(4, len(ep.act))
            assert np.array_equal(col.recent[i, 4 - k :], ep.obs[len(ep.act) - k :])


def test_terminations_are_stored_as_end(tmp_path) -> None:
    env = make_env(_env_cfg("env.train.respawn=false"), "train", 2, seed=3)
    store = ReplayStore(tmp_path / "s", backend="numpy")
    Collector(env, store, burn_in=2, seed=3).collect(400, None, torch.device("cpu"), epsilon=0, temperature=1, seed=0)
    ended = 0
    for ep_id in range(store.num_episodes):
        ep = store.load_episode(ep_id)
        assert not (ep.end.astype(bool) & ep.trunc.astype(bool)).any()
        assert not ep.end[:-1].any()
        if ep.end[-1]:
            ended += 1
            assert ep.rew[-1] == 1.0 and ep.trunc[-1] == 0
    assert ended > 5


def _reference_burn_in(agent, store, episode_ids, burn_in: int):
    """The reference collector's round-start burn-in, restated: for each env the last ``burn_in`` stored
    frames of its running episode, left-padded with zero frames; all zero frames when no episode runs."""
    h, c = agent.actor_critic.initial_state(len(episode_ids), "cpu")
    frames = np.zeros((len(episode_ids), burn_in, 3, 64, 64), dtype=np.uint8)
    for i, ep in enumerate(episode_ids):
        if ep >= 0:
            obs = store.load_episode(int(ep)).obs[-burn_in:]
            frames[i, burn_in - len(obs) :] = obs
    for t in range(burn_in):  # every frame is fed, zero frames included
        x = torch.from_numpy(frames[:, t]).float().div(255)
        _, _, (h, c) = agent.actor_critic.step(x, (h, c))
    return h, c


@pytest.mark.parametrize(("steps", "lengths"), [(0, [0, 0, 0]), (30, [0, 0, 0]), (32, [2, 2, 2]), (35, [5, 5, 5]), (45, [15, 15, 15])])
def test_burn_in_is_the_reference_collectors(tmp_path, steps: int, lengths: list[int]) -> None:
    # a fresh start and every env just reset (no episode running: zero frames), short running episodes (2 frames, padded with
    # zeros), and episodes at and beyond the burn-in length
    torch.manual_seed(0)
    from deltairis.agent import Agent

    agent = Agent(make_agent_config("tiny", 5)).eval()
    torch.nn.init.normal_(agent.actor_critic.model.critic_linear.weight)
    env = make_env(_env_cfg(), "train", 3, seed=5)
    store = ReplayStore(tmp_path / "s", backend="numpy")
    col = Collector(env, store, burn_in=5, seed=5)
    if steps:
        col.collect(3 * steps, None, torch.device("cpu"), epsilon=0, temperature=1, seed=1)  # 30-step episodes
    running = [len(store.load_episode(int(e)).act) if e >= 0 else 0 for e in col.episode_ids]
    assert running == lengths
    with torch.no_grad():
        got = col._burn_in_state(agent.actor_critic, torch.device("cpu"))
        h, c = _reference_burn_in(agent, store, col.episode_ids, 5)
    torch.testing.assert_close(got[0], h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], c, rtol=1e-5, atol=1e-6)
    if steps in (0, 30):  # the zero frames really move the state (the reference feeds them)
        assert h.abs().sum() > 0


def test_test_episodes_start_from_a_zero_frame_burn_in(tmp_path) -> None:
    # The reference's test collector starts with no running episode: its LSTM consumes burn_in zero frames.
    torch.manual_seed(0)
    from deltairis.agent import Agent

    agent = Agent(make_agent_config("tiny", 5)).eval()
    seen = []
    step = agent.actor_critic.model.forward

    def spy(obs, state):
        seen.append((obs.clone(), state[0].clone()))
        return step(obs, state)

    agent.actor_critic.model.forward = spy
    env = make_env(_env_cfg("env.test.max_episode_steps=3"), "test", 2, seed=1)
    run_test_episodes(env, 2, agent.actor_critic, torch.device("cpu"), epsilon=0, temperature=1, seed=2, burn_in=5)
    with torch.no_grad():
        h, _ = _reference_burn_in(agent, None, [-1, -1], 5)
    torch.testing.assert_close(seen[0][1], h, rtol=1e-5, atol=1e-6)  # the state the first action sees


@pytest.mark.parametrize(("num_episodes", "num_envs"), [(5, 2), (8, 8), (3, 4)])
def test_test_episodes_play_exactly_the_quota(tmp_path, num_episodes: int, num_envs: int) -> None:
    env = make_env(_env_cfg("env.test.max_episode_steps=7"), "test", num_envs, seed=1)
    store = ReplayStore(tmp_path / "s", backend="numpy")
    stats = run_test_episodes(env, num_episodes, None, torch.device("cpu"), epsilon=0, temperature=1, seed=2, store=store)
    assert len(stats.episode_returns) == num_episodes == store.num_episodes
    assert stats.episode_lengths == [7] * num_episodes
    assert stats.num_steps == 7 * num_episodes == store.num_steps
    for ep_id in range(store.num_episodes):
        _check_episode(store.load_episode(ep_id), 7)


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    seeds = {derive_seed(s, p, e) for s in range(3) for p in ("a", "b") for e in range(5)}
    assert len(seeds) == 30 and all(0 <= s < 2**63 for s in seeds)
