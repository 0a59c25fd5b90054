"""The reference's command-line override paths, mapped onto ours (README "Coming from the reference").

The reference composes its ``params`` group under the ``params`` package, so its users write
``params.training.world_model.batch_num_samples=16``, ``params.common.resume=True`` or
``params.initialization.path_to_checkpoint=...``. :func:`rewrite_overrides` turns such override strings
into ours before Hydra parses them (``deltairis-train`` calls it first), so that ``--cfg job`` shows the
values under our keys and sweeps (``a=1,2``) keep working. The ``params.`` prefix is optional.

Every key of the reference's public configs has a row here, one of:

* :data:`MAPPED`: the reference path and our key(s) (``agent.overrides.*`` for model hyper-parameters);
  a row with ``only`` accepts just the values we implement (e.g. ``env.train.size=64``) and is then a
  no-op, since our value is that one;
* :data:`NO_EFFECT`: keys the reference's trainer itself never reads (accepted, a note says so);
* :data:`REFUSED`: keys we cannot honour, with the reason; using one is a :class:`ConfigError`.

A few rows depend on the group choices of the same command line (``env=``, ``params=``): the reference's
``env.train.max_episode_steps`` of Atari counts raw frames (our ``max_episode_frames``), its Crafter
tokenizer reads the world model's ``sequence_length`` and its Atari tokenizer revives codes for
``steps_first_epoch`` updates. Those follow the reference's interpolations (:data:`INTERPOLATIONS`,
:data:`PRESET_EXTRAS`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from deltairis.errors import ConfigError

logger = logging.getLogger(__name__)

COMPONENTS = ("tokenizer", "world_model", "actor_critic")
_AO = "agent.overrides."
_CNN_KEYS = ("latent_dim", "num_channels", "mult", "down")


@dataclass(frozen=True)
class Rule:
    """How one reference path maps: the override goes to every key of ``targets`` (our paths); with
    ``only``, just those values (lowercase text, ``null`` for None) are accepted, and none is passed on
    when ``targets`` is empty. ``why`` explains a restriction."""

    targets: tuple[str, ...]
    only: tuple[str, ...] | None = None
    why: str = ""


def _same(key: str) -> Rule:
    return Rule((key,))


def _build_mapped() -> dict[str, Rule]:
    m: dict[str, Rule] = {}
    for key in ("epochs", "device", "do_checkpoint", "seed", "resume"):
        m[f"common.{key}"] = _same(f"common.{key}")
    m["initialization.path_to_checkpoint"] = Rule(("agent.path_to_ckpt",))
    for c in COMPONENTS:
        m[f"initialization.load_{c}"] = Rule((f"agent.load_{c}",))
    m["collection.path_to_static_dataset"] = _same("collection.path_to_static_dataset")
    for split in ("train", "test"):
        for key in ("num_envs", "num_episodes_to_save"):
            m[f"collection.{split}.{key}"] = _same(f"collection.{split}.{key}")
        for key in ("epsilon", "temperature"):
            m[f"collection.{split}.config.{key}"] = _same(f"collection.{split}.{key}")
        m[f"collection.{split}.config.should_sample"] = Rule(
            (), ("true",), "our collectors always sample from the policy (lower the temperature instead)"
        )
        # the reference's collectors read the actor-critic's burn-in through an interpolation: one value here
        m[f"collection.{split}.config.burn_in_length"] = Rule((f"{_AO}actor_critic.burn_in",))
    m["collection.train.stop_after_epochs"] = _same("collection.train.stop_after_epochs")
    for key in ("num_steps", "num_steps_first_epoch"):
        m[f"collection.train.config.{key}"] = _same(f"collection.train.{key}")
    m["collection.test.config.num_episodes"] = _same("collection.test.num_episodes")

    m["training.should"] = _same("training.should")
    m["training.learning_rate"] = Rule(tuple(f"training.{c}.learning_rate" for c in COMPONENTS))
    renamed = {
        "batch_num_samples": "batch_size",
        "sequence_length": "seq_len",
        "priority_alpha": "sampling_alpha",
    }
    for c in COMPONENTS:
        for key in (
            "batch_num_samples",
            "sequence_length",
            "priority_alpha",
            "grad_acc_steps",
            "max_grad_norm",
            "weight_decay",
            "start_after_epochs",
            "steps_first_epoch",
            "steps_per_epoch",
        ):
            m[f"training.{c}.{key}"] = _same(f"training.{c}.{renamed.get(key, key)}")

    m["evaluation.should"] = _same("evaluation.should")
    m["evaluation.every"] = _same("evaluation.every")
    m["evaluation.tokenizer.save_reconstructions"] = _same("evaluation.save_reconstructions")

    t = f"{_AO}tokenizer."
    m["tokenizer.image_channels"] = Rule((), ("3",), "our environments give RGB frames")
    m["tokenizer.image_size"] = Rule((), ("64",), "our environments give 64x64 frames")
    m["tokenizer.num_actions"] = Rule((), ("null",), "the number of actions comes from the environment")
    m["tokenizer.num_tokens"] = Rule((f"{t}tokens_per_frame", f"{_AO}world_model.tokens_per_frame"))
    for key in ("decoder_act_channels", "codebook_size", "codebook_dim", "max_codebook_updates_with_revival"):
        m[f"tokenizer.{key}"] = Rule((f"{t}{key}",))
    m["tokenizer.encoder_config.image_channels"] = Rule(
        (), ("7",), "two RGB frames and an action plane: 2*3+1"
    )
    for key in _CNN_KEYS:
        m[f"tokenizer.encoder_config.{key}"] = Rule((f"{t}encoder.{key}",))
        m[f"tokenizer.frame_cnn_config.{key}"] = Rule((f"{t}frame_cnn.{key}",))
    m["tokenizer.frame_cnn_config.image_channels"] = Rule((), ("3",), "our environments give RGB frames")
    m["tokenizer.decoder_config.image_channels"] = Rule((), ("3",), "our environments give RGB frames")
    m["tokenizer.decoder_config.num_channels"] = Rule((f"{t}decoder_num_channels",))

    w = f"{_AO}world_model."
    m["world_model.latent_vocab_size"] = Rule((f"{w}latent_vocab_size",))
    m["world_model.num_actions"] = Rule((), ("null",), "the number of actions comes from the environment")
    m["world_model.image_channels"] = Rule((), ("3",), "our environments give RGB frames")
    m["world_model.image_size"] = Rule((), ("64",), "our environments give 64x64 frames")
    for key in ("latents_weight", "rewards_weight", "ends_weight"):
        m[f"world_model.{key}"] = Rule((f"{w}{key}",))
    m["world_model.two_hot_rews"] = Rule((f"{w}two_hot_rewards",))
    for key in ("tokens_per_block", "max_blocks", "num_layers", "num_heads", "embed_dim", "attention"):
        m[f"world_model.transformer_config.{key}"] = Rule((f"{w}transformer.{key}",))
    for key in ("embed_pdrop", "resid_pdrop", "attn_pdrop"):
        m[f"world_model.transformer_config.{key}"] = Rule(
            (),
            ("0.0", "0"),
            "our transformer has one dropout rate for its embeddings and residual branches and none in "
            f"attention: set {w}transformer.dropout instead",
        )
    m["world_model.frame_cnn_config.image_channels"] = Rule((), ("3",), "our environments give RGB frames")
    for key in _CNN_KEYS:
        m[f"world_model.frame_cnn_config.{key}"] = Rule((f"{w}frame_cnn.{key}",))

    a = f"{_AO}actor_critic."
    for ref, ours in (
        ("burn_in_length", "burn_in"),
        ("imagination_horizon", "horizon"),
        ("gamma", "gamma"),
        ("lambda_", "lambda_"),
        ("entropy_weight", "entropy_weight"),
        ("two_hot_rets", "two_hot_values"),
        ("model.two_hot_rets", "two_hot_values"),
    ):
        m[f"actor_critic.{ref}"] = Rule((f"{a}{ours}",))
    m["actor_critic.model.num_actions"] = Rule(
        (), ("null",), "the number of actions comes from the environment"
    )
    m["actor_critic.model.frame_encoder_config.image_channels"] = Rule(
        (), ("3",), "our environments give RGB frames"
    )
    for key in _CNN_KEYS:
        m[f"actor_critic.model.frame_encoder_config.{key}"] = Rule((f"{a}frame_cnn.{key}",))
    return m


#: reference path (without ``params.``) -> our key(s)
MAPPED: dict[str, Rule] = _build_mapped()

#: accepted and dropped: the reference's trainer does not read them either (or only its play tool does)
NO_EFFECT: dict[str, str] = {
    "evaluation.actor_critic.num_episodes_to_save": "the reference's trainer never reads it",
    "evaluation.actor_critic.start_after_epochs": "the reference's trainer never reads it",
    "env.keymap": "only the reference's play tool reads it; deltairis-play picks the keymap from the env",
}

_TARGET = "a class path of the reference's own code (our models and envs are built from the config's values)"
_EVAL = (
    "our evaluation uses the training value (training.{c}.{key}); set that one, or evaluation.num_batches "
    "to cap the evaluation batches"
)
_MIRROR = "our decoder mirrors the encoder's layers: set tokenizer.encoder_config.{key}"
#: reference path (without ``params.``) -> why we refuse it
REFUSED: dict[str, str] = {
    "tokenizer._target_": _TARGET,
    "world_model._target_": _TARGET,
    "world_model.transformer_config._target_": _TARGET,
    "actor_critic._target_": _TARGET,
    "actor_critic.model._target_": _TARGET,
    "env.train._target_": _TARGET,
    "env.test._target_": _TARGET,
    "env.train.env._target_": _TARGET,
    "env.test.env._target_": _TARGET,
    "tokenizer.decoder_config.latent_dim": (
        "derived: frame_cnn_config.latent_dim + decoder_act_channels + encoder_config.latent_dim (set those)"
    ),
    "tokenizer.decoder_config.mult": _MIRROR.format(key="mult"),
    "tokenizer.decoder_config.down": _MIRROR.format(key="down"),
    **{
        f"evaluation.{c}.{key}": _EVAL.format(c=c, key={"batch_num_samples": "batch_size"}.get(key, key))
        for c in ("tokenizer", "world_model")
        for key in ("batch_num_samples", "start_after_epochs")
    },
}

#: the reference's interpolations: more keys a reference path sets, each only when the command line does
#: not set that key itself (in the reference an explicit value replaces the interpolation)
INTERPOLATIONS: dict[str, tuple[str, ...]] = {
    # the world model has as many blocks as its training sequences
    "training.world_model.sequence_length": (f"{_AO}world_model.transformer.max_blocks",),
    # the world model's vocabulary is the tokenizer's codebook
    "tokenizer.codebook_size": (f"{_AO}world_model.latent_vocab_size",),
    "collection.train.num_episodes_to_save": ("collection.test.num_episodes_to_save",),
}

#: the same under one ``params=`` preset only
PRESET_EXTRAS: dict[str, dict[str, tuple[str, ...]]] = {
    "crafter": {"training.world_model.sequence_length": ("training.tokenizer.seq_len",)},
    "atari": {"training.tokenizer.steps_first_epoch": (f"{_AO}tokenizer.max_codebook_updates_with_revival",)},
}

_ENV_SPLIT_KEYS = (
    "id",
    "size",
    "max_episode_steps",
    "noop_max",
    "frame_skip",
    "done_on_life_loss",
    "clip_reward",
)


def env_rule(env: str | None, path: str) -> Rule | None:
    """The rule of an ``env.train.*`` / ``env.test.*`` path of the reference under our ``env=`` choice;
    None for a path that is not one of the reference's env keys."""
    parts = path.split(".")
    if len(parts) != 3 or parts[0] != "env" or parts[1] not in ("train", "test"):
        if parts[:3] in (["env", "train", "env"], ["env", "test", "env"]) and parts[3:] == ["reward"]:
            return Rule((), ("true",), "Crafter is always played with rewards")
        return None
    split, key = parts[1], parts[2]
    if key not in _ENV_SPLIT_KEYS:
        return None
    if key == "size":
        return Rule((), ("64",), "frames are resized to 64x64")
    if key == "clip_reward":
        return Rule((), ("false",), "rewards are never clipped (the reference's setting)")
    if env == "atari":
        if key == "max_episode_steps":  # the reference's time limit sits inside the frame skip: raw frames
            return Rule((f"env.{split}.max_episode_frames",))
        if key == "frame_skip":
            return Rule((), ("4",), "our Atari envs skip 4 frames (max over the last 2)")
        if key == "done_on_life_loss":
            value = "true" if split == "train" else "false"
            return Rule((), (value,), f"a lost life ends an episode in training only (env.{split} settings)")
    elif key == "done_on_life_loss":
        return Rule((), ("false",), "only Atari has lives")
    return _same(path)


def _all_rows() -> dict[str, str]:
    """The README table: reference path -> our key(s) or the reason it is refused (for documentation)."""
    rows = {k: ", ".join(r.targets) or f"(only {'/'.join(r.only or ())}: {r.why})" for k, r in MAPPED.items()}
    rows.update({k: f"(accepted, no effect: {why})" for k, why in NO_EFFECT.items()})
    rows.update({k: f"REFUSED: {why}" for k, why in REFUSED.items()})
    return rows


def _norm(value: object) -> str:
    if value is None:
        return "null"
    return str(value).lower()


def _split(text: str) -> tuple[str, str, str] | None:
    """``(prefix, key, value text)`` of a ``key=value`` override (prefix ``+``, ``++`` or ``~``)."""
    if "=" not in text:
        return None
    key, value = text.split("=", 1)
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    return prefix, key[len(prefix) :], value


def _choices(texts: Sequence[str], group: str, default: str) -> list[str]:
    """The choice(s) of a config group on the command line: the last one given (each value of a sweep
    ``a,b``), or the default."""
    found = default
    for text in texts:
        parts = _split(text)
        if parts and parts[1] == group:
            found = parts[2]
    return [v.strip() for v in found.split(",")]


def _one(options: dict[str, object], what: str, key: str) -> object:
    """The one meaning a reference path has under every swept group choice; a ConfigError otherwise."""
    distinct = {repr(v) for v in options.values()}
    if len(distinct) > 1:
        raise ConfigError(
            f"{key} means different keys under the swept {what} choices {sorted(options)}; sweep them in "
            "separate commands"
        )
    return next(iter(options.values()))


def _values(text: str) -> tuple[bool, list[object]]:
    """Whether an override sweeps, and its value(s) as Python objects (Hydra's override grammar)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        item = OverridesParser.create().parse_overrides([text])[0]
    except Exception as exc:
        raise ConfigError(f"invalid override {text!r}: {exc}") from exc
    if item.is_sweep_override():
        try:
            return True, list(item.sweep_iterator())
        except Exception:  # noqa: BLE001 (interval sweeps have no value list)
            return True, []
    return False, [item.value()]


def _check_conflicts(pending: Sequence[tuple[str, str, str, Rule, str]]) -> None:
    """Two reference paths that set one of our keys to different values (the reference keeps them apart,
    e.g. the collectors' and the actor-critic's ``burn_in_length``): a ConfigError naming both."""
    seen: dict[str, tuple[str, str]] = {}
    for _, prefix, path, rule, value in pending:
        if not path or prefix.startswith("~") or rule.targets == (path,):
            continue
        for target in rule.targets:
            if target in seen and seen[target][1] != value:
                other, other_value = seen[target]
                raise ConfigError(
                    f"{other}={other_value} and {path}={value} both set {target}, which is one setting here; "
                    "give them the same value"
                )
            seen[target] = (path, value)


def rewrite_overrides(texts: Sequence[str], notes: list[str] | None = None) -> list[str]:
    """Our override strings for a command line that may use the reference's paths.

    Our own keys pass through unchanged; a ``params.`` prefix is removed; a reference path becomes our
    key(s). A sweep over a path with several targets sweeps the first and links the others to it
    (``${...}``), so a sweep stays one job per value. ``notes`` receives a line per accepted key that
    has no effect.

    Raises:
        ConfigError: a refused key (the message names it and why), or a value we do not implement.
    """
    envs = _choices(texts, "env", "crafter")
    presets = _choices(texts, "params", "crafter")
    out: list[str] = []
    # our keys the command line sets itself: an interpolation of the reference never overrides them
    explicit: set[str] = set()
    own: set[str] = set()  # our keys the command line sets by their own name
    pending: list[tuple[str, str, str, Rule, str]] = []
    for text in texts:
        parts = _split(text)
        if parts is None or "." not in parts[1] or "@" in parts[1] or parts[1].startswith("hydra."):
            pending.append((text, "", "", Rule(()), ""))
            continue
        prefix, key, value = parts
        path = key.removeprefix("params.")
        if path.startswith("env."):
            rule = _one({e: env_rule(e, path) for e in envs}, "env=", key)
            assert rule is None or isinstance(rule, Rule)
        else:
            rule = MAPPED.get(path)
        if path in REFUSED:
            raise ConfigError(f"{key} (a key of the reference's configs) is not supported: {REFUSED[path]}")
        if rule is None and path in NO_EFFECT:
            if notes is not None:
                notes.append(f"{key} is accepted and has no effect: {NO_EFFECT[path]}")
            continue
        if rule is None:
            rule = _same(path)  # one of our keys (or an unknown one, which Hydra rejects naming it)
        explicit.update(rule.targets)
        if rule.targets == (path,):
            own.add(path)
        pending.append((text, prefix, path, rule, value))
    _check_conflicts(pending)
    for text, prefix, path, rule, value in pending:
        if not path:
            out.append(text)
            continue
        if rule.only is not None:
            sweep, values = _values(text)
            bad = [v for v in values if _norm(v) not in rule.only]
            if bad or (sweep and not values):
                shown = value if sweep else _norm(values[0] if values else value)
                raise ConfigError(
                    f"{text.split('=', 1)[0].lstrip('+~')}={shown} is not supported (only "
                    f"{' or '.join(rule.only)}): {rule.why}"
                )
        extras = _one({p: PRESET_EXTRAS.get(p, {}).get(path, ()) for p in presets}, "params=", path)
        assert isinstance(extras, tuple)
        linked = (*INTERPOLATIONS.get(path, ()), *extras)
        targets = [*rule.targets, *(t for t in linked if t not in explicit)]
        if not targets:
            continue
        if prefix.startswith("~"):
            out.extend(f"~{t}" for t in targets)
            continue
        sweep = len(targets) > 1 and _values(text)[0]
        # a sweep goes on one target (one not set by its own name elsewhere); the others follow it
        anchor = next((t for t in targets if t not in own), targets[0])
        for target in targets:
            # our own key keeps its prefix; a mapped one exists in our config (``++`` adds a model override)
            add = prefix if target == path else "++" if target.startswith(_AO) or prefix == "++" else ""
            text_value = "${" + anchor + "}" if sweep and target != anchor else value
            out.append(f"{add}{target}={text_value}")
    return out


__all__ = [
    "INTERPOLATIONS",
    "MAPPED",
    "NO_EFFECT",
    "PRESET_EXTRAS",
    "REFUSED",
    "Rule",
    "env_rule",
    "rewrite_overrides",
]
