"""One gradient step of a component, the same at any world size (issue #13).

:func:`gradient_step` is the body of the trainer's loop (:meth:`deltairis.train.trainer.Trainer.train_component`):
loss, the hook after it, backward, gradient averaging over ranks, clipping, the non-finite guard and the
optimizer step. At world size ``W`` each rank passes its slice of the global batch (rows ``[a, b)``,
``row_offset=a``); then:

- the loss runs inside :func:`deltairis.distributed.sharded_losses`: every masked mean divides the
  rank's sum by the global count over ``W``, and the codebook EMA gathers the vectors of all ranks, so
  the average over ranks of the losses, gradients and metrics is the single-process one;
- gradients are averaged over ranks (one all-reduce) before clipping, so the clip sees the global norm
  and every rank applies the same update;
- the non-finite guard decides the same on every rank (the loss's finiteness is reduced too), and the
  step's metrics are averaged over ranks in the same all-reduce, so every rank holds the single-process
  metrics (no collective is left for the end of a phase or a mid-epoch checkpoint).

At world size 1 nothing of this communicates and the step is the single-process step of before.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from deltairis import distributed
from deltairis.train.components import Component


@dataclass
class StepResult:
    """What one step did: ``applied`` False when the guard skipped it (no weight or buffer changed);
    ``metrics`` are the whole batch's (averaged over ranks)."""

    applied: bool
    grad_norm: torch.Tensor
    metrics: dict[str, torch.Tensor]


def gradient_step(
    component: Component,
    batch: Any,
    seed: int,
    max_grad_norm: float,
    row_offset: int = 0,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> StepResult:
    """One optimizer step of ``component`` on ``batch`` (this rank's rows of the global batch)."""
    optimizer = component.optimizer
    saved = [b.clone() for b in component.loss_buffers]  # the guard restores them on a skip
    with distributed.sharded_losses(), autocast if autocast is not None else contextlib.nullcontext():
        # (a loss callable of two arguments, e.g. a test's wrapper, still works at row offset 0)
        out = component.loss(batch, seed, row_offset) if row_offset else component.loss(batch, seed)
    if component.after_loss is not None:
        component.after_loss()
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    distributed.average_gradients(component.parameters)
    grad_norm = torch.nn.utils.clip_grad_norm_(component.parameters, max_grad_norm).detach()
    finite = torch.isfinite(out.loss.detach()) & torch.isfinite(grad_norm)
    metrics = out.metrics
    if distributed.current().is_distributed:
        # a rank whose loss is not finite makes every rank skip (the averaged norm is already global);
        # each rank's metrics are its share of the global means: their average is the global mean
        bad = (~finite).float().reshape(1)
        metrics = {k: v.detach().float().reshape(()).clone() for k, v in out.metrics.items()}
        distributed.all_reduce_mean_([bad, *metrics.values()])
        finite = bad[0] == 0
    # The non-finite guard: one host sync per step (a skipped step changes no weight).
    if not bool(finite):
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buf, value in zip(component.loss_buffers, saved):
                buf.copy_(value)
        return StepResult(False, grad_norm, {})
    optimizer.step()
    return StepResult(True, grad_norm, metrics)


def sync_torch_rng(device: torch.device) -> None:
    """Give every rank rank 0's torch RNG state (CPU, and the current CUDA device's when ``device`` is CUDA).

    Called at the start of each training phase: the codebook EMA's revival draws (``torch.rand``) must be
    the same on every rank, and rank 0's state is the one the single process would have.
    """
    if not distributed.current().is_distributed:
        return
    cuda = torch.device(device).type == "cuda"
    state = (torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None)
    cpu, gpu = distributed.broadcast_object(state)
    torch.set_rng_state(cpu)
    if cuda and gpu is not None:
        torch.cuda.set_rng_state(gpu)


__all__ = ["StepResult", "gradient_step", "sync_torch_rng"]
