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

Gradient accumulation (``training.<name>.grad_acc_steps`` = ``k``, the reference's ``grad_acc_steps``):
:func:`accumulated_step` runs the loss of ``k`` micro-batches, each divided by ``k`` before its backward
(the gradients add up in ``.grad``), then one averaging over ranks, one clip and one optimizer step. What
the reference does per forward stays per micro-batch: the codebook EMA (inside the tokenizer's loss), the
actor-critic's target EMA (``after_loss``) and the imagination's seed. The step's metrics are the means
over its micro-batches. The non-finite guard judges the whole step: one micro-batch with a non-finite loss,
or a non-finite gradient norm, skips it, and the loss buffers go back to what they were before its first
micro-batch. Every micro-batch runs even then, so that each rank makes the same collectives and the
sampler draws (and counts) the same batches whatever the guard decides. ``k = 1`` is
:func:`gradient_step`, bit for bit the step of before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
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


#: One micro-batch of an optimizer step: this rank's rows of the batch, and the seed of its loss call.
MicroBatch = tuple[Any, int]


def gradient_step(
    component: Component,
    batch: Any,
    seed: int,
    max_grad_norm: float,
    row_offset: int = 0,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> StepResult:
    """One optimizer step of ``component`` on ``batch`` (this rank's rows of the global batch)."""
    context = None if autocast is None else (lambda: autocast)
    return accumulated_step(component, [(batch, seed)], 1, max_grad_norm, row_offset, context)


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where the component asks for it (``training.<name>.mixed_precision``), on CUDA only."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accumulated_step(
    component: Component,
    micro_batches: Iterable[MicroBatch],
    grad_acc_steps: int,
    max_grad_norm: float,
    row_offset: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> StepResult:
    """One optimizer step of ``component`` over ``grad_acc_steps`` micro-batches.

    ``micro_batches`` yields exactly ``grad_acc_steps`` ``(batch, seed)`` pairs, taken one at a time (a
    generator may draw each batch when asked); ``autocast`` makes a fresh context for each loss call.
    """
    if grad_acc_steps < 1:
        raise ValueError(f"grad_acc_steps must be >= 1, got {grad_acc_steps}")
    optimizer = component.optimizer
    saved = [b.clone() for b in component.loss_buffers]  # the guard restores them on a skip
    optimizer.zero_grad(set_to_none=True)
    finite: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = {}
    count = 0
    for batch, seed in micro_batches:
        count += 1
        if count > grad_acc_steps:
            raise ValueError(f"{component.name}: more than grad_acc_steps={grad_acc_steps} micro-batches")
        with distributed.sharded_losses(), autocast() if autocast is not None else contextlib.nullcontext():
            # (a loss callable of two arguments, e.g. a test's wrapper, still works at row offset 0)
            out = component.loss(batch, seed, row_offset) if row_offset else component.loss(batch, seed)
        if component.after_loss is not None:
            component.after_loss()
        loss = out.loss if grad_acc_steps == 1 else out.loss / grad_acc_steps
        loss.backward()
        ok = torch.isfinite(out.loss.detach())
        finite = ok if finite is None else finite & ok
        if grad_acc_steps == 1:
            metrics = out.metrics
        else:
            for k, v in out.metrics.items():
                v = v.detach().to(torch.promote_types(v.dtype, torch.float32))
                metrics[k] = metrics[k] + v if k in metrics else v
        del out, loss  # this micro-batch's graph is gone before the next one's forward
    if count != grad_acc_steps:
        raise ValueError(f"{component.name}: {count} micro-batches for grad_acc_steps={grad_acc_steps}")
    assert finite is not None
    if grad_acc_steps > 1:
        metrics = {k: v / grad_acc_steps for k, v in metrics.items()}  # the means over the micro-batches
    distributed.average_gradients(component.parameters)
    grad_norm = torch.nn.utils.clip_grad_norm_(component.parameters, max_grad_norm).detach()
    finite = finite & torch.isfinite(grad_norm)
    if distributed.current().is_distributed:
        # a rank whose loss is not finite makes every rank skip (the averaged norm is already global);
        # each rank's metrics are its share of the global means: their average is the global mean
        bad = (~finite).float().reshape(1)
        metrics = {k: v.detach().float().reshape(()).clone() for k, v in metrics.items()}
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


__all__ = ["MicroBatch", "StepResult", "accumulated_step", "gradient_step", "sync_torch_rng"]
