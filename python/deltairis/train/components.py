"""The trainer's component table: what trains, how it samples, its loss call and its optimizer.

Each of the tokenizer, the world model and the actor-critic is one :class:`Component` record, built from
the static :data:`COMPONENTS` table (:class:`ComponentSpec`) for a given agent and config. The trainer
loops over the records and treats them all alike (DIAMOND's ``loss, metrics = component(batch)``):

- ``loss(batch, seed, row_offset=0) -> LossOutput`` (the seed feeds the actor-critic's imagination, and
  ``row_offset``, the global index of the batch's first row when it is one rank's slice, keeps its
  samples those of the whole batch; the others ignore both);
- ``after_loss()``, when set, runs after the loss and before the optimizer step (the actor-critic's
  target EMA, where the reference does it);
- ``loss_buffers`` are the tensors the loss call updates besides the gradients (the tokenizer's codebook
  EMA, the actor-critic's target network moved by ``after_loss``); a step the non-finite guard skips puts
  them back as they were, so it changes no weight;
- ``optimizer`` comes from :func:`deltairis.models.configure_optimizer` with the component's
  ``training.<name>`` settings (``learning_rate``, ``weight_decay``, ``optimizer``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deltairis.config.schema import ComponentTrainingConfig, TrainingConfig
from deltairis.data import ReplayStore, StepPrefetcher
from deltairis.models import LossOutput, configure_optimizer
from deltairis.rl.losses import ActorCriticLoss
from deltairis.seeding import derive_seed

if TYPE_CHECKING:
    from deltairis.agent import Agent


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
        loss_buffers=lambda agent: list(agent.actor_critic.target_model.parameters()),
    ),
)

COMPONENT_NAMES: tuple[str, ...] = tuple(spec.name for spec in COMPONENTS)


@dataclass
class Component:
    """One component of a training run, bound to its agent and its ``training.<name>`` config."""

    spec: ComponentSpec
    config: ComponentTrainingConfig  # training.<name>
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

    @property
    def grad_acc_steps(self) -> int:
        """Micro-batches per optimizer step (``training.<name>.grad_acc_steps``)."""
        return self.config.grad_acc_steps

    def draws(self, step: int) -> range:
        """The draws of optimizer step ``step``: its micro-batch ``j`` is draw ``step * k + j`` of the
        phase (``k`` = :attr:`grad_acc_steps`), drawn with ``derive_seed(run_seed, name, epoch, draw)``
        and imagining from ``derive_seed(run_seed, name, "imagine", epoch, draw)``. With ``k = 1`` the
        draw is the step, as before gradient accumulation existed."""
        k = self.grad_acc_steps
        return range(step * k, (step + 1) * k)

    def micro_batches(
        self, prefetch: StepPrefetcher, step: int, run_seed: int, epoch: int
    ) -> Iterator[tuple[Any, int]]:
        """The ``(batch, imagination seed)`` pairs of optimizer step ``step``, taken from ``prefetch`` one
        at a time: micro-batch ``j`` is taken (and counted) when its loss is about to run."""
        for draw in self.draws(step):
            yield prefetch.take(draw), derive_seed(run_seed, self.name, "imagine", epoch, draw)

    def prefetcher(
        self,
        store: ReplayStore,
        epoch: int,
        steps: range,
        run_seed: int,
        device: torch.device,
        rows: slice | None = None,
    ) -> StepPrefetcher:
        """The micro-batches of the optimizer ``steps`` of this component's phase in ``epoch`` (the
        :meth:`draws` of each, in order), each drawn (and gathered into pinned buffers on CUDA) while the
        one before trains. A batch is counted when taken, so a batch drawn ahead leaves the visit counts of
        a mid-epoch checkpoint alone; as in the reference, visit counts are updated from global epoch 2
        on, per micro-batch. ``rows``: this rank's slice of the global batch."""
        if steps.step != 1:
            raise ValueError(f"{self.name}: the steps of a phase are consecutive, got {steps}")
        k = self.grad_acc_steps
        return StepPrefetcher(
            store,
            self.name,
            self.config.batch_size,
            self.seq_len,
            steps=range(steps.start * k, steps.stop * k),
            seed_of=lambda draw: derive_seed(run_seed, self.name, epoch, draw),
            device=device,
            pad_mode=self.pad_mode,
            alpha=self.config.sampling_alpha,
            update_counts=epoch > 1,
            rows=rows,
        )


def component_config(training_cfg: TrainingConfig, name: str) -> ComponentTrainingConfig:
    """The ``training.<name>`` section of a component."""
    c = getattr(training_cfg, name)
    assert isinstance(c, ComponentTrainingConfig), f"training.{name} is not a component's training section"
    return c


def build_components(agent: Agent, training_cfg: TrainingConfig) -> dict[str, Component]:
    """The records of :data:`COMPONENTS` for ``agent`` with the ``training`` section of a config."""
    out = {}
    for spec in COMPONENTS:
        c = component_config(training_cfg, spec.name)
        module = spec.optim_module(agent)
        seq_len = c.seq_len if c.seq_len is not None else agent.config.actor_critic.burn_in + 1
        out[spec.name] = Component(
            spec=spec,
            config=c,
            train_module=spec.train_module(agent),
            parameters=[p for p in module.parameters() if p.requires_grad],
            optimizer=configure_optimizer(module, c.learning_rate, c.weight_decay, c.optimizer),
            loss=spec.make_loss(agent),
            seq_len=seq_len,
            after_loss=None if spec.make_after_loss is None else spec.make_after_loss(agent),
            loss_buffers=spec.loss_buffers(agent),
        )
    return out


def epoch_steps(component_cfg: ComponentTrainingConfig, epoch: int) -> int:
    """Gradient (optimizer) steps of a component at global epoch ``epoch`` (0 before it starts); each
    is ``grad_acc_steps`` micro-batches.

    As in the reference, ``steps_first_epoch`` applies at global epoch 1 only: a component that starts
    later (the Atari tokenizer at epoch 6) runs ``steps_per_epoch`` from its first epoch on.
    """
    if epoch <= component_cfg.start_after_epochs:
        return 0
    return component_cfg.steps_first_epoch if epoch == 1 else component_cfg.steps_per_epoch


__all__ = [
    "COMPONENTS",
    "COMPONENT_NAMES",
    "Component",
    "ComponentSpec",
    "build_components",
    "component_config",
    "epoch_steps",
]
