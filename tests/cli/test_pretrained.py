"""Published-style checkpoints outside a run folder (deltairis-play / deltairis-eval), and the run scripts
working from a shell where the environment is not activated."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from deltairis.agent import Agent, CheckpointError, save_agent
from deltairis.cli import eval as eval_cli
from deltairis.cli import play as play_cli
from deltairis.cli import train as train_cli
from deltairis.cli.common import default_config, load_run
from deltairis.config.models import make_agent_config
from deltairis.train.configuration import ConfigError

NUM_ACTIONS = 5  # the toy env


@pytest.fixture(scope="module")
def tiny_agent() -> Agent:
    torch.manual_seed(0)
    return Agent(make_agent_config("tiny", NUM_ACTIONS))


@pytest.fixture(scope="module")
def reference_ckpt(tmp_path_factory, tiny_agent: Agent) -> Path:
    """A reference-layout last.pt: a flat state dict (tokenizer.*, world_model.*, actor_critic.*), no config."""
    sd = {k: v.detach().clone() for k, v in tiny_agent.state_dict().items()}
    assert {k.split(".")[0] for k in sd} == {"tokenizer", "world_model", "actor_critic"}
    path = tmp_path_factory.mktemp("published") / "last.pt"
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def own_ckpt(tmp_path_factory, tiny_agent: Agent) -> Path:
    path = tmp_path_factory.mktemp("ours") / "last.pt"
    save_agent(tiny_agent, path)
    assert torch.load(path, weights_only=True)["format"]  # our self-describing format, not a flat dict
    return path


def _gif_frames(path: Path) -> int:
    """Frames of a GIF (plays use -h: the header text differs per step, so no frame is merged away)."""
    with Image.open(path) as img:
        assert img.format == "GIF"
        return img.n_frames


def _notices(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "deltairis.cli")


def test_play_reference_checkpoint_outside_a_run_folder(reference_ckpt: Path, tmp_path: Path, monkeypatch,
                                                        caplog, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    gif = tmp_path / "out.gif"
    with caplog.at_level(logging.WARNING, logger="deltairis.cli"):
        rc = play_cli.main(["--checkpoint", str(reference_ckpt), "--preset", "tiny", "-h", "--steps", "3", "--output", str(gif)])
    assert rc == 0, capsys.readouterr().err
    assert _gif_frames(gif) >= 2
    assert "default configuration of the tiny preset (env=toy params=tiny)" in _notices(caplog)


def test_folder_holding_only_checkpoints_last_pt(reference_ckpt: Path, tmp_path: Path, monkeypatch, caplog,
                                                 capsys) -> None:
    folder = tmp_path / "my-agent"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(reference_ckpt, folder / "checkpoints" / "last.pt")
    monkeypatch.chdir(folder)
    with caplog.at_level(logging.WARNING, logger="deltairis.cli"):
        rc = play_cli.main(["-h", "--steps", "3"])  # no flag at all: the preset is recognised from the tensors
    assert rc == 0, capsys.readouterr().err
    assert _gif_frames(folder / "media" / "play" / "env.gif") >= 2
    notes = _notices(caplog)
    assert "fits the tiny preset" in notes and "default configuration of the tiny preset" in notes
    assert str(folder / "media" / "play" / "env.gif") in capsys.readouterr().out

    assert eval_cli.main(["--episodes", "2", "--num-envs", "2"]) == 0  # the current folder, as for play
    m = json.loads(capsys.readouterr().out)
    assert m["num_episodes"] == 2 and m["episode_length_mean"] == 30
    report = json.loads((folder / "eval" / "report.json").read_text())
    assert report["env"] == "toy" and "tiny preset, 5 actions" in report["agent"]
    assert report["settings"]["temperature"] == float(default_config("tiny").collection.test.temperature)
    assert "tiny preset" in (folder / "eval" / "report.md").read_text()

    monkeypatch.chdir(tmp_path)
    assert play_cli.main(["--run-dir", str(folder), "-a", "-h", "--steps", "2", "--output", str(tmp_path / "wm.gif")]) == 0
    assert _gif_frames(tmp_path / "wm.gif") >= 2


def test_eval_reference_checkpoint(reference_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    rc = eval_cli.main(["--checkpoint", str(reference_ckpt), "--preset", "tiny", "--episodes", "2", "--num-envs", "2",
                        "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert m["num_episodes"] == 2 and report["returns"]["mean"] == pytest.approx(m["return_mean"])
    assert (out / "report.md").is_file() and (out / "returns.png").is_file()
    # --env toy implies the tiny preset, as before
    assert eval_cli.main(["--checkpoint", str(reference_ckpt), "--env", "toy", "--episodes", "1", "--no-report"]) == 0
    assert json.loads(capsys.readouterr().out)["num_episodes"] == 1


def test_own_checkpoint_format(own_ckpt: Path, tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="deltairis.cli"):
        rc = eval_cli.main(["--checkpoint", str(own_ckpt), "--preset", "crafter", "--episodes", "2", "--num-envs", "2",
                            "--output", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["num_episodes"] == 2
    assert "ignoring --preset crafter" in _notices(caplog)  # our format names its own preset
    assert play_cli.main(["--checkpoint", str(own_ckpt), "-h", "--steps", "3", "--output", str(tmp_path / "o.gif")]) == 0
    assert _gif_frames(tmp_path / "o.gif") >= 2
    cfg, agent = load_run(None, own_ckpt, "cpu")
    assert cfg.agent.preset == "tiny" and cfg.env.name == "toy" and agent.config.num_actions == NUM_ACTIONS


def test_not_a_run_folder_and_bad_checkpoints(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert play_cli.main(["--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/last.pt" in err and "--checkpoint" in err and "run folder" in err
    assert eval_cli.main([str(tmp_path)]) == 2
    assert "checkpoints/last.pt" in capsys.readouterr().err
    bogus = tmp_path / "bogus.pt"
    torch.save({"tokenizer.encoder_act_emb.weight": torch.zeros(5, 7)}, bogus)
    with pytest.raises(CheckpointError, match="no preset fits"):
        load_run(None, bogus, "cpu")
    with pytest.raises(ConfigError, match="--checkpoint"):
        load_run(None, None, "cpu")


def test_default_configs_of_the_presets() -> None:
    with pytest.raises(ConfigError, match="--env-id"):
        default_config("atari")
    cfg = default_config("atari", "BreakoutNoFrameskip-v4")
    assert cfg.env.name == "atari" and cfg.env.test.id == "BreakoutNoFrameskip-v4" and cfg.agent.preset == "atari"
    assert default_config("crafter").env.name == "crafter" and default_config("crafter").agent.preset == "crafter"
    assert default_config("tiny").env.name == "toy"
    with pytest.raises(ConfigError, match="unknown preset"):
        default_config("huge")


# -- run scripts without an activated environment ----------------------------------------------------------
TINY = [
    "env=toy", "params=tiny", "common.device=cpu", "wandb.mode=disabled", "common.progress_bar=false",
    "common.seed=5", "collection.train.num_envs=2", "collection.train.num_steps_first_epoch=40",
    "collection.train.num_steps=10", "collection.test.num_envs=2", "collection.test.num_episodes=2",
    "training.tokenizer.steps_first_epoch=1", "training.tokenizer.steps_per_epoch=1", "training.tokenizer.batch_size=2",
    "training.world_model.steps_first_epoch=1", "training.world_model.steps_per_epoch=1",
    "training.world_model.batch_size=2", "training.world_model.seq_len=4",
    "training.actor_critic.start_after_epochs=0", "training.actor_critic.steps_first_epoch=1",
    "training.actor_critic.steps_per_epoch=1", "training.actor_critic.batch_size=2", "evaluation.every=1",
    "evaluation.num_batches=1", "evaluation.num_reconstructions=2", "+agent.overrides.actor_critic.horizon=2",
]
BARE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LC_ALL": "C.UTF-8"}  # no venv, no VIRTUAL_ENV


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scripts") / "run"
    assert train_cli.main([*TINY, "common.epochs=1", f"hydra.run.dir={d}"]) == 0
    return d


def _bash(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(script), *args], capture_output=True, text=True, env=BARE_ENV,
                          cwd="/", timeout=600, check=False)


def test_scripts_name_this_interpreter(run: Path) -> None:
    for name, module in (("resume.sh", "deltairis.cli.train"), ("play.sh", "deltairis.cli.play")):
        text = (run / "scripts" / name).read_text()
        assert f"PYTHON={shlex.quote(sys.executable)}\n" in text
        assert f'exec "$PYTHON" -m {module} ' in text


def test_resume_script_works_without_an_activated_environment(run: Path, tmp_path: Path) -> None:
    # play.sh under the same bare environment: test_scripts_quote_an_awkward_interpreter_path
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    r = _bash(copy / "scripts" / "resume.sh", "common.epochs=2")
    assert r.returncode == 0, r.stderr[-2000:]
    epochs = [json.loads(x)["epoch"] for x in (copy / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_scripts_quote_an_awkward_interpreter_path(run: Path, tmp_path: Path, monkeypatch) -> None:
    """play.sh without an activated environment, from an interpreter path with a space, quote, $ and backquote."""
    from deltairis.train.run_folder import make_layout

    odd = tmp_path / "my env's $HOME `x`" / "bin"
    odd.mkdir(parents=True)
    wrapper = odd / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    wrapper.chmod(0o755)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    make_layout(copy)  # rewrites scripts/ (the code a new run uses)
    assert str(wrapper) not in (run / "scripts" / "play.sh").read_text()
    r = _bash(copy / "scripts" / "play.sh", "-h", "--steps", "2", "--output", str(tmp_path / "q.gif"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _gif_frames(tmp_path / "q.gif") >= 2


def test_eval_checkpoint_for_another_action_set_is_named(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    path = tmp_path / "seven.pt"
    save_agent(Agent(make_agent_config("tiny", NUM_ACTIONS + 2)), path)
    rc = eval_cli.main(["--checkpoint", str(path), "--env", "toy", "--episodes", "1", "--no-report"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{NUM_ACTIONS + 2} actions" in err and "check --env" in err and "NameError" not in err
