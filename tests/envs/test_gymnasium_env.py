"""``env=gymnasium``: any registered gymnasium env with pixels and discrete actions
(deltairis.envs.gymnasium_env), with a small custom env registered here and CartPole-v1 (rendered rgb_array
frames) shipped with gymnasium."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
from gymnasium import spaces
from tiny_run import TINY_SETTINGS

from deltairis.cli import train as train_cli
from deltairis.envs import make_vector_env
from deltairis.envs.gymnasium_env import GymnasiumEnv, to_rgb64
from deltairis.errors import ConfigError
from deltairis.train.configuration import compose_config
from deltairis.train.env_config import env_kwargs

BLINK = "DeltaIrisTest/Blink-v0"


class Blink(gym.Env):
    """A 24x40 image env: the lit column (0..2) is the rewarded action (actions start at 1); the frame
    alternates brightness every step (flicker); an episode ends after ``length`` steps."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, length: int = 12) -> None:
        self.observation_space = spaces.Box(0, 255, (24, 40, 3), np.uint8)
        self.action_space = spaces.Discrete(3, start=1)
        self.length = length
        self.t = 0
        self.target = 0

    def _obs(self) -> np.ndarray:
        frame = np.zeros((24, 40, 3), np.uint8)
        frame[:, self.target * 13 : self.target * 13 + 13, 1] = 200 if self.t % 2 else 100
        return frame

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.target = int(self.np_random.integers(3))
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        assert self.action_space.contains(action), action
        reward = float(action - 1 == self.target)
        self.t += 1
        self.target = int(self.np_random.integers(3))
        return self._obs(), reward, self.t >= self.length, False, {"t": self.t}


class Vector(gym.Env):
    """Non-image observations and no rgb_array rendering: refused."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)


if BLINK not in gym.registry:
    gym.register(id=BLINK, entry_point=Blink)
    gym.register(id="DeltaIrisTest/Vector-v0", entry_point=Vector)


def test_frames_actions_and_rewards_of_an_image_env() -> None:
    env = GymnasiumEnv(BLINK)
    assert env.action_names == ["action_0", "action_1", "action_2"] and not env.render
    obs = env.reset(seed=3)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    target = env.env.unwrapped.target
    lit = obs[:, :, 1].mean(axis=0)  # the lit third of the resized frame
    assert lit[target * 21 + 10] > 50 and lit[((target + 1) % 3) * 21 + 10] == 0
    _, reward, done, info = env.step(target)  # action i is sent as start + i
    assert (reward, done, info["truncated"], info["t"]) == (1.0, False, False, 1)
    env.close()


def test_frame_skip_max_pool_and_time_limits() -> None:
    env = GymnasiumEnv(BLINK, frame_skip=2, max_pool=True, max_episode_steps=4)
    env.reset(seed=0)
    obs, _, _, info = env.step(0)
    assert info["t"] == 2  # two env steps per agent step
    assert obs[:, :, 1].max() == 200  # the max of the bright (t=1) and the dim (t=2) frame
    plain = GymnasiumEnv(BLINK, frame_skip=2)
    plain.reset(seed=0)
    assert plain.step(0)[0][:, :, 1].max() == 100  # without max-pooling: the last (dim) frame
    plain.close()
    dones = [env.step(0)[2:] for _ in range(3)]
    assert [d for d, _ in dones] == [False, False, True] and dones[-1][1]["truncated"]  # our limit: truncated
    env.close()
    short = GymnasiumEnv(BLINK, frame_skip=5)  # the env's own end (12 steps) stops inside a skip
    short.reset(seed=0)
    ends = [short.step(0) for _ in range(3)]
    assert (
        [e[2] for e in ends] == [False, False, True]
        and ends[-1][3]["t"] == 12
        and not ends[-1][3]["truncated"]
    )
    with pytest.raises(ValueError, match="max_pool needs frame_skip >= 2"):
        GymnasiumEnv(BLINK, max_pool=True)


def test_make_kwargs_reach_gymnasium_make() -> None:
    """``env.<split>.make_kwargs`` (the test split follows the train one) become gymnasium.make's keyword
    arguments: Blink's ``length`` ends its episodes after 5 steps instead of 12."""
    cfg = compose_config(["env=gymnasium", f"env.train.id={BLINK}", "+env.train.make_kwargs.length=5"])
    for split in ("train", "test"):
        kw = env_kwargs(cfg.env, split)
        assert kw["make_kwargs"] == {"length": 5} and type(kw["make_kwargs"]) is dict
    venv = make_vector_env("gymnasium", 2, seed=0, **env_kwargs(cfg.env, "train"))
    try:
        venv.reset()
        ends = [bool(venv.step(np.zeros(2, dtype=np.int64))[2][0]) for _ in range(5)]
    finally:
        venv.close()
    assert ends == [False] * 4 + [True]
    assert "make_kwargs" not in env_kwargs(compose_config(["env=gymnasium", f"env.train.id={BLINK}"]).env, "train")
    with pytest.raises(ConfigError, match="env.train.make_kwargs is a setting of env=gymnasium"):
        compose_config(["env=toy", "+env.train.make_kwargs.length=5"])
    with pytest.raises(ValueError, match="gymnasium cannot make env"):
        GymnasiumEnv(BLINK, make_kwargs={"no_such_argument": 1})


def test_rewards_add_up_over_a_skip() -> None:
    a, b = GymnasiumEnv(BLINK), GymnasiumEnv(BLINK, frame_skip=3)
    a.reset(seed=5)
    b.reset(seed=5)
    total = sum(a.step(1)[1] for _ in range(3))
    assert b.step(1)[1] == total
    a.close()
    b.close()


def test_spaces_we_cannot_use_are_named() -> None:
    with pytest.raises(ValueError, match=r"action space Box\(-2\.0, 2\.0, \(1,\), float32\).*Discrete"):
        GymnasiumEnv("Pendulum-v1")
    with pytest.raises(ValueError, match=r"observation space Box\(-1\.0, 1\.0, \(4,\), float32\).*rgb_array"):
        GymnasiumEnv("DeltaIrisTest/Vector-v0")
    with pytest.raises(ValueError, match="cannot make env 'NoSuchEnv-v0'"):
        GymnasiumEnv("NoSuchEnv-v0")


def test_rendered_env_shipped_with_gymnasium_vectorised_and_seeded() -> None:
    envs = [make_vector_env("gymnasium", 2, seed=4, id="CartPole-v1", max_episode_steps=5) for _ in range(2)]
    obs = [e.reset() for e in envs]
    assert obs[0].shape == (2, 64, 64, 3) and np.array_equal(obs[0], obs[1])
    assert envs[0].num_actions == 2 and envs[0].envs[0].render
    for _ in range(5):
        steps = [e.step(np.array([0, 1])) for e in envs]
        assert np.array_equal(steps[0][0], steps[1][0])
    assert steps[0][3].all() or steps[0][2].all()  # our 5-step limit (or the pole fell)
    for e in envs:
        e.close()


def test_a_module_path_id_registers_the_env(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_blink_envs.py").write_text(
        f"import gymnasium\ngymnasium.register(id='MyBlink-v0', entry_point='{__name__}:Blink')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_blink_envs", raising=False)
    env = GymnasiumEnv("my_blink_envs:MyBlink-v0")
    assert env.reset(seed=0).shape == (64, 64, 3)
    env.close()


def test_grey_and_float_frames_become_rgb() -> None:
    grey = np.tile(np.arange(64, dtype=np.uint8)[None, :], (32, 1))
    out = to_rgb64(grey)
    assert out.shape == (64, 64, 3) and np.array_equal(out[..., 0], out[..., 2])
    assert to_rgb64(np.ones((64, 64, 3), np.float32)).max() == 255


def test_config_of_the_gymnasium_group() -> None:
    cfg = compose_config(
        [
            "env=gymnasium",
            "env.train.id=CartPole-v1",
            "env.train.frame_skip=4",
            "env.train.max_pool=true",
            "env.train.max_episode_steps=100",
        ]
    )
    assert env_kwargs(cfg.env, "test") == {
        "id": "CartPole-v1",
        "max_episode_steps": 100,
        "frame_skip": 4,
        "max_pool": True,
    }
    with pytest.raises(ConfigError, match="env.train.id is required with env=gymnasium"):
        compose_config(["env=gymnasium"])
    with pytest.raises(ConfigError, match="env.train.frame_skip is a setting of env=gymnasium"):
        compose_config(["env=toy", "env.train.frame_skip=2"])
    with pytest.raises(ConfigError, match="env.train.max_pool needs env.train.frame_skip >= 2"):
        compose_config(["env=gymnasium", "env.train.id=CartPole-v1", "env.train.max_pool=true"])


#: a one-epoch run of seconds on a CPU (the shared tiny run on env=gymnasium)
TINY_GYM = ["env=gymnasium", *TINY_SETTINGS, "common.epochs=1", "common.memory_plan=false"]


@pytest.mark.parametrize(
    "extra",
    [
        ["env.train.id=CartPole-v1", "env.train.max_episode_steps=20"],
        [f"env.train.id={BLINK}", "env.train.frame_skip=2", "env.train.max_pool=true"],
    ],
    ids=["CartPole-v1", "custom"],
)
def test_a_tiny_run_end_to_end(extra: list[str], tmp_path: Path) -> None:
    import json

    assert train_cli.main([*TINY_GYM, *extra, f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["epoch"] == 1 and metrics["train/num_episodes"] >= 1
    assert np.isfinite(metrics["world_model/loss"]) and "test/return_mean" in metrics
    if "env.train.id=CartPole-v1" in extra:  # deltairis-eval plays its checkpoint outside the run folder too
        from deltairis.cli import eval as eval_cli

        last = tmp_path / "run" / "checkpoints" / "last.pt"
        args = ["--checkpoint", str(last), "--env", "gymnasium", "--env-id", "CartPole-v1", "--preset", "tiny",
                "--episodes", "2", "--num-envs", "2", "--no-report"]  # fmt: skip
        assert eval_cli.main(args) == 0


def test_eval_of_a_gymnasium_env_needs_its_id(capsys) -> None:
    from deltairis.cli import eval as eval_cli

    assert eval_cli.main(["--env", "gymnasium", "--random", "--no-report"]) == 2
    assert "--env gymnasium needs --env-id" in capsys.readouterr().err
    assert eval_cli.main(["--env", "gymnasium", "--env-id", BLINK, "--random", "--episodes", "2", "--no-report"]) == 0
    assert json.loads(capsys.readouterr().out)["num_episodes"] == 2
