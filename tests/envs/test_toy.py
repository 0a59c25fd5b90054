"""The built-in GridGoal toy env: dynamics, rendering, determinism and the oracle-vs-random gap."""

from __future__ import annotations

import numpy as np
import pytest

from deltairis.envs import make_vector_env
from deltairis.envs.toy import (
    AGENT_COLOUR,
    CELL,
    GOAL_COLOUR,
    GRID,
    GridGoalEnv,
    oracle_policy_return,
    random_policy_return,
)


def _find(frame: np.ndarray, colour: np.ndarray) -> tuple[int, int]:
    """Cell (row, col) whose centre pixel has ``colour``, read from pixels only."""
    hits = [
        (r, c)
        for r in range(GRID)
        for c in range(GRID)
        if np.array_equal(frame[r * CELL + CELL // 2, c * CELL + CELL // 2], colour)
    ]
    assert len(hits) == 1, f"expected exactly one cell of colour {colour}, found {hits}"
    return hits[0]


def test_frames_show_agent_and_goal_where_the_state_says() -> None:
    env = GridGoalEnv(max_steps=200)
    frame = env.reset(seed=4)
    rng = np.random.default_rng(0)
    for _ in range(150):
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        assert _find(frame, AGENT_COLOUR) == tuple(env.agent_pos)
        assert _find(frame, GOAL_COLOUR) == tuple(env.goal_pos)
        assert not np.array_equal(env.agent_pos, env.goal_pos)
        frame, *_ = env.step(int(rng.integers(5)))


def test_moves_walls_and_reward() -> None:
    env = GridGoalEnv(max_steps=100)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    moves = {0: (0, 0), 1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}
    for _ in range(300):
        a = int(rng.integers(5))
        before = env.agent_pos.copy()
        goal_before = env.goal_pos.copy()
        _, reward, done, info = env.step(a)
        expected = np.clip(before + moves[a], 0, GRID - 1)
        np.testing.assert_array_equal(info["agent_pos"], expected)
        assert reward == (1.0 if np.array_equal(expected, goal_before) else 0.0)
        if done:
            env.reset()


def test_episode_ends_by_time_limit_or_goal() -> None:
    env = GridGoalEnv(max_steps=6, respawn=True)
    env.reset(seed=2)
    dones = [env.step(0)[2] for _ in range(6)]
    assert dones == [False] * 5 + [True]
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env = GridGoalEnv(max_steps=50, respawn=False)
    env.reset(seed=3)
    for t in range(1, 51):
        _, reward, done, info = env.step(env.oracle_action())
        if reward:
            assert done and not info["truncated"] and t <= 2 * (GRID - 1)
            break
    else:
        pytest.fail("the oracle must reach the goal")
    with pytest.raises(ValueError, match="max_steps"):
        GridGoalEnv(max_steps=0)
    with pytest.raises(ValueError, match="action must lie"):
        fresh = GridGoalEnv()
        fresh.reset(seed=0)
        fresh.step(7)


def test_vector_toy_terminated_truncated_split() -> None:
    env = make_vector_env("toy", 4, seed=1, max_steps=5, respawn=False)
    env.reset()
    saw_term = saw_trunc = False
    for _ in range(30):
        _, rew, term, trunc, info = env.step(env.oracle_actions() if saw_trunc else np.zeros(4, dtype=np.int64))
        saw_term |= bool(term.any())
        saw_trunc |= bool(trunc.any())
        # Terminations are exactly the goal-reaching steps when the goal does not respawn.
        np.testing.assert_array_equal(term, rew > 0)
        for i in np.flatnonzero(trunc):
            assert info["episode_length"][i] == 5
    assert saw_term and saw_trunc


def test_deterministic_given_seed() -> None:
    runs = []
    for _ in range(2):
        env = make_vector_env("toy", 3, seed=9)
        frames = [env.reset()]
        rng = np.random.default_rng(5)
        for _ in range(80):
            frames.append(env.step(rng.integers(5, size=3))[0])
        runs.append(np.stack(frames))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert random_policy_return(16, seed=3) == random_policy_return(16, seed=3)


def test_oracle_clearly_beats_random() -> None:
    rand = random_policy_return(num_episodes=64, seed=0)
    oracle = oracle_policy_return(num_episodes=64, seed=0)
    # 30-step episodes: greedy collects ~11 goals, uniform random ~1.
    assert oracle >= 8.0
    assert rand <= 2.0
    assert oracle - rand >= 6.0
    # The undiscounted gap also holds with the terminate-on-goal variant.
    assert oracle_policy_return(64, seed=0, respawn=False) == 1.0
    assert random_policy_return(64, seed=0, respawn=False) < 0.8


@pytest.mark.parametrize("grid", [2, 3, 5, 8])
def test_other_board_sizes_render_and_move(grid: int) -> None:
    """Any board size 2..8: agent/goal drawn in their cells, moves clipped at the walls, +1 on the goal."""
    cell = 64 // grid
    env = GridGoalEnv(max_steps=400, grid=grid)
    frame = env.reset(seed=grid)
    moves = {0: (0, 0), 1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}
    rng = np.random.default_rng(grid)
    goals = 0
    for _ in range(300):
        for pos, colour in ((env.agent_pos, AGENT_COLOUR), (env.goal_pos, GOAL_COLOUR)):
            hits = [
                (r, c)
                for r in range(grid)
                for c in range(grid)
                if np.array_equal(frame[r * cell + cell // 2, c * cell + cell // 2], colour)
            ]
            assert hits == [tuple(pos)]
        a = int(rng.integers(5))
        expected = np.clip(env.agent_pos + moves[a], 0, grid - 1)
        goal_before = env.goal_pos.copy()
        frame, reward, done, info = env.step(a)
        np.testing.assert_array_equal(info["agent_pos"], expected)
        assert reward == (1.0 if np.array_equal(expected, goal_before) else 0.0)
        goals += int(reward)
        assert (0 <= env.goal_pos).all() and (env.goal_pos < grid).all()
    assert goals > 0


def test_smaller_boards_give_more_goals_to_random_play() -> None:
    returns = [random_policy_return(64, seed=0, grid=g) for g in (2, 3, 4)]
    assert returns[0] > returns[1] > returns[2]
    # The oracle keeps a clear lead on every size.
    for g, r in zip((2, 3, 4), returns):
        assert oracle_policy_return(64, seed=0, grid=g) >= r + 5.0


@pytest.mark.parametrize("bad", [1, 9, 0, -2, 2.5, True, "3"])
def test_bad_board_size_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="grid must be an int in \\[2, 8\\]"):
        GridGoalEnv(grid=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grid"):
        make_vector_env("toy", 2, seed=0, grid=bad)
