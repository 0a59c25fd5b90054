"""Warm starts (deltairis.train.warm_start): a fresh run from a reference-layout or our own checkpoint,
loading only the chosen components, strictly; through the reference's ``initialization.*`` paths too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deltairis.agent import Agent, save_agent
from deltairis.checkpoint import UnsafeCheckpointError
from deltairis.cli import train as train_cli
from deltairis.config.models import make_agent_config
from deltairis.errors import CheckpointError
from deltairis.train.configuration import agent_config_from
from deltairis.train.warm_start import read_state_dict, warm_start

NUM_ACTIONS = 5  # the toy env


def _agent(seed: int, **overrides: object) -> Agent:
    torch.manual_seed(seed)
    cfg = make_agent_config("tiny", NUM_ACTIONS)
    if overrides:
        from omegaconf import OmegaConf

        from deltairis.train.configuration import compose_config

        lines = [f"++agent.overrides.{k}={v}" for k, v in overrides.items()]
        cfg = agent_config_from(
            OmegaConf.to_object(compose_config(["env=toy", "params=tiny", *lines])), NUM_ACTIONS
        )
    return Agent(cfg)


def _random_reference_file(path: Path, seed: int = 123, **overrides: object) -> dict[str, torch.Tensor]:
    """A reference-layout ``last.pt``: a flat state dict of random weights (``tokenizer.*`` ...)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {
        k: (torch.randn(v.shape, generator=gen, dtype=v.dtype) if v.is_floating_point() else v.clone())
        for k, v in _agent(seed, **overrides).state_dict().items()
    }
    torch.save(sd, path)
    return sd


def _same(module: torch.nn.Module, sd: dict[str, torch.Tensor], prefix: str) -> bool:
    return all(torch.equal(v, sd[f"{prefix}.{k}"]) for k, v in module.state_dict().items())


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("published") / "last.pt"
    return path, _random_reference_file(path)


def test_only_the_chosen_components_are_loaded(reference_file) -> None:
    path, sd = reference_file
    agent = _agent(0)
    fresh = {k: v.clone() for k, v in agent.state_dict().items()}
    assert warm_start(agent, path, ["world_model"]) == ["world_model"]
    assert _same(agent.world_model, sd, "world_model")
    assert all(torch.equal(v, fresh[f"tokenizer.{k}"]) for k, v in agent.tokenizer.state_dict().items())
    assert all(torch.equal(v, fresh[f"actor_critic.{k}"]) for k, v in agent.actor_critic.state_dict().items())
    assert not _same(agent.tokenizer, sd, "tokenizer")


def test_our_checkpoint_and_a_run_folder(tmp_path: Path) -> None:
    source = _agent(5)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save_agent(source, tmp_path / "run" / "checkpoints" / "last.pt")
    sd = source.state_dict()
    for where in (tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "run"):
        agent = _agent(0)
        assert warm_start(agent, where, ["tokenizer", "world_model", "actor_critic"]) == [
            "tokenizer",
            "world_model",
            "actor_critic",
        ]
        assert all(torch.equal(v, sd[k]) for k, v in agent.state_dict().items())
    assert set(read_state_dict(tmp_path / "run")) == set(sd)


def test_float64_model_takes_the_weights_in_its_dtype(reference_file) -> None:
    path, sd = reference_file
    agent = _agent(0).double()
    warm_start(agent, path, ["actor_critic"])
    params = agent.actor_critic.state_dict()
    assert {v.dtype for v in params.values() if v.is_floating_point()} == {torch.float64}
    assert all(
        torch.equal(v.float(), sd[f"actor_critic.{k}"]) for k, v in params.items() if v.is_floating_point()
    )


def test_a_mis_shaped_component_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    sd = _random_reference_file(path, **{"world_model.head_hidden": 96})
    agent = _agent(0)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"world_model\.head_latents\.head_module\.0\.weight has shape \(96, 128\)"
    ):
        warm_start(agent, path, ["tokenizer", "world_model"])
    # checked before anything is loaded: the tokenizer (which fits) was not loaded either
    assert all(torch.equal(v, before[k]) for k, v in agent.state_dict().items())
    # the components that fit load on their own
    assert warm_start(agent, path, ["tokenizer", "actor_critic"]) == ["tokenizer", "actor_critic"]
    assert _same(agent.tokenizer, sd, "tokenizer")


def test_a_file_without_the_component_or_unreadable(tmp_path: Path, reference_file) -> None:
    _, sd = reference_file
    only_tokenizer = tmp_path / "tok.pt"
    torch.save({k: v for k, v in sd.items() if k.startswith("tokenizer.")}, only_tokenizer)
    with pytest.raises(CheckpointError, match=r"no world_model\.\* tensors.*load_world_model=false"):
        warm_start(_agent(0), only_tokenizer, ["world_model"])
    assert warm_start(_agent(0), only_tokenizer, ["tokenizer"]) == ["tokenizer"]
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        warm_start(_agent(0), broken, ["tokenizer"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        warm_start(_agent(0), tmp_path / "missing.pt", ["tokenizer"])


class _Crafted:
    """Unpickling it would call ``open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.marker), "w"))


def test_a_crafted_warm_start_file_is_refused_unread(tmp_path: Path) -> None:
    marker, crafted = tmp_path / "marker", tmp_path / "crafted.pt"
    torch.save({"tokenizer.x": _Crafted(marker)}, crafted)
    agent = _agent(0)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    with pytest.raises(UnsafeCheckpointError, match="crafted.pt"):
        warm_start(agent, crafted, ["tokenizer"])
    assert not marker.exists()  # nothing ran
    assert all(torch.equal(v, before[k]) for k, v in agent.state_dict().items())  # nothing loaded


def test_warm_start_of_a_run_through_the_reference_paths(
    reference_file, tmp_path: Path, tiny_overrides
) -> None:
    """A fresh tiny run (no training) from a reference-layout file, keeping a fresh actor-critic: the
    saved agent holds the file's tokenizer and world model."""
    path, sd = reference_file
    run = tmp_path / "run"
    rc = train_cli.main(
        [
            *tiny_overrides,
            "common.epochs=1",
            "common.memory_plan=false",
            "training.should=false",
            f"hydra.run.dir={run}",
            f"params.initialization.path_to_checkpoint={path}",
            "params.initialization.load_actor_critic=False",
        ]
    )
    assert rc == 0
    saved = read_state_dict(run / "checkpoints" / "last.pt")
    assert all(torch.equal(saved[k], sd[k]) for k in sd if k.startswith(("tokenizer.", "world_model.")))
    ac = [k for k in sd if k.startswith("actor_critic.") and sd[k].is_floating_point()]
    assert not all(torch.equal(saved[k], sd[k]) for k in ac)


def test_a_mis_shaped_warm_start_stops_the_run(tmp_path: Path, capsys, tiny_overrides) -> None:
    path = tmp_path / "wide.pt"
    _random_reference_file(path, **{"world_model.head_hidden": 96})
    rc = train_cli.main(
        [
            *tiny_overrides,
            "common.epochs=1",
            "common.memory_plan=false",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"initialization.path_to_checkpoint={path}",
        ]
    )
    assert rc == 1
    assert "world_model.head_latents.head_module.0.weight has shape (96, 128)" in capsys.readouterr().err


def test_a_missing_checkpoint_stops_before_a_run_folder_is_made(
    tmp_path: Path, capsys, tiny_overrides
) -> None:
    run = tmp_path / "run"
    rc = train_cli.main(
        [
            *tiny_overrides,
            f"hydra.run.dir={run}",
            f"params.initialization.path_to_checkpoint={tmp_path / 'nope.pt'}",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "agent.path_to_ckpt (initialization.path_to_checkpoint)" in err and "nope.pt" in err
    assert not run.exists()
