"""Composing, validating and saving the training configuration.

The YAML config groups ship inside the package (``deltairis/config``) and are found through
``pkg://deltairis.config``, never through the source tree. Overrides use Hydra's syntax
(``env=atari params=atari env.train.id=BreakoutNoFrameskip-v4 common.epochs=10``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from deltairis.config.models import AgentConfig, make_agent_config
from deltairis.config.schema import OPTIMIZERS, TrainerConfig
from deltairis.data.frame_codec import COMPRESSIONS
from deltairis.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_MODULE = "deltairis.config"
CONFIG_NAME = "trainer"
SCHEMA_NAME = "trainer_schema"


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainerConfig)


def format_error(exc: Exception) -> str:
    # Hydra wraps OmegaConf errors; keep the whole chain: it names the key (full_key: ...).
    parts = [str(exc).strip()]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(parts) < 3 and "full_key:" not in "".join(parts):
        text = str(cause).strip()
        if text and text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``trainer.yaml`` with Hydra overrides and validate it against the schema. The reference's
    override paths (``params.training.world_model.batch_num_samples=16``, ...) are mapped onto ours first
    (:func:`deltairis.config.reference_paths.rewrite_overrides`), as ``deltairis-train`` does.

    Raises:
        ConfigError: unknown key, wrong type, missing mandatory value, bad override syntax or a reference
            path we cannot honour.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from deltairis.config.reference_paths import rewrite_overrides

    overrides = rewrite_overrides(list(overrides))
    _register_schema()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
    except Exception as exc:  # hydra raises several unrelated exception types
        raise ConfigError(f"invalid configuration override: {format_error(exc)}") from exc
    return validate_config(cfg)


def validate_config(cfg: DictConfig | TrainerConfig) -> DictConfig:
    """Merge ``cfg`` onto the typed schema and resolve it; errors name the key."""
    try:
        schema = OmegaConf.structured(TrainerConfig)
        # A plain container, so that keys Hydra added with ``+key=`` are checked against the schema.
        source = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
        merged = OmegaConf.merge(schema, source)
        OmegaConf.resolve(merged)
        missing = sorted(OmegaConf.missing_keys(merged))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {format_error(exc)}") from exc
    if missing:
        raise ConfigError(f"missing mandatory configuration value(s): {', '.join(missing)}")
    assert isinstance(merged, DictConfig)  # merged onto the schema's mapping
    _check_values(merged)
    OmegaConf.set_struct(merged, True)
    return merged


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_values(cfg: DictConfig) -> None:
    """The value checks the schema's types cannot express, section by section (a ConfigError names the key)."""
    _positive("common.epochs", cfg.common.epochs)
    if cfg.common.checkpoint_every_steps is not None:
        _positive("common.checkpoint_every_steps", cfg.common.checkpoint_every_steps)
    if cfg.wandb.mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"wandb.mode must be online, offline or disabled, got {cfg.wandb.mode!r}")
    _check_env(cfg.env)
    if cfg.agent.preset not in ("crafter", "atari", "tiny"):
        raise ConfigError(f"agent.preset must be crafter, atari or tiny, got {cfg.agent.preset!r}")
    _check_collection(cfg.collection)
    for name in ("tokenizer", "world_model", "actor_critic"):
        _check_component(name, cfg.training[name])
    _positive("training.max_consecutive_skips", cfg.training.max_consecutive_skips, allow_zero=True)
    _positive("evaluation.every", cfg.evaluation.every)
    if cfg.evaluation.num_batches is not None:
        _positive("evaluation.num_batches", cfg.evaluation.num_batches, allow_zero=True)
    _positive("distributed.timeout_s", cfg.distributed.timeout_s)
    if cfg.data.compression not in COMPRESSIONS:
        raise ConfigError(
            f"data.compression must be one of {', '.join(COMPRESSIONS)}, got {cfg.data.compression!r}"
        )


def _check_env(env: DictConfig) -> None:
    if env.name not in ("crafter", "atari", "toy", "gymnasium"):
        raise ConfigError(f"env.name must be crafter, atari, toy or gymnasium, got {env.name!r}")
    if env.name == "atari" and not env.train.id:
        raise ConfigError(
            "env.train.id is required with env=atari (e.g. env.train.id=BreakoutNoFrameskip-v4)"
        )
    if env.name == "gymnasium" and not env.train.id:
        raise ConfigError(
            "env.train.id is required with env=gymnasium (a registered gymnasium id, e.g. CartPole-v1)"
        )
    for split in ("train", "test"):
        # an Atari game id with another env (`-m env.train.id=A,B` without env=atari) would otherwise
        # train the default env once per "game"
        s = env[split]
        if env.name not in ("atari", "gymnasium") and s.id:
            raise ConfigError(
                f"env.{split}.id={s.id} is an Atari game but env={env.name}; add env=atari params=atari"
            )
        # Atari's time limit counts raw frames, the other envs' agent steps: the other key would be ignored
        if env.name == "atari" and s.max_episode_steps is not None:
            raise ConfigError(
                f"env.{split}.max_episode_steps is not used with env=atari: set "
                f"env.{split}.max_episode_frames (raw emulator frames, what the reference's "
                "env.train.max_episode_steps counts)"
            )
        if env.name != "atari" and s.max_episode_frames is not None:
            raise ConfigError(
                f"env.{split}.max_episode_frames is an Atari setting; env={env.name} counts "
                f"env.{split}.max_episode_steps"
            )
        if env.name != "gymnasium" and s.make_kwargs:
            raise ConfigError(f"env.{split}.make_kwargs is a setting of env=gymnasium, not of env={env.name}")
        for key in ("frame_skip", "max_pool"):
            if env.name != "gymnasium" and s[key] is not None:
                raise ConfigError(f"env.{split}.{key} is a setting of env=gymnasium, not of env={env.name}")
        if s.frame_skip is not None:
            _positive(f"env.{split}.frame_skip", s.frame_skip)
        if s.max_pool and (s.frame_skip or 1) < 2:
            raise ConfigError(f"env.{split}.max_pool needs env.{split}.frame_skip >= 2")


def _check_collection(collection: DictConfig) -> None:
    tc = collection.train
    _positive("collection.train.num_envs", tc.num_envs)
    _positive("collection.train.num_steps", tc.num_steps, allow_zero=True)
    _positive("collection.train.num_steps_first_epoch", tc.num_steps_first_epoch)
    _positive("collection.test.num_envs", collection.test.num_envs)
    _positive("collection.test.num_episodes", collection.test.num_episodes, allow_zero=True)
    for split in ("train", "test"):
        c = collection[split]
        if not 0.0 <= c.epsilon <= 1.0:
            raise ConfigError(f"collection.{split}.epsilon must be in [0, 1], got {c.epsilon}")
        _positive(f"collection.{split}.temperature", c.temperature)


def _check_component(name: str, c: DictConfig) -> None:
    for key in ("steps_per_epoch", "steps_first_epoch", "start_after_epochs"):
        _positive(f"training.{name}.{key}", c[key], allow_zero=True)
    _positive(f"training.{name}.batch_size", c.batch_size)
    if c.grad_acc_steps < 1:
        raise ConfigError(
            f"training.{name}.grad_acc_steps must be an integer >= 1 (micro-batches per optimizer "
            f"step), got {c.grad_acc_steps}"
        )
    if c.seq_len is not None:
        _positive(f"training.{name}.seq_len", c.seq_len)
    _positive(f"training.{name}.learning_rate", c.learning_rate)
    _positive(f"training.{name}.weight_decay", c.weight_decay, allow_zero=True)
    if c.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"training.{name}.optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}"
        )
    _positive(f"training.{name}.max_grad_norm", c.max_grad_norm)
    _positive(f"training.{name}.sampling_alpha", c.sampling_alpha, allow_zero=True)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``key=value`` overrides to an existing config (used when resuming a run).

    Group choices (``env=atari``) cannot change on resume and are rejected.
    """
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+")
        if "." not in key:
            raise ConfigError(f"override {item!r} selects a config group; groups cannot change on resume")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            with open_dict(cfg) if add else contextlib.nullcontext():
                OmegaConf.update(cfg, key, OmegaConf.select(parsed, key), merge=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"invalid override {item!r}: {format_error(exc)}") from exc
    return validate_config(cfg)


def typed_config(cfg: DictConfig | TrainerConfig) -> TrainerConfig:
    """The validated config as the schema's dataclasses (done once, below the CLI everything is typed).

    A :class:`TrainerConfig` is returned as it is; a ``DictConfig`` is validated first, so a config that
    does not fit the schema is a :class:`ConfigError` naming the key.
    """
    if isinstance(cfg, TrainerConfig):
        return cfg
    obj = OmegaConf.to_object(validate_config(cfg))
    assert isinstance(obj, TrainerConfig)
    return obj


def untyped_config(cfg: TrainerConfig | DictConfig) -> DictConfig:
    """A typed config back as a (schema-checked, struct) ``DictConfig``: for saving and for broadcasting."""
    if isinstance(cfg, DictConfig):
        return cfg
    out = OmegaConf.structured(cfg)
    OmegaConf.set_struct(out, True)
    return out


def load_run_config(path: Path) -> DictConfig:
    """Load a run's saved ``config/trainer.yaml`` and validate it."""
    if not path.is_file():
        raise ConfigError(f"no saved configuration at {path}; is this a run folder?")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path} does not hold a configuration (a mapping of sections)")
    return validate_config(raw)


def save_config(cfg: DictConfig, path: Path) -> None:
    from deltairis.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, OmegaConf.to_yaml(cfg, resolve=True).encode())


def agent_config_from(cfg: TrainerConfig | DictConfig, num_actions: int) -> AgentConfig:
    """The model configuration: the preset's, with ``agent.overrides`` applied (validated)."""
    base = make_agent_config(cfg.agent.preset, num_actions)
    if cfg.training.exclude_padding:
        base = dataclasses.replace(
            base,
            **{
                part: dataclasses.replace(getattr(base, part), exclude_padding=True)
                for part in ("tokenizer", "world_model", "actor_critic")
            },
        )
    overrides = cfg.agent.overrides
    if isinstance(overrides, DictConfig):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    if not overrides:
        return base
    if not isinstance(overrides, dict):
        raise ConfigError(f"agent.overrides must be a mapping, got {overrides!r}")
    d = base.to_dict()

    def merge(dst: dict[str, object], src: dict[str, object], prefix: str) -> None:
        for key, v in src.items():
            if key not in dst:
                raise ConfigError(f"agent.overrides.{prefix}{key} is not a field of the model configuration")
            sub = dst[key]
            if isinstance(v, dict) != isinstance(sub, dict):
                what = "is not" if isinstance(v, dict) else "is"
                raise ConfigError(f"agent.overrides.{prefix}{key} {what} a nested configuration")
            if isinstance(v, dict) and isinstance(sub, dict):
                merge(sub, {str(k): x for k, x in v.items()}, f"{prefix}{key}.")
            else:
                dst[key] = v

    merge(d, {str(k): v for k, v in overrides.items()}, "")
    try:
        agent = AgentConfig.from_dict(d)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid agent.overrides: {exc}") from exc
    if {agent.tokenizer.num_actions, agent.world_model.num_actions, agent.actor_critic.num_actions} != {
        num_actions
    }:
        raise ConfigError("agent.overrides cannot change num_actions (it comes from the environment)")
    return agent


def diff_dicts(old: object, new: object, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts (``key: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            if k not in old:
                out.append(f"{prefix}{k}: (absent) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{prefix}{k}: {old[k]!r} -> (absent)")
            else:
                out.extend(diff_dicts(old[k], new[k], f"{prefix}{k}."))
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


__all__ = [
    "ConfigError",
    "agent_config_from",
    "apply_overrides",
    "compose_config",
    "diff_dicts",
    "load_run_config",
    "save_config",
    "typed_config",
    "untyped_config",
    "validate_config",
]
