"""Configuration: Hydra overrides, typed schema errors naming the key, packaged YAML files."""

from __future__ import annotations

from importlib import resources

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from deltairis.config import make_agent_config
from deltairis.config.schema import EnvConfig, TrainerConfig
from deltairis.train.configuration import (
    ConfigError,
    agent_config_from,
    apply_overrides,
    compose_config,
    diff_dicts,
    load_run_config,
    save_config,
    typed_config,
    untyped_config,
)
from deltairis.train.env_config import env_kwargs


def test_default_is_crafter_with_the_reference_schedule() -> None:
    cfg = compose_config([])
    assert cfg.env.name == "crafter" and cfg.agent.preset == "crafter"
    assert cfg.env.train.max_episode_steps == 10_000
    assert cfg.common.epochs == 1000
    c = cfg.collection.train
    assert (c.num_envs, c.num_steps, c.num_steps_first_epoch, c.stop_after_epochs) == (16, 10_000, 100_000, 991)
    assert (c.epsilon, c.temperature) == (0.01, 1.0)
    assert (cfg.collection.test.num_envs, cfg.collection.test.num_episodes) == (32, 64)
    t = cfg.training
    assert (t.tokenizer.steps_per_epoch, t.tokenizer.steps_first_epoch, t.tokenizer.batch_size) == (500, 5000, 32)
    assert (t.world_model.steps_per_epoch, t.world_model.steps_first_epoch, t.world_model.seq_len) == (500, 2500, 21)
    assert (t.actor_critic.steps_per_epoch, t.actor_critic.batch_size) == (500, 86)
    assert {t[c].sampling_alpha for c in ("tokenizer", "world_model", "actor_critic")} == {5.0}
    assert t.tokenizer.mixed_precision and t.world_model.mixed_precision and not t.actor_critic.mixed_precision
    assert cfg.evaluation.every == 50
    assert cfg.wandb.mode == "online" and cfg.common.device == "auto"


def test_reference_atari_command_line() -> None:
    cfg = compose_config(
        ["env=atari", "params=atari", "env.train.id=BreakoutNoFrameskip-v4", "wandb.mode=disabled",
         "common.device=cpu", "common.seed=3", "common.epochs=12"]
    )
    assert cfg.env.train.id == cfg.env.test.id == "BreakoutNoFrameskip-v4"  # test id follows the train id
    assert (cfg.env.train.noop_max, cfg.env.test.noop_max) == (30, 1)
    assert (cfg.env.train.max_episode_frames, cfg.env.test.max_episode_frames) == (20_000, 108_000)
    assert cfg.common.seed == 3 and cfg.common.epochs == 12 and cfg.wandb.mode == "disabled"
    t = cfg.training
    assert (t.tokenizer.start_after_epochs, t.world_model.start_after_epochs, t.actor_critic.start_after_epochs) == (5, 50, 75)
    assert (t.tokenizer.weight_decay, t.world_model.weight_decay) == (0.0, 0.01)
    assert (t.world_model.batch_size, t.world_model.seq_len) == (64, 26)
    assert cfg.collection.train.stop_after_epochs == 491 and cfg.evaluation.every == 25


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["common.foo=1"], r"common\.foo"),
        (["+foo=3"], r"foo"),
        (["common.epochs=abc"], r"common\.epochs"),
        (["common.seed=1.5"], r"common\.seed"),
        (["training.tokenizer.batch_size=big"], r"training\.tokenizer\.batch_size"),
        (["collection.train.epsilon=2"], r"collection\.train\.epsilon"),
        (["common.epochs=0"], r"common\.epochs"),
        (["wandb.mode=sometimes"], r"wandb\.mode"),
        (["env=nope"], r"env/nope"),
        (["env=atari"], r"env\.train\.id"),
        (["training.world_model.learning_rate=-1"], r"training\.world_model\.learning_rate"),
        (["common.epochs"], r"common\.epochs"),
        (["env.train.id=BreakoutNoFrameskip-v4"], r"env\.train\.id.*env=atari"),  # a game for Crafter
    ],
)
def test_bad_overrides_name_the_key(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        compose_config(overrides)


def test_yaml_files_ship_inside_the_package() -> None:
    root = resources.files("deltairis.config")
    for name in ("trainer.yaml", "env/crafter.yaml", "env/atari.yaml", "env/toy.yaml",
                 "params/crafter.yaml", "params/atari.yaml", "params/tiny.yaml"):
        assert root.joinpath(name).is_file(), name


def test_compose_does_not_depend_on_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert compose_config(["env=toy", "params=tiny"]).agent.preset == "tiny"


def test_saved_config_round_trips_and_resume_overrides(tmp_path) -> None:
    cfg = compose_config(["env=toy", "params=tiny", "common.seed=5"])
    path = tmp_path / "config" / "trainer.yaml"
    save_config(cfg, path)
    loaded = load_run_config(path)
    assert OmegaConf.to_container(loaded) == OmegaConf.to_container(cfg)
    longer = apply_overrides(loaded, ["common.epochs=99"])
    assert longer.common.epochs == 99 and loaded.common.epochs == cfg.common.epochs
    with pytest.raises(ConfigError, match="common.nope"):
        apply_overrides(loaded, ["common.nope=1"])
    with pytest.raises(ConfigError, match="groups cannot change"):
        apply_overrides(loaded, ["env=crafter"])
    path.write_text(path.read_text().replace("epochs:", "epochz:"))
    with pytest.raises(ConfigError, match="epochz"):
        load_run_config(path)


def test_agent_overrides_map_onto_the_preset() -> None:
    base = make_agent_config("tiny", 5)
    h = base.actor_critic.horizon + 1
    cfg = compose_config(["env=toy", "params=tiny", f"+agent.overrides.actor_critic.horizon={h}"])
    a = agent_config_from(cfg, 5)
    assert a.actor_critic.horizon == h
    assert diff_dicts(base.to_dict(), a.to_dict()) == [f"actor_critic.horizon: {h - 1} -> {h}"]
    bad = compose_config(["env=toy", "params=tiny", "+agent.overrides.actor_critic.no_such_field=4"])
    with pytest.raises(ConfigError, match="agent.overrides.actor_critic.no_such_field"):
        agent_config_from(bad, 5)
    plain = compose_config(["env=toy", "params=tiny"])
    assert agent_config_from(plain, 5) == base
    assert agent_config_from(typed_config(cfg), 5) == a  # the typed config gives the same model config
    assert agent_config_from(typed_config(plain), 5) == base
    for bad_override in ("tokenizer.num_actions=3", "actor_critic.num_actions=3"):
        bad = compose_config(["env=toy", "params=tiny", f"+agent.overrides.{bad_override}"])
        with pytest.raises(ConfigError, match="num_actions"):
            agent_config_from(bad, 5)
    bad = compose_config(["env=toy", "params=tiny", "+agent.overrides.actor_critic.frame_cnn=4"])
    with pytest.raises(ConfigError, match="frame_cnn"):
        agent_config_from(bad, 5)


def test_diff_dicts_lists_nested_changes() -> None:
    assert diff_dicts({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": (1, 2)}}) == ["a.b: 1 -> 2"]
    assert diff_dicts({"a": 1}, {"a": 1, "b": 2}) == ["b: (absent) -> 2"]


def test_typed_config_is_the_schemas_dataclasses_and_round_trips() -> None:
    cfg = compose_config(["env=atari", "params=atari", "env.train.id=PongNoFrameskip-v4", "common.seed=2"])
    typed = typed_config(cfg)
    assert isinstance(typed, TrainerConfig) and isinstance(typed.env, EnvConfig)
    assert typed.env.test.id == "PongNoFrameskip-v4" and typed.common.seed == 2  # interpolations resolved
    assert typed.training.actor_critic.optimizer == "adam"
    assert typed_config(typed) is typed
    back = untyped_config(typed)
    assert OmegaConf.to_container(back) == OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(ConfigAttributeError, match="common.nope"):  # still the schema's struct config
        back.common.nope = 1
    assert untyped_config(cfg) is cfg
    bad = OmegaConf.create(OmegaConf.to_container(cfg))
    bad.common.epochs = 0
    with pytest.raises(ConfigError, match=r"common\.epochs"):
        typed_config(bad)


@pytest.mark.parametrize(
    ("overrides", "split", "expected"),
    [
        (["env=toy", "params=tiny"], "train", {"max_steps": 30, "respawn": True, "grid": 2}),
        (["env=crafter"], "test", {"length": 10_000}),
        (
            ["env=atari", "params=atari", "env.train.id=BreakoutNoFrameskip-v4"],
            "test",
            {"id": "BreakoutNoFrameskip-v4", "train": False, "noop_max": 1, "max_episode_frames": 108_000},
        ),
        (
            ["env=atari", "params=atari", "env.train.id=BreakoutNoFrameskip-v4"],
            "train",
            {"id": "BreakoutNoFrameskip-v4", "train": True, "noop_max": 30, "max_episode_frames": 20_000},
        ),
    ],
)
def test_env_kwargs_from_the_typed_or_the_untyped_env_section(
    overrides: list[str], split: str, expected: dict[str, object]
) -> None:
    cfg = compose_config(overrides)
    assert env_kwargs(typed_config(cfg).env, split) == expected
    assert env_kwargs(cfg.env, split) == expected  # a DictConfig still works during the transition


def test_env_kwargs_refuse_an_atari_env_without_a_game_and_an_unknown_split() -> None:
    with pytest.raises(ConfigError, match=r"env\.train\.id"):
        env_kwargs(EnvConfig(name="atari"), "train")
    with pytest.raises(ValueError, match="valid"):
        env_kwargs(EnvConfig(name="toy"), "valid")
