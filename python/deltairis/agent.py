"""The agent (tokenizer + world model + actor-critic), checkpoints and the parity API.

``load_agent`` accepts two formats:

* our checkpoint: ``{"format": "deltairis-agent", "version": 1, "config": {...}, "state_dict": {...}}``
  (written by :func:`agent_checkpoint`), which carries its own configuration;
* a flat state dict in the reference layout (docs/algorithm.md section 7), e.g. the published Crafter ``last.pt``,
  interpreted with the given preset; ``num_actions`` is read from the file when not given.

Loading is strict: a missing, unexpected or mis-shaped tensor raises :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from deltairis.checkpoint import LegacyCheckpointError, UnsafeCheckpointError, load_safe
from deltairis.config.models import AgentConfig, make_agent_config
from deltairis.errors import CheckpointError
from deltairis.models.actor_critic import ActorCritic
from deltairis.models.tokenizer import Tokenizer
from deltairis.models.transformer import build_mask
from deltairis.models.world_model import WorldModel, WorldModelLogits

CHECKPOINT_FORMAT = "deltairis-agent"
CHECKPOINT_VERSION = 1


class PolicyLogits(NamedTuple):
    actions: torch.Tensor  # (B, T, A)
    values: torch.Tensor  # (B, T)


class Agent(nn.Module):
    def __init__(self, config: AgentConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer(config.tokenizer)
        self.world_model = WorldModel(config.world_model)
        self.actor_critic = ActorCritic(config.actor_critic)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- parity API (obs float in [0, 1], (B, T, 3, 64, 64); act int64 (B, T)) --------------------
    @torch.no_grad()
    def delta_tokens(self, obs_prev: torch.Tensor, act: torch.Tensor, obs_next: torch.Tensor) -> torch.Tensor:
        """The tokenizer's Δ-tokens of each transition: int64 (B, T, K)."""
        _check_obs_act(obs_prev, act, "obs_prev")
        _check_obs_act(obs_next, act, "obs_next")
        return self.tokenizer.encode_tokens(obs_prev, act, obs_next)

    @torch.no_grad()
    def reconstruct(self, obs_prev: torch.Tensor, act: torch.Tensor, obs_next: torch.Tensor) -> torch.Tensor:
        """Encode, quantize, decode: (B, T, 3, 64, 64) clamped to [0, 1] and rounded to 1/255."""
        _check_obs_act(obs_prev, act, "obs_prev")
        _check_obs_act(obs_next, act, "obs_next")
        recon, _ = self.tokenizer(obs_prev, act, obs_next, clamp=True)
        return recon

    @torch.no_grad()
    def world_model_logits(self, obs: torch.Tensor, act: torch.Tensor) -> WorldModelLogits:
        """Teacher-forced logits: latents (B, T-1, K, V), rewards (B, T, R), ends (B, T, 2)."""
        _check_obs_act(obs, act, "obs")
        tokens = self.tokenizer.encode_tokens(obs[:, :-1], act[:, :-1], obs[:, 1:])
        return self.world_model.forward_logits(obs, act, tokens)

    @torch.no_grad()
    def policy_logits(self, obs: torch.Tensor) -> PolicyLogits:
        """Online actor-critic frame by frame from a zero LSTM state: actions (B, T, A), values (B, T)."""
        if obs.dim() != 5:
            raise ValueError(f"obs must be (B, T, 3, H, W), got shape {tuple(obs.shape)}")
        model = self.actor_critic.model
        state = model.initial_state(obs.size(0), obs.device)
        logits, values = [], []
        for t in range(obs.size(1)):
            out = model(obs[:, t], state)
            state = out.state
            logits.append(out.logits)
            values.append(model.value(out.value_logits))
        return PolicyLogits(torch.stack(logits, 1), torch.stack(values, 1))


def _check_obs_act(obs: torch.Tensor, act: torch.Tensor, name: str) -> None:
    if obs.dim() != 5 or obs.size(2) != 3:
        raise ValueError(f"{name} must be float (B, T, 3, H, W), got shape {tuple(obs.shape)}")
    if not obs.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1], got {obs.dtype}")
    if act.shape != obs.shape[:2]:
        raise ValueError(f"act must be (B, T) = {tuple(obs.shape[:2])}, got {tuple(act.shape)}")
    if act.dtype != torch.int64:
        raise ValueError(f"act must be int64, got {act.dtype}")


# -- checkpoints ------------------------------------------------------------------------------------
def agent_checkpoint(agent: Agent) -> dict[str, Any]:
    """Our self-describing checkpoint payload (write it with torch.save, atomically)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": agent.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in agent.state_dict().items()},
    }


def save_agent(agent: Agent, path: str | os.PathLike[str]) -> None:
    """Write :func:`agent_checkpoint` atomically (temporary file, fsync, rename, directory fsync)."""
    from deltairis.checkpoint import atomic_torch_save

    atomic_torch_save(agent_checkpoint(agent), Path(path))


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Any], what: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected, non-tensor or mis-shaped entry."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(
            f"unexpected keys: {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else "")
        )
    for k in sorted(set(expected) & set(state_dict)):
        v = state_dict[k]
        if not isinstance(v, torch.Tensor):
            problems.append(f"{k} is a {type(v).__name__}, not a tensor")
        elif tuple(v.shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
        elif v.is_floating_point() != expected[k].is_floating_point() or (v.dtype == torch.bool) != (
            expected[k].dtype == torch.bool
        ):
            problems.append(f"{k} has dtype {v.dtype}, expected {expected[k].dtype}")
        elif not torch.isfinite(v.float()).all():
            problems.append(f"{k} contains NaN or infinite values")
    if problems:
        raise CheckpointError(f"{what} does not match the agent: " + "; ".join(problems))


def _check_masks(agent: Agent, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    expected = build_mask(agent.config.world_model.transformer)
    for k, v in state_dict.items():
        is_mask = k.startswith("world_model.transformer.blocks.") and k.endswith(".sa.mask")
        if is_mask and not torch.equal(v.bool().cpu(), expected):
            raise CheckpointError(
                f"{what}: {k} is not the {agent.config.world_model.transformer.attention} attention mask "
                "of this configuration (set the transformer's attention type to match the checkpoint)"
            )


def load_agent(
    path: str | os.PathLike[str],
    preset: str = "crafter",
    num_actions: int | None = None,
    device: torch.device | str = "cpu",
) -> Agent:
    """Load our checkpoint or a reference-layout state dict, strictly. See the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = load_safe(path, "checkpoint")  # weights_only: a file that would run code is refused unread
    except (UnsafeCheckpointError, LegacyCheckpointError):
        raise
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or not a torch file ({exc})"
        ) from exc
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, expected a state dict")
    if payload.get("format") == CHECKPOINT_FORMAT:
        if payload.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format version {payload.get('version')}, expected {CHECKPOINT_VERSION}"
            )
        try:
            config = AgentConfig.from_dict(payload["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} has an invalid config: {exc}") from exc
        if num_actions is not None and num_actions != config.num_actions:
            raise CheckpointError(f"checkpoint {path} is for {config.num_actions} actions, not {num_actions}")
        state_dict = payload["state_dict"]
    else:
        state_dict = payload
        key = "tokenizer.encoder_act_emb.weight"
        if num_actions is None:
            if key not in state_dict or not isinstance(state_dict[key], torch.Tensor):
                raise CheckpointError(f"checkpoint {path} has no {key}; pass num_actions explicitly")
            num_actions = int(state_dict[key].shape[0])
        config = make_agent_config(preset, num_actions)
    agent = Agent(config)
    what = f"checkpoint {path} ({config.preset} preset, {config.num_actions} actions)"
    check_state_dict(agent, state_dict, what)
    _check_masks(agent, state_dict, what)
    agent.load_state_dict(state_dict, strict=True)
    return agent.to(device).eval()


__all__ = [
    "Agent",
    "CheckpointError",
    "PolicyLogits",
    "agent_checkpoint",
    "check_state_dict",
    "load_agent",
    "save_agent",
]
