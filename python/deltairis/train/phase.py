"""Resumable phases of an epoch: running sums of step metrics, the position inside a phase, pause points.

A training phase (a component's gradient steps) can stop after any step, at a signal or a periodic
mid-epoch checkpoint (:class:`PausePoints`), and go on later from the next step as if it had never
stopped: :class:`PhaseProgress` holds what the phase accumulated so far (step metric sums, gradient-norm
sum, skipped steps, seconds), and its :meth:`PhaseProgress.state_dict` is the ``partial`` of a
:class:`deltairis.train.state.Position`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from deltairis.config.schema import CommonConfig
from deltairis.errors import NonFiniteError

logger = logging.getLogger(__name__)


class RunningSums:
    """Per-key sums of scalar metric tensors, kept where the tensors are (no host sync until :meth:`means`).

    Every added value is detached and summed in float32, as the step metrics always were.
    """

    def __init__(self, sums: Mapping[str, torch.Tensor] | None = None) -> None:
        self.sums: dict[str, torch.Tensor] = dict(sums or {})

    def add(self, metrics: Mapping[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def means(self, count: int, prefix: str = "") -> dict[str, float]:
        """Each sum over ``count`` as a host float (one sync per key); ``{}`` when ``count`` is 0."""
        if count <= 0:
            return {}
        return {f"{prefix}{k}": float(v) / count for k, v in self.sums.items()}

    def to(self, device: torch.device | str) -> RunningSums:
        return RunningSums({k: v.to(device) for k, v in self.sums.items()})

    def __len__(self) -> int:
        return len(self.sums)


@dataclass
class PhaseProgress:
    """Where a training phase is: the step it (re)started from and what it accumulated up to now."""

    start_step: int = 0
    sums: RunningSums = field(default_factory=RunningSums)
    grad_norm_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    skipped: int = 0
    #: ``time.perf_counter()`` at the phase's start, moved back by the seconds of an interrupted part
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def resume(
        cls, device: torch.device, start_step: int = 0, partial: Mapping[str, Any] | None = None
    ) -> PhaseProgress:
        """A phase from ``start_step``: fresh, or going on from a mid-epoch checkpoint's ``partial``."""
        progress = cls(start_step, grad_norm_sum=torch.zeros((), device=device))
        if partial is not None:
            progress.sums = RunningSums(partial["sums"]).to(device)
            progress.grad_norm_sum = partial["grad_norm_sum"].to(device)
            progress.skipped = int(partial["skipped"])
            progress.t0 -= float(partial["seconds"])
        return progress

    def add_step(self, applied: bool, grad_norm: torch.Tensor, metrics: Mapping[str, torch.Tensor]) -> None:
        """Count one step: a skipped one (``applied`` False) adds nothing to the sums."""
        if not applied:
            self.skipped += 1
            return
        self.grad_norm_sum += grad_norm
        self.sums.add(metrics)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def state_dict(self) -> dict[str, Any]:
        """The partial sums on the host (a mid-epoch checkpoint's ``partial``)."""
        return {
            "sums": {k: v.cpu() for k, v in self.sums.sums.items()},
            "grad_norm_sum": self.grad_norm_sum.cpu(),
            "skipped": self.skipped,
            "seconds": self.seconds,
        }

    def metrics(self, name: str, steps: int, num_updates: int) -> dict[str, float]:
        """The phase's metrics after ``steps`` steps: loss means, mean gradient norm, throughput, counters."""
        applied = steps - self.skipped
        seconds = self.seconds
        out = self.sums.means(applied)  # one host sync per key, once per phase
        if applied:
            out[f"{name}/grad_norm"] = float(self.grad_norm_sum) / applied
        out[f"{name}/steps_per_s"] = steps / seconds if seconds > 0 else 0.0
        out[f"{name}/num_updates"] = float(num_updates)
        out[f"{name}/skipped_steps"] = float(self.skipped)
        return out


def check_skip_streak(name: str, streak: int, limit: int, epoch: int, step: int, last_good: str) -> None:
    """Log a step of ``name`` that the non-finite guard skipped (at ``epoch``/``step``, ``streak`` in a
    row); raise :class:`NonFiniteError` once the streak reaches ``limit`` (0: never), naming the last good
    checkpoint ``last_good``."""
    logger.warning("%s: non-finite loss or gradient norm at epoch %d step %d: step skipped", name, epoch, step)
    if limit and streak >= limit:
        raise NonFiniteError(
            f"{name}: {streak} consecutive steps with a non-finite loss or gradient norm, the last at "
            f"epoch {epoch} step {step} (training.max_consecutive_skips={limit}); the last good "
            f"checkpoint is {last_good}"
        )


def never() -> bool:
    """The stop request outside a run: never."""
    return False


class PausePoints:
    """Decides, after each unit step of a phase, whether to stop there for a mid-epoch checkpoint.

    A phase stops when :attr:`stop` says so (a :class:`deltairis.train.preemption.StopSignals` while a run
    runs) or, with ``common.checkpoint_every_steps`` and ``common.do_checkpoint``, once that many steps
    went by since the last checkpoint (the settings are read at every step: a changed config applies).
    """

    def __init__(self, common: CommonConfig) -> None:
        self.common = common
        self.stop: Callable[[], bool] = never
        self.steps_since_checkpoint = 0

    def wanted(self) -> bool:
        """Asked once after every unit step (a gradient step, a collection step)."""
        self.steps_since_checkpoint += 1
        every = self.common.checkpoint_every_steps
        periodic = every is not None and self.common.do_checkpoint and self.steps_since_checkpoint >= every
        return self.stop() or periodic

    def stop_requested(self) -> bool:
        return self.stop()

    @property
    def signal_name(self) -> str:
        """What asked to stop (``SIGTERM``), for messages."""
        return str(getattr(self.stop, "received", None) or "a signal")

    def checkpointed(self) -> None:
        """A checkpoint was just written: the periodic count starts over."""
        self.steps_since_checkpoint = 0


__all__ = ["PausePoints", "PhaseProgress", "RunningSums", "check_skip_streak", "never"]
