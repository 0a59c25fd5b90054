"""The reference's override paths (``params.training.world_model.batch_num_samples=16``, ...) on our
command line: every key of its public configs is mapped onto ours or refused by name
(deltairis.config.reference_paths).

The reference's key list and default values below were typed from reading its public ``config/params/*.yaml``
and ``config/env/*.yaml`` (interpolations written as the values they resolve to)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deltairis.cli import train as train_cli
from deltairis.config.models import make_agent_config
from deltairis.config.reference_paths import MAPPED, NO_EFFECT, REFUSED, env_rule, rewrite_overrides
from deltairis.errors import ConfigError
from deltairis.train.configuration import agent_config_from, compose_config

CNN = {"mult": "[1,1,2,2,4]", "down": "[1,0,1,1,0]"}


def _cnn(prefix: str, channels: int, latent: int, width: int) -> dict[str, object]:
    return {
        f"{prefix}.image_channels": channels,
        f"{prefix}.latent_dim": latent,
        f"{prefix}.num_channels": width,
        **{f"{prefix}.{k}": v for k, v in CNN.items()},
    }


#: the reference's params/crafter.yaml: key -> value (``params.`` left out)
CRAFTER: dict[str, object] = {
    "common.epochs": 1000,
    "common.device": "cuda:0",
    "common.do_checkpoint": True,
    "common.seed": None,
    "common.resume": False,
    "initialization.path_to_checkpoint": None,
    "initialization.load_tokenizer": True,
    "initialization.load_world_model": True,
    "initialization.load_actor_critic": True,
    "collection.path_to_static_dataset": None,
    "collection.train.num_envs": 16,
    "collection.train.stop_after_epochs": 991,
    "collection.train.num_episodes_to_save": 10,
    "collection.train.config.epsilon": 0.01,
    "collection.train.config.should_sample": True,
    "collection.train.config.temperature": 1.0,
    "collection.train.config.num_steps": 10000,
    "collection.train.config.num_steps_first_epoch": 100000,
    "collection.train.config.burn_in_length": 5,
    "collection.test.num_envs": 32,
    "collection.test.num_episodes_to_save": 10,
    "collection.test.config.epsilon": 0.0,
    "collection.test.config.should_sample": True,
    "collection.test.config.temperature": 1.0,
    "collection.test.config.num_episodes": 64,
    "collection.test.config.burn_in_length": 5,
    "training.should": True,
    "training.learning_rate": 0.0001,
    **{
        f"training.tokenizer.{k}": v
        for k, v in dict(
            sequence_length=21,
            batch_num_samples=32,
            grad_acc_steps=1,
            max_grad_norm=10.0,
            priority_alpha=5,
            weight_decay=0.01,
            start_after_epochs=0,
            steps_first_epoch=5000,
            steps_per_epoch=500,
        ).items()
    },
    **{
        f"training.world_model.{k}": v
        for k, v in dict(
            sequence_length=21,
            batch_num_samples=32,
            grad_acc_steps=1,
            max_grad_norm=10.0,
            priority_alpha=5,
            weight_decay=0.01,
            start_after_epochs=0,
            steps_first_epoch=2500,
            steps_per_epoch=500,
        ).items()
    },
    **{
        f"training.actor_critic.{k}": v
        for k, v in dict(
            sequence_length=6,
            batch_num_samples=86,
            grad_acc_steps=1,
            max_grad_norm=10.0,
            priority_alpha=5,
            start_after_epochs=0,
            steps_per_epoch=500,
        ).items()
    },
    "evaluation.should": True,
    "evaluation.every": 50,
    "evaluation.tokenizer.batch_num_samples": 32,
    "evaluation.tokenizer.start_after_epochs": 0,
    "evaluation.tokenizer.save_reconstructions": True,
    "evaluation.world_model.batch_num_samples": 32,
    "evaluation.world_model.start_after_epochs": 0,
    "evaluation.actor_critic.num_episodes_to_save": 86,
    "evaluation.actor_critic.start_after_epochs": 0,
    "tokenizer._target_": "models.tokenizer.TokenizerConfig",
    "tokenizer.image_channels": 3,
    "tokenizer.image_size": 64,
    "tokenizer.num_actions": None,
    "tokenizer.num_tokens": 4,
    "tokenizer.decoder_act_channels": 4,
    "tokenizer.codebook_size": 1024,
    "tokenizer.codebook_dim": 64,
    "tokenizer.max_codebook_updates_with_revival": 0,
    **_cnn("tokenizer.encoder_config", 7, 64, 64),
    **_cnn("tokenizer.decoder_config", 3, 76, 64),
    **_cnn("tokenizer.frame_cnn_config", 3, 8, 64),
    "world_model._target_": "models.world_model.WorldModelConfig",
    "world_model.latent_vocab_size": 1024,
    "world_model.num_actions": None,
    "world_model.image_channels": 3,
    "world_model.image_size": 64,
    "world_model.latents_weight": 1.0,
    "world_model.rewards_weight": 1.0,
    "world_model.ends_weight": 1.0,
    "world_model.two_hot_rews": True,
    "world_model.transformer_config._target_": "models.transformer.TransformerConfig",
    **{
        f"world_model.transformer_config.{k}": v
        for k, v in dict(
            tokens_per_block=6,
            max_blocks=21,
            num_layers=3,
            num_heads=8,
            embed_dim=512,
            attention="causal",
            embed_pdrop=0.0,
            resid_pdrop=0.0,
            attn_pdrop=0.0,
        ).items()
    },
    **_cnn("world_model.frame_cnn_config", 3, 8, 32),
    "actor_critic._target_": "models.actor_critic.ActorCriticConfig",
    "actor_critic.burn_in_length": 5,
    "actor_critic.imagination_horizon": 15,
    "actor_critic.gamma": 0.997,
    "actor_critic.lambda_": 0.95,
    "actor_critic.entropy_weight": 0.001,
    "actor_critic.two_hot_rets": True,
    "actor_critic.model._target_": "models.actor_critic.CnnLstmActorCritic",
    **_cnn("actor_critic.model.frame_encoder_config", 3, 16, 32),
    "actor_critic.model.num_actions": None,
    "actor_critic.model.two_hot_rets": True,
}

#: params/atari.yaml: where it differs from params/crafter.yaml
ATARI = {
    **CRAFTER,
    "common.epochs": 600,
    "collection.train.num_envs": 1,
    "collection.train.stop_after_epochs": 491,
    "collection.train.config.num_steps": 200,
    "collection.train.config.num_steps_first_epoch": 2000,
    "collection.test.num_envs": 8,
    "collection.test.config.num_episodes": 32,
    **{
        f"training.tokenizer.{k}": v
        for k, v in dict(
            batch_num_samples=16,
            priority_alpha=1,
            weight_decay=0.0,
            start_after_epochs=5,
            steps_first_epoch=400,
            steps_per_epoch=200,
        ).items()
    },
    **{
        f"training.world_model.{k}": v
        for k, v in dict(
            sequence_length=26,
            batch_num_samples=64,
            priority_alpha=1,
            start_after_epochs=50,
            steps_first_epoch=120,
            steps_per_epoch=120,
        ).items()
    },
    **{
        f"training.actor_critic.{k}": v
        for k, v in dict(
            batch_num_samples=64, priority_alpha=1, start_after_epochs=75, steps_per_epoch=200
        ).items()
    },
    "evaluation.every": 25,
    "evaluation.tokenizer.batch_num_samples": 16,
    "evaluation.tokenizer.start_after_epochs": 5,
    "evaluation.world_model.batch_num_samples": 64,
    "evaluation.world_model.start_after_epochs": 50,
    "evaluation.actor_critic.num_episodes_to_save": 64,
    "evaluation.actor_critic.start_after_epochs": 75,
    "tokenizer.max_codebook_updates_with_revival": 400,
    "tokenizer.frame_cnn_config.latent_dim": 16,
    "tokenizer.frame_cnn_config.num_channels": 32,
    "tokenizer.decoder_config.latent_dim": 84,
    "world_model.latents_weight": 0.1,
    "world_model.ends_weight": 0.1,
    "world_model.two_hot_rews": False,
    "world_model.transformer_config.max_blocks": 26,
    "world_model.transformer_config.num_heads": 4,
    "world_model.transformer_config.embed_dim": 256,
    "world_model.frame_cnn_config.latent_dim": 4,
    "actor_critic.imagination_horizon": 20,
    "actor_critic.gamma": 0.995,
    "actor_critic.entropy_weight": 0.002,
    "actor_critic.two_hot_rets": False,
    "actor_critic.model.two_hot_rets": False,
}

#: env/atari.yaml and env/crafter.yaml (top level: no ``params.``)
ENV_ATARI = {
    "env.train._target_": "envs.make_atari",
    "env.train.id": "BreakoutNoFrameskip-v4",
    "env.train.size": 64,
    "env.train.max_episode_steps": 20000,
    "env.train.noop_max": 30,
    "env.train.frame_skip": 4,
    "env.train.done_on_life_loss": True,
    "env.train.clip_reward": False,
    "env.test._target_": "envs.make_atari",
    "env.test.id": "BreakoutNoFrameskip-v4",
    "env.test.size": 64,
    "env.test.max_episode_steps": 108000,
    "env.test.noop_max": 1,
    "env.test.frame_skip": 4,
    "env.test.done_on_life_loss": False,
    "env.test.clip_reward": False,
    "env.keymap": "atari/BreakoutNoFrameskip-v4",
}
ENV_CRAFTER = {
    "env.train._target_": "gym.wrappers.TimeLimit",
    "env.train.max_episode_steps": 10000,
    "env.train.env._target_": "crafter.Env",
    "env.train.env.reward": True,
    "env.test._target_": "gym.wrappers.TimeLimit",
    "env.test.max_episode_steps": 10000,
    "env.test.env._target_": "crafter.Env",
    "env.test.env.reward": True,
    "env.keymap": "crafter",
}
#: our default where the reference's default means the same thing
SAME_MEANING = {"common.device": ("cuda:0", "auto"), "training.actor_critic.seq_len": (6, None)}


def _text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value)  # the reference's own spelling: True / False
    return str(value)


def _lines(values: dict[str, object], prefix: str = "params.") -> list[str]:
    return [f"{prefix}{k}={_text(v)}" for k, v in values.items() if k not in REFUSED]


def test_every_reference_key_has_a_row() -> None:
    """Mapped, accepted without effect, or refused with a reason: nothing falls through to 'unknown key'."""
    for key in {**CRAFTER, **ATARI}:
        assert key in MAPPED or key in NO_EFFECT or key in REFUSED, key
    for env, keys in (("atari", ENV_ATARI), ("crafter", ENV_CRAFTER)):
        for key in keys:
            assert env_rule(env, key) is not None or key in NO_EFFECT or key in REFUSED, key
    assert all(why for why in REFUSED.values())


@pytest.mark.parametrize(
    ("groups", "ref", "env", "preset"),
    [
        ([], CRAFTER, ENV_CRAFTER, "crafter"),
        (["env=atari", "params=atari"], ATARI, ENV_ATARI, "atari"),
    ],
)
def test_the_reference_defaults_compose_to_ours(
    groups: list[str], ref: dict[str, object], env: dict[str, object], preset: str
) -> None:
    """Every accepted key at the reference's default value gives our preset's configuration (training
    schedule and model): the mapping and both sets of defaults agree."""
    base = [*groups, *(["env.train.id=BreakoutNoFrameskip-v4"] if preset == "atari" else [])]
    ours = OmegaConf.to_container(compose_config(base))
    notes: list[str] = []
    lines = rewrite_overrides([*base, *_lines(ref), *_lines(env, "")], notes)
    cfg = compose_config(lines)
    assert len(notes) == 3  # evaluation.actor_critic.* and env.keymap: accepted, no effect
    theirs = OmegaConf.to_container(cfg)
    for key, (ref_value, our_value) in SAME_MEANING.items():
        assert OmegaConf.select(cfg, key) == ref_value
        OmegaConf.update(cfg, key, our_value)
    got = OmegaConf.to_container(cfg)
    got["agent"]["overrides"] = ours["agent"]["overrides"] = {}
    assert got == ours, theirs
    num_actions = 17 if preset == "crafter" else 4
    assert agent_config_from(cfg, num_actions) == make_agent_config(preset, num_actions)


def _other(value: object) -> object:
    """A valid value different from a reference default."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return round(value * 0.5 + 0.25, 6)
    if isinstance(value, str) and value.startswith("["):
        return "[1,2,2,4]"
    return {"causal": "block_causal", "cuda:0": "cuda:1"}.get(str(value), value)


SPECIAL = {
    "common.seed": 7,
    "initialization.path_to_checkpoint": "/ckpts/last.pt",
    "collection.path_to_static_dataset": "/data/static",
    "collection.train.config.epsilon": 0.2,
    "collection.test.config.epsilon": 0.1,
}


def _batches(keys: list[str]) -> list[list[str]]:
    """Rows in as few groups as possible whose targets do not overlap (one composition per group)."""
    groups: list[tuple[set[str], list[str]]] = []
    for key in keys:
        targets = set(MAPPED[key].targets)
        for used, members in groups:
            if not used & targets:
                used.update(targets)
                members.append(key)
                break
        else:
            groups.append((set(targets), [key]))
    return [members for _, members in groups]


def test_every_mapped_row_sets_our_key() -> None:
    rows = [k for k in CRAFTER if k in MAPPED and MAPPED[k].targets]
    assert len(rows) > 80
    checked = 0
    for batch in _batches(rows):
        values = {k: SPECIAL.get(k, _other(CRAFTER[k])) for k in batch}
        cfg = compose_config(rewrite_overrides(_lines(values)))
        for key, value in values.items():
            expected = json.loads(value) if str(value).startswith("[") else value
            for target in MAPPED[key].targets:
                got = OmegaConf.select(cfg, target)
                assert got == expected, (key, target, got, expected)
                checked += 1
    assert checked >= len(rows)


def test_rows_with_one_accepted_value() -> None:
    rows = {k: r for k, r in MAPPED.items() if r.only is not None}
    assert rows
    default = OmegaConf.to_container(compose_config([]))
    lines = [f"params.{k}={r.only[0]}" for k, r in rows.items()]
    assert rewrite_overrides(lines) == []  # accepted: our configuration already is that
    assert OmegaConf.to_container(compose_config(rewrite_overrides(lines))) == default
    for key, rule in rows.items():
        bad = "5" if rule.only != ("5",) else "6"
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + f"={bad}"):
            rewrite_overrides([f"params.{key}={bad}"])


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refused_keys_name_themselves_and_why(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        rewrite_overrides([f"params.{key}=1"])
    assert f"params.{key} " in str(info.value) and REFUSED[key] in str(info.value)


def test_env_rows_follow_the_env_choice() -> None:
    cfg = compose_config(
        rewrite_overrides(
            [
                "env=atari",
                "params=atari",
                "env.train.id=PongNoFrameskip-v4",
                "env.train.max_episode_steps=1000",
                "env.test.max_episode_steps=2000",
                "env.train.noop_max=7",
                "env.test.noop_max=2",
                "env.train.frame_skip=4",
                "env.train.done_on_life_loss=True",
                "env.test.done_on_life_loss=False",
                "env.test.size=64",
            ]
        )
    )
    assert (cfg.env.train.id, cfg.env.test.id) == ("PongNoFrameskip-v4", "PongNoFrameskip-v4")
    assert (cfg.env.train.max_episode_frames, cfg.env.test.max_episode_frames) == (1000, 2000)
    assert (cfg.env.train.noop_max, cfg.env.test.noop_max) == (7, 2)
    cfg = compose_config(rewrite_overrides(["env.train.max_episode_steps=500", "env.train.env.reward=true"]))
    assert cfg.env.train.max_episode_steps == 500 and cfg.env.train.max_episode_frames is None
    for bad in (
        ["env=atari", "env.train.frame_skip=2"],
        ["env=atari", "env.train.done_on_life_loss=false"],
        ["env.train.clip_reward=true"],
        ["env.train.env.reward=false"],
    ):
        with pytest.raises(ConfigError, match=bad[-1].split("=")[0]):
            rewrite_overrides(bad)


def test_preset_interpolations_of_the_reference() -> None:
    # crafter: the tokenizer trains on the world model's sequence length; the transformer has as many blocks
    cfg = compose_config(rewrite_overrides(["params.training.world_model.sequence_length=25"]))
    assert (cfg.training.world_model.seq_len, cfg.training.tokenizer.seq_len) == (25, 25)
    assert cfg.agent.overrides.world_model.transformer.max_blocks == 25
    cfg = compose_config(
        rewrite_overrides(
            [
                "params.training.tokenizer.sequence_length=9",
                "params.training.world_model.sequence_length=25",
                "params.world_model.transformer_config.max_blocks=30",
            ]
        )
    )
    assert cfg.training.tokenizer.seq_len == 9  # set on the command line: not overridden
    assert cfg.agent.overrides.world_model.transformer.max_blocks == 30
    # the world model's vocabulary follows the codebook; the test episodes saved follow the train ones
    cfg = compose_config(
        rewrite_overrides(
            ["params.tokenizer.codebook_size=512", "params.collection.train.num_episodes_to_save=3"]
        )
    )
    agent = agent_config_from(cfg, 17)
    assert (agent.tokenizer.codebook_size, agent.world_model.latent_vocab_size) == (512, 512)
    assert (cfg.collection.train.num_episodes_to_save, cfg.collection.test.num_episodes_to_save) == (3, 3)
    cfg = compose_config(
        rewrite_overrides(
            [
                "params.collection.test.num_episodes_to_save=1",
                "params.collection.train.num_episodes_to_save=3",
            ]
        )
    )
    assert (cfg.collection.train.num_episodes_to_save, cfg.collection.test.num_episodes_to_save) == (3, 1)
    # atari: codes are revived during the tokenizer's first-epoch steps
    cfg = compose_config(
        rewrite_overrides(
            [
                "env=atari",
                "params=atari",
                "env.train.id=PongNoFrameskip-v4",
                "params.training.tokenizer.steps_first_epoch=300",
            ]
        )
    )
    assert cfg.training.tokenizer.steps_first_epoch == 300
    assert agent_config_from(cfg, 4).tokenizer.max_codebook_updates_with_revival == 300


def test_a_sweep_over_a_shared_key_stays_one_job_per_value() -> None:
    lines = rewrite_overrides(["params.training.learning_rate=1e-3,3e-3"])
    sets = train_cli._job_override_sets(lines, multirun=True)
    assert len(sets) == 2
    for job, lr in zip(sets, (1e-3, 3e-3)):
        cfg = compose_config(job)
        assert [cfg.training[c].learning_rate for c in ("tokenizer", "world_model", "actor_critic")] == [
            lr
        ] * 3
    # a component set by its own key keeps its value in every job
    lines = rewrite_overrides(
        ["params.training.learning_rate=1e-3,3e-3", "training.tokenizer.learning_rate=5e-4"]
    )
    for job, lr in zip(train_cli._job_override_sets(lines, multirun=True), (1e-3, 3e-3)):
        cfg = compose_config(job)
        assert [cfg.training[c].learning_rate for c in ("tokenizer", "world_model", "actor_critic")] == [
            5e-4,
            lr,
            lr,
        ]


def test_cfg_job_shows_our_keys(capsys) -> None:
    rc = train_cli.main(
        [
            "--cfg",
            "job",
            "params.training.world_model.batch_num_samples=16",
            "training.tokenizer.grad_acc_steps=2",
            "params.common.device=cuda:1",
            "params.initialization.path_to_checkpoint=/x/last.pt",
            "params.initialization.load_world_model=false",
            "params.actor_critic.imagination_horizon=20",
            "params.world_model.transformer_config.num_layers=4",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    cfg = OmegaConf.create(out)
    assert cfg.training.world_model.batch_size == 16 and cfg.training.tokenizer.grad_acc_steps == 2
    assert cfg.common.device == "cuda:1" and cfg.agent.path_to_ckpt == "/x/last.pt"
    assert cfg.agent.load_world_model is False and cfg.agent.load_tokenizer is True
    assert cfg.agent.overrides.actor_critic.horizon == 20
    assert cfg.agent.overrides.world_model.transformer.num_layers == 4
    assert "params" not in cfg


def test_a_refused_key_exits_2_naming_it(capsys) -> None:
    assert train_cli.main(["--cfg", "job", "params.evaluation.world_model.batch_num_samples=8"]) == 2
    err = capsys.readouterr().err
    assert (
        "params.evaluation.world_model.batch_num_samples" in err and "training.world_model.batch_size" in err
    )
    assert train_cli.main(["--cfg", "job", "params.common.bogus=1"]) == 2
    assert "common.bogus" in capsys.readouterr().err


def test_resume_through_the_reference_spelling(tmp_path: Path, monkeypatch, capsys) -> None:
    """What the reference's scripts/resume.sh writes resumes our run folder from its saved config."""
    from deltairis.train.configuration import save_config

    run = tmp_path / "run"
    saved = compose_config(["env=toy", "params=tiny", "common.epochs=3", "common.seed=11"])
    save_config(saved, run / "config" / "trainer.yaml")
    monkeypatch.chdir(run)
    rc = train_cli.main(
        [
            "--cfg",
            "job",
            "params.common.resume=True",
            "hydra.output_subdir=null",
            "hydra.run.dir=.",
            "params.common.epochs=5",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    cfg = OmegaConf.create(out)
    assert cfg.common.resume is True and cfg.common.epochs == 5 and cfg.common.seed == 11
    assert cfg.agent.preset == "tiny"
    assert not (run / "outputs").exists() and json.dumps(OmegaConf.to_container(cfg))


def test_two_reference_paths_for_one_of_our_keys_must_agree() -> None:
    same = rewrite_overrides(
        ["params.actor_critic.burn_in_length=7", "params.collection.test.config.burn_in_length=7"]
    )
    assert compose_config(same).agent.overrides.actor_critic.burn_in == 7
    with pytest.raises(
        ConfigError, match=r"burn_in_length=5 and collection\.train\.config\.burn_in_length=7"
    ):
        rewrite_overrides(
            ["params.actor_critic.burn_in_length=5", "params.collection.train.config.burn_in_length=7"]
        )


def test_a_group_sweep_with_a_path_whose_meaning_depends_on_it() -> None:
    # the same meaning under every swept choice: fine
    assert rewrite_overrides(["env=atari,crafter", "env.train.noop_max=3"])[-1] == "env.train.noop_max=3"
    with pytest.raises(ConfigError, match=r"env\.train\.max_episode_steps means different keys"):
        rewrite_overrides(["env=atari,crafter", "env.train.max_episode_steps=30"])
    with pytest.raises(ConfigError, match=r"sequence_length means different keys .*params="):
        rewrite_overrides(["params=atari,crafter", "params.training.world_model.sequence_length=30"])


#: a seconds-long tiny run on the toy env (as tests/train/conftest.py's), written the reference's way
TINY_REFERENCE_SPELLING = [
    "env=toy",
    "params=tiny",
    "params.common.device=cpu",
    "wandb.mode=disabled",
    "common.progress_bar=false",
    "common.memory_plan=false",
    "params.common.seed=3",
    "params.common.epochs=1",
    "params.collection.train.num_envs=2",
    "params.collection.train.config.num_steps_first_epoch=40",
    "params.collection.train.config.num_steps=10",
    "params.collection.test.num_envs=2",
    "params.collection.test.config.num_episodes=2",
    "params.evaluation.every=1",
    "evaluation.num_batches=1",
    "evaluation.num_reconstructions=2",
    "params.actor_critic.imagination_horizon=2",
    *(
        f"params.training.{c}.{k}={v}"
        for c in ("tokenizer", "world_model", "actor_critic")
        for k, v in (("steps_first_epoch", 1), ("steps_per_epoch", 1), ("batch_num_samples", 2))
    ),
    # our key: the reference's world_model.sequence_length also sizes the transformer (max_blocks), which
    # must hold the burn-in and the imagination
    "params.training.tokenizer.sequence_length=3",
    "training.world_model.seq_len=4",
    "params.training.actor_critic.start_after_epochs=0",
]


def test_a_run_and_its_resume_written_the_reference_way(tmp_path: Path, monkeypatch) -> None:
    """A run started and resumed with the reference's spellings (its scripts/resume.sh line)."""
    run = tmp_path / "run"
    assert train_cli.main([*TINY_REFERENCE_SPELLING, f"hydra.run.dir={run}"]) == 0
    saved = OmegaConf.load(run / "config" / "trainer.yaml")
    assert saved.training.world_model.batch_size == 2 and saved.agent.overrides.actor_critic.horizon == 2
    monkeypatch.chdir(run)
    assert (
        train_cli.main(
            [
                "params.common.resume=True",
                "hydra.output_subdir=null",
                "hydra.run.dir=.",
                "params.common.epochs=2",
            ]
        )
        == 0
    )
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_the_compose_api_takes_the_reference_paths_too() -> None:
    from deltairis.train.configuration import apply_overrides

    cfg = compose_config(
        [
            "env=atari",
            "params=atari",
            "env.train.id=PongNoFrameskip-v4",
            "params.training.world_model.batch_num_samples=16",
            "env.test.max_episode_steps=900",
        ]
    )
    assert cfg.training.world_model.batch_size == 16 and cfg.env.test.max_episode_frames == 900
    # a resume does not compose (no group choice on its command line): a time limit the env would not
    # read is an error, not ignored
    with pytest.raises(ConfigError, match=r"env\.train\.max_episode_steps is not used with env=atari"):
        apply_overrides(cfg, ["env.train.max_episode_steps=5"])
    toy = compose_config(["env=toy", "params=tiny"])
    with pytest.raises(ConfigError, match=r"env\.test\.max_episode_frames is an Atari setting"):
        apply_overrides(toy, ["env.test.max_episode_frames=5"])


def test_the_reference_top_level_wandb_keys_are_ours() -> None:
    """trainer.yaml of the reference: wandb.{mode,project,entity,name,group,tags,notes} (no params.)."""
    cfg = compose_config(
        [
            "wandb.mode=disabled",
            "wandb.project=p",
            "wandb.entity=e",
            "wandb.name=n",
            "wandb.group=g",
            "wandb.tags=[a,b]",
            "wandb.notes=x",
        ]
    )
    assert (
        cfg.wandb.mode,
        cfg.wandb.project,
        cfg.wandb.entity,
        cfg.wandb.name,
        cfg.wandb.group,
        list(cfg.wandb.tags),
        cfg.wandb.notes,
    ) == ("disabled", "p", "e", "n", "g", ["a", "b"], "x")


def test_a_sweep_of_the_reference_learning_rate_is_checked_per_job(tmp_path: Path, capsys) -> None:
    """Through Hydra's sweeper: the second job's learning rate reaches every component (and is refused
    before any job starts, naming a component's key)."""
    rc = train_cli.main(
        [
            "-m",
            "env=toy",
            "params=tiny",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "params.training.learning_rate=1e-3,-1",
            "training.tokenizer.learning_rate=1e-3",
        ]
    )
    assert rc == 2
    assert "training.world_model.learning_rate must be > 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_a_resume_maps_the_reference_paths_under_the_runs_own_groups(tmp_path: Path, capsys) -> None:
    """No group choice on a resume's command line: the run's saved env and preset decide (an Atari run's
    max_episode_steps counts raw frames; the Crafter tokenizer interpolation does not apply to Atari)."""
    from deltairis.train.configuration import save_config

    run = tmp_path / "run"
    save_config(
        compose_config(["env=atari", "params=atari", "env.train.id=PongNoFrameskip-v4"]),
        run / "config" / "trainer.yaml",
    )
    rc = train_cli.main(
        [
            "--cfg",
            "job",
            "params.common.resume=True",
            f"hydra.run.dir={run}",
            "env.train.max_episode_steps=5000",
            "params.training.world_model.sequence_length=30",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    cfg = OmegaConf.create(out.out)
    assert cfg.env.train.max_episode_frames == 5000 and cfg.env.train.max_episode_steps is None
    assert cfg.training.world_model.seq_len == 30 and cfg.training.tokenizer.seq_len == 21
