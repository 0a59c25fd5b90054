"""The trainer's component table: what trains, how it samples, its loss call and its optimizer.

Each of the tokenizer, the world model and the actor-critic is one :class:`Component` record, built from
the static :data:`COMPONENTS` table (:class:`ComponentSpec`) for a given agent and config. The trainer
loops over the records and treats them all alike (DIAMOND's ``loss, metrics = component(batch)``):

- ``loss(batch, seed, row_offset=0) -> LossOutput`` (the seed feeds the actor-critic's imagination, and
  ``row_offset``, the global index of the batch's first row when it is one rank's slice, keeps its
  samples those of the whole batch; the others ignore both);
- ``after_loss()``, when set, runs after the loss and before the optimizer step (the actor-critic's
  target EMA, where the reference does it);
- ``loss_buffers`` are the buffers the loss call updates (the tokenizer's codebook EMA); a step the
  non-finite guard skips puts them back as they were;
- ``optimizer`` comes from :func:`deltairis.models.configure_optimizer` with the component's
  ``training.<name>`` settings (``learning_rate``, ``weight_decay``, ``optimizer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deltairis.models import LossOutput, configure_optimizer
from deltairis.rl.losses import ActorCriticLoss


@dataclass(frozen=True)
class ComponentSpec:
    """How one component of an agent trains (independent of a particular agent)."""

    name: str
    #: the sub-module switched to train mode while this component trains
    train_module: Callable[[Any], nn.Module]
    #: the sub-module whose trainable parameters the optimizer updates and the gradient clip sees
    optim_module: Callable[[Any], nn.Module]
    #: ``loss(batch, seed, row_offset=0)`` bound to an agent
    make_loss: Callable[[Any], Callable[..., LossOutput]]
    #: "both": segments padded on both sides, "left": only before the episode start
    pad_mode: str
    #: whether its losses are also computed on the test episodes at evaluation
    evaluated: bool
    #: the hook after the loss, before the optimizer step (or None)
    make_after_loss: Callable[[Any], Callable[[], None]] | None = None
    #: buffers the loss call itself updates (the codebook EMA): restored when a step is skipped
    loss_buffers: Callable[[Any], list[torch.Tensor]] = lambda agent: []


COMPONENTS: tuple[ComponentSpec, ...] = (
    ComponentSpec(
        name="tokenizer",
        train_module=lambda agent: agent.tokenizer,
        optim_module=lambda agent: agent.tokenizer,
        make_loss=lambda agent: lambda batch, seed, row_offset=0: agent.tokenizer.compute_loss(batch),
        pad_mode="both",
        evaluated=True,
        loss_buffers=lambda agent: list(agent.tokenizer.quantizer.buffers()),
    ),
    ComponentSpec(
        name="world_model",
        train_module=lambda agent: agent.world_model,
        optim_module=lambda agent: agent.world_model,
        make_loss=lambda agent: (
            lambda batch, seed, row_offset=0: agent.world_model.compute_loss(batch, agent.tokenizer)
        ),
        pad_mode="both",
        evaluated=True,
    ),
    ComponentSpec(
        name="actor_critic",
        train_module=lambda agent: agent.actor_critic,
        optim_module=lambda agent: agent.actor_critic.model,  # the target network follows by EMA
        make_loss=lambda agent: ActorCriticLoss(agent.actor_critic, agent.tokenizer, agent.world_model),
        pad_mode="left",
        evaluated=False,
        make_after_loss=lambda agent: lambda: agent.actor_critic.update_target(),
    ),
)

COMPONENT_NAMES: tuple[str, ...] = tuple(spec.name for spec in COMPONENTS)


@dataclass
class Component:
    """One component of a training run, bound to its agent and its ``training.<name>`` config."""

    spec: ComponentSpec
    config: Any  # training.<name>
    train_module: nn.Module
    parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    loss: Callable[..., LossOutput]
    seq_len: int
    after_loss: Callable[[], None] | None
    loss_buffers: list[torch.Tensor]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pad_mode(self) -> str:
        return self.spec.pad_mode


def build_components(agent: Any, training_cfg: Any) -> dict[str, Component]:
    """The records of :data:`COMPONENTS` for ``agent`` with the ``training`` section of a config."""
    out = {}
    for spec in COMPONENTS:
        c = training_cfg[spec.name]
        module = spec.optim_module(agent)
        seq_len = int(c.seq_len) if c.seq_len is not None else int(agent.config.actor_critic.burn_in) + 1
        out[spec.name] = Component(
            spec=spec,
            config=c,
            train_module=spec.train_module(agent),
            parameters=[p for p in module.parameters() if p.requires_grad],
            optimizer=configure_optimizer(
                module, float(c.learning_rate), float(c.weight_decay), str(c.optimizer)
            ),
            loss=spec.make_loss(agent),
            seq_len=seq_len,
            after_loss=None if spec.make_after_loss is None else spec.make_after_loss(agent),
            loss_buffers=spec.loss_buffers(agent),
        )
    return out


__all__ = ["COMPONENTS", "COMPONENT_NAMES", "Component", "ComponentSpec", "build_components"]
