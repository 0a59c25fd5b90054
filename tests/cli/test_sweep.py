"""deltairis-train as a Hydra application: multirun sweeps (one complete run folder per job), launcher
plugins, --cfg / --info / shell completion, and sweep errors that exit with code 2 naming the key."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deltairis.cli import train as train_cli

# A tiny run (toy env, tiny preset, 1 epoch of a few steps); the seed is left to the sweep.
TINY = [
    "env=toy",
    "params=tiny",
    "common.device=cpu",
    "wandb.mode=disabled",
    "common.progress_bar=false",
    "common.epochs=1",
    "common.num_threads=1",
    "env.num_threads=1",
    "collection.train.num_envs=2",
    "collection.train.num_steps_first_epoch=40",
    "collection.train.num_steps=10",
    "collection.test.num_envs=2",
    "collection.test.num_episodes=2",
    "training.tokenizer.steps_first_epoch=1",
    "training.tokenizer.steps_per_epoch=1",
    "training.tokenizer.batch_size=2",
    "training.world_model.steps_first_epoch=1",
    "training.world_model.steps_per_epoch=1",
    "training.world_model.batch_size=2",
    "training.world_model.seq_len=4",
    "training.actor_critic.start_after_epochs=0",
    "training.actor_critic.steps_first_epoch=1",
    "training.actor_critic.steps_per_epoch=1",
    "training.actor_critic.batch_size=2",
    "evaluation.every=1",
    "evaluation.num_batches=1",
    "evaluation.num_reconstructions=2",
    "+agent.overrides.actor_critic.horizon=2",
]



def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (find_spec raises when a parent package is missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False

def _env_with_entry_points() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _entry_point() -> str:
    exe = shutil.which("deltairis-train", path=_env_with_entry_points()["PATH"])
    if exe is None:
        pytest.skip("deltairis-train is not installed")
    return exe


def _assert_complete_run_folder(job: Path, seed: int) -> None:
    saved = OmegaConf.load(job / "config" / "trainer.yaml")
    assert saved.common.seed == seed and saved.common.resume is False
    for name in (
        "checkpoints/last.pt",
        "checkpoints/optimizer.pt",
        "checkpoints/trainer_state.pt",
        "scripts/resume.sh",
        "scripts/play.sh",
        "train.log",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
    ):
        assert (job / name).is_file(), f"{job.name}: {name} missing"
    assert os.access(job / "scripts" / "resume.sh", os.X_OK)
    epochs = [json.loads(x)["epoch"] for x in (job / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]
    episodes = [json.loads(x) for x in (job / "episodes.jsonl").read_text().splitlines()]
    assert [(e["split"], e["epoch"]) for e in episodes if e["split"] == "test"] == [("test", 1)] * 2
    assert f"common.seed={seed}" in OmegaConf.load(job / ".hydra" / "overrides.yaml")
    assert "epoch 1" in (job / "train.log").read_text()


@pytest.mark.slow
def test_two_job_sweep_end_to_end_through_the_entry_point(tmp_path: Path) -> None:
    exe = _entry_point()
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [exe, "-m", *TINY, "common.seed=0,1", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        env=_env_with_entry_points(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    for seed, job in enumerate(jobs):
        _assert_complete_run_folder(job, seed)
    assert (sweep / "multirun.yaml").is_file()
    assert not (tmp_path / "outputs").exists()  # no stray single-run folder
    # deltairis-eval --aggregate over the sweep: one final score per job (its last evaluation's test episodes)
    from deltairis.cli import eval as eval_cli

    report = tmp_path / "aggregate"
    assert eval_cli.main(["--aggregate", str(sweep), "--output", str(report), "--reps", "2000"]) == 0
    agg = json.loads((report / "aggregate.json").read_text())
    toy = agg["other"]["toy"]["games"]["toy"]
    assert [r["run"] for r in toy["runs"]] == [str(job) for job in jobs]
    for r, job in zip(toy["runs"], jobs):
        test = [json.loads(x) for x in (job / "episodes.jsonl").read_text().splitlines() if '"test"' in x]
        assert r["score"] == pytest.approx(sum(e["return"] for e in test) / len(test))
    assert "toy: no random/human reference scores" in "\n".join(agg["notes"])
    assert (report / "aggregate.md").is_file()
    # Each job folder resumes on its own through its script (the non-Hydra resume path).
    r = subprocess.run(
        ["bash", str(jobs[1] / "scripts" / "resume.sh"), "common.epochs=2"],
        check=False,
        capture_output=True,
        text=True,
        env=_env_with_entry_points(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    epochs = [json.loads(x)["epoch"] for x in (jobs[1] / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert OmegaConf.load(jobs[1] / "config" / "trainer.yaml").common.seed == 1


def test_default_sweep_folder_is_hydras_multirun_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--cfg", "hydra", "-p", "hydra.sweep", *TINY]) == 0
    out = capsys.readouterr().out
    assert "dir: multirun/" in out and "subdir: ${hydra.job.num}" in out


@pytest.mark.parametrize(
    ("launcher", "target", "plugin"),
    [
        ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher", None),
        (
            "submitit_local",
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
            "hydra_plugins.hydra_submitit_launcher",
        ),
        (
            "submitit_slurm",
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
            "hydra_plugins.hydra_submitit_launcher",
        ),
    ],
)
def test_launcher_group_is_selectable(launcher: str, target: str, plugin: str | None, capsys) -> None:
    if plugin is not None and not _installed(plugin):
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'delta-iris[slurm]')")
    assert (
        train_cli.main(["--cfg", "hydra", "-p", "hydra.launcher", f"hydra/launcher={launcher}", *TINY]) == 0
    )
    assert f"_target_: {target}" in capsys.readouterr().out


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(tmp_path: Path) -> None:
    if not _installed("hydra_plugins.hydra_submitit_launcher"):
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'delta-iris[slurm]')")
    exe = _entry_point()
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [exe, "-m", "hydra/launcher=submitit_local", *TINY, "common.seed=5", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        env=_env_with_entry_points(),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_complete_run_folder(sweep / "0", 5)
    assert (sweep / ".submitit").is_dir()


def test_info_and_shell_completion(capsys, monkeypatch) -> None:
    assert train_cli.main(["--info", "defaults", "env=toy", "params=tiny"]) == 0
    out = capsys.readouterr().out
    assert "env/toy" in out and "params/tiny" in out and "trainer_schema" in out
    assert train_cli.main(["-sc", "install=bash"]) == 0
    assert "hydra_bash_completion" in capsys.readouterr().out
    monkeypatch.setenv("COMP_LINE", "deltairis-train env=")
    assert train_cli.main(["-sc", "query=bash"]) == 0
    assert set(capsys.readouterr().out.split()) >= {"env=atari", "env=crafter", "env=toy"}
    monkeypatch.setenv("COMP_LINE", "deltairis-train hydra/launcher=")
    assert train_cli.main(["--shell-completion", "query=bash"]) == 0
    assert "hydra/launcher=basic" in capsys.readouterr().out.split()


def test_cfg_job_prints_the_typed_config(capsys) -> None:
    assert train_cli.main(["--cfg", "job", "-p", "common", "env=toy", "params=tiny", "common.seed=9"]) == 0
    out = capsys.readouterr().out
    assert "seed: 9" in out and "epochs: 4" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "env=toy", "params=tiny", "common.seed=0,x"], "common.seed"),
        (["-m", "env=toy", "params=tiny", "common.seed=0,1", "common.epochz=1"], "common.epochz"),
        (["-m", "env=toy,atari", "params=tiny"], "env.train.id"),  # the second job's config is invalid
        (["-m", "env=toy", "training.tokenizer.batch_size=2,0"], "training.tokenizer.batch_size"),
        (["-m", "env.train.id=BreakoutNoFrameskip-v4,PongNoFrameskip-v4", "common.seed=0,1"], "env=atari"),
        (["-m", "common.resume=true"], "scripts/resume.sh"),
        (["env=toy", "common.seed=0,1"], "multirun"),  # a sweep needs -m
        (["--cfg", "job", "-m", "env=toy"], "Only one of"),
    ],
)
def test_bad_sweeps_exit_2_naming_the_key(
    args: list[str], needle: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()  # nothing started


def test_every_value_of_an_atari_sweep_is_validated_before_it_starts() -> None:
    from deltairis.train.configuration import compose_config

    games = "env.train.id=BreakoutNoFrameskip-v4,PongNoFrameskip-v4"
    sets = train_cli._job_override_sets(["env=atari", "params=atari", games, "common.seed=range(3)"], True)
    assert sets[0] == ["env=atari", "params=atari", "env.train.id=BreakoutNoFrameskip-v4", "common.seed=0"]
    assert len(sets) == 1 + 1 + 2  # the first job, then each other value of each swept key
    assert {s[2] for s in sets} == {"env.train.id=BreakoutNoFrameskip-v4", "env.train.id=PongNoFrameskip-v4"}
    assert {s[3] for s in sets} == {"common.seed=0", "common.seed=1", "common.seed=2"}
    cfgs = [compose_config(s) for s in sets]
    assert {c.env.train.id for c in cfgs} == {"BreakoutNoFrameskip-v4", "PongNoFrameskip-v4"}
    assert train_cli._job_override_sets(["env=toy", "common.seed=0,1"], False) == [
        ["env=toy", "common.seed=0,1"]
    ]


def test_a_bad_value_exits_2_before_hydra_creates_the_run_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    # composes fine, but the schema's value checks refuse it: the check runs before Hydra's mkdir
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["env=toy", "params=tiny", "common.epochs=0"]) == 2
    assert "common.epochs" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_the_task_gets_the_typed_config_in_hydras_run_folder(tmp_path: Path, monkeypatch) -> None:
    from deltairis.config.schema import TrainerConfig
    from deltairis.train import trainer

    seen: list[tuple[object, Path]] = []
    monkeypatch.setattr(trainer, "train", lambda cfg, run_dir: seen.append((cfg, Path(run_dir))))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run = tmp_path / "run"
    assert train_cli.main([*TINY, "common.seed=4", f"hydra.run.dir={run}"]) == 0
    [(cfg, run_dir)] = seen
    assert isinstance(cfg, TrainerConfig) and cfg.common.seed == 4 and cfg.env.name == "toy"
    assert run_dir == run and (run / ".hydra" / "overrides.yaml").is_file() and (run / "train.log").is_file()
    assert "HYDRA_FULL_ERROR" not in os.environ  # Hydra's switch is set only while Hydra runs


def test_an_unexpected_error_in_the_run_is_not_reported_as_bad_arguments(tmp_path: Path, monkeypatch) -> None:
    from deltairis.train import trainer

    def boom(cfg: object, run_dir: object) -> None:
        raise ValueError("a bug in the trainer")

    monkeypatch.setattr(trainer, "train", boom)
    with pytest.raises(ValueError, match="a bug in the trainer"):  # a traceback, not exit status 2
        train_cli.main([*TINY, f"hydra.run.dir={tmp_path / 'run'}"])


def test_every_job_of_a_sweep_is_checked_before_the_first_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    from deltairis.config.schema import TrainerConfig
    from deltairis.train import trainer

    started: list[TrainerConfig] = []
    monkeypatch.setattr(trainer, "train", lambda cfg, run_dir: started.append(cfg))
    monkeypatch.chdir(tmp_path)
    # the first job (seed 0, batch size 2) is valid; the bad value is the last value of the last swept key
    args = ["-m", *TINY, "common.seed=0,1", "training.tokenizer.batch_size=2,-1"]
    assert train_cli.main(args) == 2
    assert "training.tokenizer.batch_size" in capsys.readouterr().err
    assert started == [] and not (tmp_path / "multirun").exists()
    assert train_cli.main(["-m", *TINY, "common.seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 0
    assert [c.common.seed for c in started] == [0, 1]


def test_under_torchrun_rank_0_prints_and_the_others_exit(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert train_cli.main(["--cfg", "job", "env=toy", "params=tiny"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert train_cli.main(["--cfg", "job", "env=toy", "params=tiny"]) == 0
    assert "preset: tiny" in capsys.readouterr().out
    assert train_cli.main(["-m", "env=toy", "common.seed=0,1"]) == 2  # before joining any group
    assert "torchrun" in capsys.readouterr().err
    assert train_cli.main(["env=toy", "distributed.timeout_s=soon"]) == 2
    assert "distributed.timeout_s" in capsys.readouterr().err
