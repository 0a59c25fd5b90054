"""Atari: the reference preprocessing (python path), train/test settings, and the ALE fast path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deltairis.envs import make_vector_env
from deltairis.envs.atari import (
    AleVectorEnv,
    AtariPreprocessedEnv,
    AtariPythonVectorEnv,
    atari_rom_name,
)

pytest.importorskip("ale_py")


def test_rom_names() -> None:
    cases = {
        "BreakoutNoFrameskip-v4": "breakout",
        "ALE/Breakout-v5": "breakout",
        "Breakout": "breakout",
        "breakout": "breakout",
        "MsPacmanNoFrameskip-v4": "ms_pacman",
        "ms_pacman": "ms_pacman",
        "KungFuMasterNoFrameskip-v4": "kung_fu_master",
        "UpNDownNoFrameskip-v4": "up_n_down",
        "ALE/PrivateEye-v5": "private_eye",
    }
    for env_id, rom in cases.items():
        assert atari_rom_name(env_id) == rom, env_id
    with pytest.raises(ValueError, match="names no Atari ROM"):
        atari_rom_name("NotAGameNoFrameskip-v4")
    with pytest.raises(ValueError, match="own frame skipping"):
        atari_rom_name("Breakout-v4")
    with pytest.raises(ValueError, match="non-empty string"):
        atari_rom_name("")


def _resize(frame: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((64, 64), Image.BILINEAR))


def test_python_path_is_resize_then_max_of_last_two_frames() -> None:
    """Replay the same actions on a bare NoFrameskip ALE env and rebuild every observation."""
    from ale_py.env import AtariEnv

    env = AtariPreprocessedEnv("BreakoutNoFrameskip-v4", train=False, max_episode_frames=100_000)
    obs = env.reset(seed=3)
    noops = env.episode_frame_number
    assert noops == 1  # test setting: exactly one no-op frame
    raw_env = AtariEnv(game="breakout", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
    raw_env.reset(seed=3)
    for _ in range(noops):
        raw, *_ = raw_env.step(0)
    np.testing.assert_array_equal(obs, _resize(raw))
    rng = np.random.default_rng(0)
    total_raw_reward = total_reward = 0.0
    for _ in range(120):
        a = int(rng.integers(4))
        obs, reward, done, info = env.step(a)
        frames = []
        for _ in range(4):
            raw, r, *_ = raw_env.step(a)
            total_raw_reward += r
            frames.append(_resize(raw))
        total_reward += reward
        np.testing.assert_array_equal(obs, np.maximum(frames[-2], frames[-1]))
        # max over resized frames differs from resize of the max: the order matters and is the reference's.
        if done:
            break
    assert total_reward == total_raw_reward
    raw_env.close()
    env.close()


def test_noop_counts_at_reset() -> None:
    train = AtariPreprocessedEnv("BreakoutNoFrameskip-v4", train=True, seed=0)
    counts = set()
    for _ in range(40):
        train.reset()  # a full reset with a fresh no-op draw (no game to continue)
        counts.add(train.episode_frame_number)
    assert min(counts) >= 1 and max(counts) <= 30 and len(counts) >= 15
    test = AtariPreprocessedEnv("BreakoutNoFrameskip-v4", train=False, seed=0)
    for _ in range(5):
        test.reset()
        assert test.episode_frame_number == 1
    # ALE's vector env draws 0 .. noop_max - 1 raw no-op frames (documented difference).
    ale = AleVectorEnv(2, seed=0, train=False)
    ale.reset(0)
    assert ale.reset_info["episode_frame_number"].tolist() == [0, 0]
    ale.close()
    ale = AleVectorEnv(3, seed=0, train=True)
    frames = []
    for _ in range(5):
        ale.reset()  # seeded by the constructor's seed first, then continuing the random stream
        frames += ale.reset_info["episode_frame_number"].tolist()
    ale.close()
    assert min(frames) >= 0 and max(frames) <= 29 and len(set(frames)) > 4


@pytest.mark.parametrize("backend", ["python", "ale_vector"])
def test_life_loss_ends_episodes_in_train_mode_only(backend: str) -> None:
    train = make_vector_env("atari", 1, seed=4, backend=backend, train=True)
    test = make_vector_env("atari", 1, seed=4, backend=backend, train=False)
    rng = np.random.default_rng(0)
    # Training: the first episodes end on life losses while lives remain (Breakout has 5 lives).
    train.reset()
    lives_at_end = []
    while len(lives_at_end) < 3:
        _, _, term, trunc, info = train.step(rng.integers(4, size=1))
        assert not trunc[0]
        if term[0]:
            lives_at_end.append(info["final_info"][0]["lives"])
            if backend == "python":
                # The next episode continues the same game after one 4-frame no-op step.
                core = train.envs[0]  # type: ignore[attr-defined]
                assert core.episode_frame_number == info["final_info"][0]["episode_frame_number"] + 4
                assert core.env.ale.lives() == lives_at_end[-1]
    assert lives_at_end == [4, 3, 2]
    if backend == "python":
        train.reset()  # an explicit reset mid-game starts a new game
        assert train.envs[0].env.ale.lives() == 5 and train.envs[0].episode_frame_number <= 30  # type: ignore[attr-defined]
    # Test: the first episode lasts until game over, i.e. several lives.
    test.reset()
    for t in range(5000):
        _, _, term, trunc, info = test.step(rng.integers(4, size=1))
        if term[0] or trunc[0]:
            break
    assert term[0] and not trunc[0]
    fin = info["final_info"][0]
    if backend == "python":
        assert fin["game_over"] and fin["lives"] == 0 and not fin["life_loss"]
    assert info["episode_length"][0] > 4 * 20  # five lives, each at least ~20 agent steps
    train.close()
    test.close()


@pytest.mark.parametrize("backend", ["python", "ale_vector"])
def test_time_limit_counts_raw_frames(backend: str) -> None:
    env = make_vector_env("atari", 2, seed=0, backend=backend, train=False, max_episode_frames=40)
    env.reset()
    lengths = []
    for _ in range(25):
        _, _, term, trunc, info = env.step(np.zeros(2, dtype=np.int64))  # NOOP: the ball never launches
        assert not term.any()
        lengths += info["episode_length"][trunc].tolist()
    # 40 raw frames, reset no-ops included (1 frame in python: its 10th step stops after 3 frames; 0 in
    # ALE): 10 agent steps either way.
    assert lengths and set(lengths) == {10}
    env.close()
    with pytest.raises(ValueError, match="max_episode_frames"):
        make_vector_env("atari", 1, backend=backend, max_episode_frames=0)
    with pytest.raises(ValueError, match="noop_max"):
        make_vector_env("atari", 1, backend=backend, noop_max=0)


@pytest.mark.parametrize("game,max_mean_diff", [("BreakoutNoFrameskip-v4", 2.0), ("MsPacmanNoFrameskip-v4", 5.0)])
def test_fast_path_frames_close_to_reference(game: str, max_mean_diff: float) -> None:
    """Align the two paths (test settings, no no-op on either side) and compare every frame."""
    fast = AleVectorEnv(2, seed=5, id=game, train=False)
    ref = AtariPythonVectorEnv(2, seed=5, id=game, train=False, override_num_noops=0)
    assert fast.action_names == ref.action_names and fast.num_actions == ref.num_actions
    of, orf = fast.reset(), ref.reset()
    diffs = [np.abs(of.astype(np.int16) - orf).mean()]
    rng = np.random.default_rng(0)
    for _ in range(150):
        act = rng.integers(fast.num_actions, size=2)
        of, rf, tf, trf, _ = fast.step(act)
        orf, rr, tr, trr, _ = ref.step(act)
        np.testing.assert_array_equal(rf, rr)
        np.testing.assert_array_equal(tf, tr)
        np.testing.assert_array_equal(trf, trr)
        diffs.append(np.abs(of.astype(np.int16) - orf).mean())
    diffs = np.array(diffs)
    # Different resampling (and max-then-resize vs resize-then-max) but the same game states.
    assert 0.0 < diffs.mean() < max_mean_diff
    assert diffs.max() < 2 * max_mean_diff
    fast.close()
    ref.close()


def test_minimal_action_set() -> None:
    env = make_vector_env("atari", 1, backend="python", id="BreakoutNoFrameskip-v4")
    assert env.num_actions == 4 and env.action_names == ["noop", "fire", "right", "left"]
    env.close()
    env = make_vector_env("atari", 1, backend="ale_vector", id="PongNoFrameskip-v4")
    assert env.num_actions == 6 and env.action_names[0] == "noop"
    env.close()
