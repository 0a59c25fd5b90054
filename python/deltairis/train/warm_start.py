"""Warm starts: a fresh run that begins from the weights of a checkpoint (the reference's
``initialization.path_to_checkpoint`` with ``load_tokenizer`` / ``load_world_model`` / ``load_actor_critic``;
ours: ``agent.path_to_ckpt`` and ``agent.load_<component>``).

The file is our agent checkpoint (``checkpoints/last.pt`` of a run, :func:`deltairis.agent.save_agent`) or a
flat state dict in the reference layout (``tokenizer.*``, ``world_model.*``, ``actor_critic.*``, e.g. the
published Crafter ``last.pt``); a run folder stands for its ``checkpoints/last.pt``. Only the chosen
components are loaded, each strictly: a missing, unexpected or mis-shaped tensor is a
:class:`~deltairis.errors.CheckpointError` naming it, and nothing is loaded then. Everything else of the
run (optimizers, replay store, epoch) starts fresh, as in the reference.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from deltairis.agent import CHECKPOINT_FORMAT, Agent
from deltairis.checkpoint import UnsafeCheckpointError, load_safe
from deltairis.errors import CheckpointError, CorruptCheckpointError

logger = logging.getLogger(__name__)

COMPONENTS = ("tokenizer", "world_model", "actor_critic")


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The weights file of ``path``: the file itself, or a run folder's ``checkpoints/last.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.pt", p / "last.pt"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"no checkpoints/last.pt in {p} (agent.path_to_ckpt)")
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p} (agent.path_to_ckpt)")
    return p


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The flat agent state dict held by our checkpoint or a reference-layout file (read with
    ``weights_only=True``: tensors and plain containers only, no code runs)."""
    file = checkpoint_file(path)
    try:
        payload = load_safe(file, "warm-start checkpoint")
    except UnsafeCheckpointError:
        raise  # names the file and what it would have run; nothing was loaded
    except CorruptCheckpointError as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {exc}") from exc
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        payload = payload.get("state_dict")
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"checkpoint {file} holds a {type(payload).__name__}, expected an agent state dict"
        )
    return {str(k): v for k, v in payload.items()}


def _component_state(
    agent: Agent, state_dict: Mapping[str, object], name: str, what: str
) -> dict[str, torch.Tensor]:
    """The ``name.*`` tensors of ``state_dict`` (prefix removed), checked against ``agent.<name>``."""
    prefix = f"{name}."
    sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointError(
            f"{what} holds no {prefix}* tensors; set agent.load_{name}=false "
            f"(initialization.load_{name}=false) to keep the fresh {name}"
        )
    expected = getattr(agent, name).state_dict()
    problems: list[str] = []
    missing = sorted(set(expected) - set(sub))
    unexpected = sorted(set(sub) - set(expected))
    if missing:
        problems.append(
            "missing " + ", ".join(prefix + k for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        )
    if unexpected:
        problems.append(
            "unexpected "
            + ", ".join(prefix + k for k in unexpected[:10])
            + (" ..." if len(unexpected) > 10 else "")
        )
    for key in sorted(set(expected) & set(sub)):
        value, want = sub[key], expected[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{prefix}{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(want.shape):
            problems.append(
                f"{prefix}{key} has shape {tuple(value.shape)} in the checkpoint, "
                f"the model has {tuple(want.shape)}"
            )
        elif value.is_floating_point() != want.is_floating_point():
            problems.append(f"{prefix}{key} has dtype {value.dtype}, the model has {want.dtype}")
        elif key.endswith(".sa.mask") and not torch.equal(value.bool(), want.bool().cpu()):
            problems.append(
                f"{prefix}{key} is another attention mask than this model's (transformer attention type)"
            )
    if problems:
        raise CheckpointError(
            f"{what}: the {name} does not match this run's model ({'; '.join(problems)}); set the model "
            f"configuration (params / agent.overrides) to the checkpoint's, or agent.load_{name}=false"
        )
    return {k: v for k, v in sub.items() if isinstance(v, torch.Tensor)}


def warm_start(agent: Agent, path: str | os.PathLike[str], components: Sequence[str]) -> list[str]:
    """Load ``components`` of ``agent`` from the checkpoint at ``path``, strictly; returns those loaded.

    Every chosen component is checked before any is loaded, so a refused warm start leaves the agent as
    it was. Raises :class:`CheckpointError` (naming the tensor) or :class:`FileNotFoundError`.
    """
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown agent components {unknown}; expected some of {list(COMPONENTS)}")
    chosen = [c for c in COMPONENTS if c in components]
    if not chosen:
        logger.warning(
            "agent.path_to_ckpt=%s is set but no component is chosen (agent.load_*): nothing loaded", path
        )
        return []
    file = checkpoint_file(path)
    state_dict = read_state_dict(file)
    what = f"checkpoint {file}"
    parts = {name: _component_state(agent, state_dict, name, what) for name in chosen}
    for name, sub in parts.items():
        getattr(agent, name).load_state_dict(sub, strict=True)
    kept = [c for c in COMPONENTS if c not in chosen]
    logger.info(
        "warm start from %s: loaded %s%s",
        file,
        ", ".join(chosen),
        f" (fresh: {', '.join(kept)})" if kept else "",
    )
    return chosen


__all__ = ["COMPONENTS", "checkpoint_file", "read_state_dict", "warm_start"]
