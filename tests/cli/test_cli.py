"""The three entry points: deltairis-train (overrides, errors, resume), deltairis-play, deltairis-eval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deltairis.cli import eval as eval_cli
from deltairis.cli import play as play_cli
from deltairis.cli import train as train_cli

TINY = [
    "env=toy", "params=tiny", "common.device=cpu", "wandb.mode=disabled", "common.progress_bar=false",
    "common.seed=3", "collection.train.num_envs=2", "collection.train.num_steps_first_epoch=40",
    "collection.train.num_steps=10", "collection.test.num_envs=2", "collection.test.num_episodes=2",
    "training.tokenizer.steps_first_epoch=1", "training.tokenizer.steps_per_epoch=1", "training.tokenizer.batch_size=2",
    "training.world_model.steps_first_epoch=1", "training.world_model.steps_per_epoch=1",
    "training.world_model.batch_size=2", "training.world_model.seq_len=4",
    "training.actor_critic.start_after_epochs=0", "training.actor_critic.steps_first_epoch=1",
    "training.actor_critic.steps_per_epoch=1",
    "training.actor_critic.batch_size=2", "evaluation.every=1", "evaluation.num_batches=1",
    "evaluation.num_reconstructions=2", "+agent.overrides.actor_critic.horizon=2",
]


def _env_with_entry_points() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "run"
    assert train_cli.main([*TINY, "common.epochs=1", f"hydra.run.dir={d}"]) == 0
    return d


def test_help_and_print_config(capsys) -> None:
    assert train_cli.main(["--help"]) == 0
    assert "common.resume=true" in capsys.readouterr().out
    assert train_cli.main(["--cfg", "env=toy", "params=tiny", "common.epochs=4"]) == 0
    out = capsys.readouterr().out
    assert "preset: tiny" in out and "epochs: 4" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["common.foo=1"], "common.foo"), (["common.epochs=ten"], "common.epochs"), (["env=atari"], "env.train.id"),
     (["--bogus"], "--bogus")],
)
def test_bad_arguments_are_rejected_naming_the_key(capsys, args: list[str], needle: str) -> None:
    try:
        rc = train_cli.main(args)
    except SystemExit as exc:  # unknown options exit through argparse-style SystemExit
        rc, err = 2, str(exc.code)
    else:
        err = capsys.readouterr().err
    assert rc == 2 and needle in err


def test_fresh_run_in_outputs_folder_and_resume(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_cli.main([*TINY, "common.epochs=1"]) == 0
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1
    assert train_cli.main(["common.resume=true", f"hydra.run.dir={runs[0]}", "common.epochs=2"]) == 0
    epochs = [json.loads(x)["epoch"] for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert "epoch 2" in (runs[0] / "train.log").read_text()


def test_resume_script_calls_the_installed_entry_point(run: Path, tmp_path) -> None:
    if shutil.which("deltairis-train", path=_env_with_entry_points()["PATH"]) is None:
        pytest.skip("deltairis-train is not installed")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    r = subprocess.run(["bash", str(copy / "scripts/resume.sh"), "common.epochs=2"], check=False, capture_output=True,
                       text=True, env=_env_with_entry_points(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    epochs = [json.loads(x)["epoch"] for x in (copy / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_corrupt_checkpoint_is_reported(run: Path, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "checkpoints/optimizer.pt").write_bytes(b"garbage")
    assert train_cli.main(["common.resume=true", f"hydra.run.dir={copy}", "common.epochs=2"]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert (copy / "checkpoints/optimizer.pt").read_bytes() == b"garbage"


def test_resume_prints_the_saved_config_with_the_overrides(run: Path, capsys) -> None:
    before = (run / "metrics.jsonl").read_text()
    assert train_cli.main(["--cfg", "common.resume=true", f"hydra.run.dir={run}", "common.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "resume: true" in out and "preset: tiny" in out and "seed: 3" in out
    assert (run / "metrics.jsonl").read_text() == before  # printed, not trained
    assert train_cli.main(["common.resume=true", f"hydra.run.dir={run}", "env=crafter"]) == 2
    assert "groups cannot change" in capsys.readouterr().err
    assert train_cli.main(["common.resume=true", f"hydra.run.dir={run}", "common.nope=1"]) == 2
    assert "common.nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], "env.gif"), (["-a"], "agent_world_model.gif"), (["-w", "--actions", "1,right,2"], "world_model.gif")],
)
def test_play_writes_gifs(run: Path, flags: list[str], expected: str, capsys) -> None:
    from PIL import Image

    assert play_cli.main(["--run-dir", str(run), "--headless", "-h", "--steps", "4", *flags]) == 0
    path = run / "media" / "play" / expected
    assert capsys.readouterr().out.strip().endswith(expected)
    with Image.open(path) as img:
        assert img.n_frames >= 2 and img.width == 64 * 4 and img.height == 64 * 4 + 14


def test_play_episodes_and_bad_actions(run: Path, capsys) -> None:
    assert play_cli.main(["--run-dir", str(run), "--headless", "-e", "--episodes", "2"]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    assert play_cli.main(["--run-dir", str(run), "--headless", "-w", "--actions", "1,jump"]) == 2
    assert "jump" in capsys.readouterr().err


def test_play_script_calls_the_installed_entry_point(run: Path) -> None:
    if shutil.which("deltairis-play", path=_env_with_entry_points()["PATH"]) is None:
        pytest.skip("deltairis-play is not installed")
    r = subprocess.run(["bash", str(run / "scripts/play.sh"), "--steps", "3", "--output", str(run / "x.gif")],
                       check=False, capture_output=True, text=True, env=_env_with_entry_points(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "x.gif").stat().st_size > 0


def test_eval(run: Path, capsys, tmp_path, monkeypatch) -> None:
    assert eval_cli.main(["--run-dir", str(run), "--episodes", "3", "--num-envs", "2"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["num_episodes"] == 3 and m["episode_length_mean"] == 30
    assert (run / "eval" / "report.md").is_file()  # the report goes to RUN/eval by default
    monkeypatch.chdir(tmp_path)  # without a run folder the report goes to ./eval-report
    assert eval_cli.main(["--env", "toy", "--random", "--episodes", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["num_episodes"] == 4
    assert (tmp_path / "eval-report" / "report.json").is_file()
    assert eval_cli.main([]) == 2
    assert "--run-dir" in capsys.readouterr().err
