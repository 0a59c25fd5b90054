"""The checks a run makes before and while it starts: the memory plan, the preflight of the GPU fast
paths and the estimate of an epoch's duration (issue #21).

- :func:`check_memory` (the main process, before the first collection and the first gradient step, fresh
  and resumed runs alike): the memory plan of :mod:`deltairis.train.memory` at the configured batches on
  the run's device. A component that does not fit stops the run with :class:`MemoryPlanError` (the CLI
  exits 2), or with ``training.auto_grad_acc=true`` trains in the suggested gradient-accumulation split.
- :func:`run_fast_path_preflight` (every rank, after the components are built and the optimizers
  loaded): :func:`deltairis.train.preflight.run_preflight`, the failures of all ranks combined, then the
  fallbacks; :func:`preflight_metrics` is its record for ``metrics.jsonl``.
- :class:`EpochEta`: times the first steps of each phase of the first epoch a process runs, extrapolates
  them to the epoch's schedule and warns once when that epoch (or the next) takes more than
  :data:`ETA_WARN_SECONDS`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from deltairis import distributed as dist
from deltairis.checkpoint import atomic_write_bytes
from deltairis.config.schema import TrainerConfig
from deltairis.rl.losses import ActorCriticLoss
from deltairis.train import preflight as pf
from deltairis.train.components import COMPONENT_NAMES, epoch_steps
from deltairis.train.memory import CPU_DEMO, MemoryPlan, MemoryPlanError, format_bytes, plan_for_config

if TYPE_CHECKING:
    from deltairis.agent import Agent

logger = logging.getLogger(__name__)

#: where a run folder records its memory plan and its preflight (beside config/trainer.yaml)
MEMORY_PLAN_FILE = Path("config") / "memory_plan.json"
PREFLIGHT_FILE = Path("config") / "preflight.json"

# -- the memory plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryCheck:
    """The outcome of :func:`check_memory`: the config to train with (``training.auto_grad_acc`` may have
    changed ``grad_acc_steps``/``batch_size`` of components in ``adjusted``) and the plan it came from."""

    cfg: TrainerConfig
    plan: MemoryPlan
    adjusted: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.fits or c.name in self.adjusted for c in self.plan.components.values())

    def raise_if_not_ok(self) -> None:
        if not self.ok:
            raise MemoryPlanError(self.plan)

    def as_dict(self) -> dict[str, object]:
        """The plan for ``config/memory_plan.json``."""
        return {
            "device": self.plan.device,
            "available_bytes": self.plan.available_bytes,
            "safety_margin": self.plan.margin,
            "world_size": self.plan.world_size,
            "fits": self.plan.fits,
            "auto_grad_acc": list(self.adjusted),
            "components": {n: dataclasses.asdict(c) for n, c in self.plan.components.items()},
        }


def check_memory(
    cfg: TrainerConfig, num_actions: int, device: torch.device, world_size: int = 1
) -> MemoryCheck:
    """The memory plan of ``cfg`` on ``device`` (logged), and with ``training.auto_grad_acc`` the config
    that trains every component that does not fit in its suggested split (a new config; ``cfg`` is not
    changed). Does not raise: :meth:`MemoryCheck.raise_if_not_ok` does."""
    if not cfg.common.memory_plan:
        logger.warning(
            "common.memory_plan=false: no memory plan; a step that does not fit the device ends the run "
            "(on a CPU possibly by the kernel's OOM killer, without a message)"
        )
        return MemoryCheck(cfg, plan_for_config(cfg, num_actions, device, components=(), world_size=world_size))
    plan = plan_for_config(cfg, num_actions, device, world_size=world_size)
    logger.info("%s", plan.summary())
    if plan.fits or not cfg.training.auto_grad_acc:
        return MemoryCheck(cfg, plan)
    training = cfg.training
    adjusted: list[str] = []
    for row in plan.components.values():
        if row.fits or row.grad_acc_steps is None or row.micro_batch_size is None:
            continue
        section = getattr(training, row.name)
        training = dataclasses.replace(
            training,
            **{
                row.name: dataclasses.replace(
                    section, grad_acc_steps=row.grad_acc_steps, batch_size=row.micro_batch_size
                )
            },
        )
        adjusted.append(row.name)
        logger.warning(
            "training.auto_grad_acc: one %s step at batch_size %d needs about %s of the %s available on "
            "%s; it trains in %d gradient-accumulation steps of %d instead (about %s each): "
            "training.%s.grad_acc_steps=%d training.%s.batch_size=%d",
            row.name,
            row.batch_size,
            format_bytes(row.estimate_bytes),
            format_bytes(row.available_bytes),
            plan.device,
            row.grad_acc_steps,
            row.micro_batch_size,
            format_bytes(row.micro_estimate_bytes),
            row.name,
            row.grad_acc_steps,
            row.name,
            row.micro_batch_size,
        )
    return MemoryCheck(dataclasses.replace(cfg, training=training), plan, tuple(adjusted))


def write_json(path: Path, record: Mapping[str, object]) -> None:
    """``record`` as indented JSON at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


# -- the preflight --------------------------------------------------------------------------------------


def combine_over_ranks(per_rank: Sequence[Sequence[pf.FastPathResult]]) -> list[pf.FastPathResult]:
    """One result per path from every rank's results: a path failed on any rank is failed (its status
    names the first such rank), else rank 0's result."""
    if len(per_rank) == 1:
        return list(per_rank[0])
    out = []
    for i, first in enumerate(per_rank[0]):
        failed = [(rank, results[i]) for rank, results in enumerate(per_rank) if results[i].failed]
        if failed:
            rank, r = failed[0]
            out.append(
                dataclasses.replace(r, status=f"failed: rank {rank}: {r.status.removeprefix('failed: ')}")
            )
        else:
            out.append(first)
    return out


@dataclass(frozen=True)
class Preflight:
    """A run's preflight: its results (empty when ``common.preflight=false``) on ``device``."""

    device: torch.device
    enabled: bool
    results: tuple[pf.FastPathResult, ...] = ()

    @classmethod
    def run(
        cls, agent: Agent, cfg: TrainerConfig, device: torch.device, actor_critic_loss: object = None
    ) -> Preflight:
        """:func:`deltairis.train.preflight.run_preflight` on every rank (each checks its own GPU), the
        failures combined over the ranks, then the fallbacks of the failed paths on every rank
        (``cfg.training.<c>.mixed_precision`` may turn off; ``actor_critic_loss``, the run's loss, then
        imagines eagerly). On CPU nothing runs (every path ``not applicable``). Every rank calls it;
        ``common.preflight=false``: nothing is checked."""
        if not cfg.common.preflight:
            return cls(device, False)
        results = pf.run_preflight(agent, cfg, device)
        results = combine_over_ranks(dist.gather_objects(results))
        loss = actor_critic_loss if isinstance(actor_critic_loss, ActorCriticLoss) else None
        pf.apply_fallbacks(results, agent, cfg, loss)
        return cls(device, True, tuple(results))

    @property
    def switched_off(self) -> list[str]:
        return [r.name for r in self.results if r.failed]

    def metrics(self) -> dict[str, float]:
        """The preflight for ``metrics.jsonl`` on a run that uses the fast paths (CUDA; else nothing):
        floats, like every metric: ``preflight/<path>`` 1 for ok and 0 for failed (paths not applicable
        are left out) and ``preflight/num_failed``; the statuses in words are in ``config/preflight.json``."""
        if not self.results or not pf.fast_paths_active(self.device):
            return {}
        out = {
            f"preflight/{r.name}": 0.0 if r.failed else 1.0
            for r in self.results
            if r.status != pf.NOT_APPLICABLE
        }
        out["preflight/num_failed"] = float(len(self.switched_off))
        return out

    def write(self, run_dir: Path) -> None:
        """``<run_dir>/config/preflight.json``: the device, whether it ran and every path's result."""
        record = {"device": str(self.device), "enabled": self.enabled, **pf.summary(self.results)}
        write_json(run_dir / PREFLIGHT_FILE, record)


#: the fast paths of playing and evaluating (no training: no bf16 autocast; their world-model env does
#: not replay CUDA graphs)
INFERENCE_PATHS = (*pf.KERNEL_PATHS, "frame_cnn")


def preflight_for_inference(
    agent: Agent, cfg: TrainerConfig | DictConfig, device: torch.device | str
) -> list[pf.FastPathResult]:
    """``deltairis-play`` / ``deltairis-eval`` on CUDA: the fast paths they use (:data:`INFERENCE_PATHS`)
    checked at the run's shapes, the failed ones switched off (one warning each). Nothing on CPU or with
    ``common.preflight=false`` (returns [])."""
    from deltairis.train.configuration import typed_config

    device = torch.device(device)
    if not pf.fast_paths_active(device):
        return []
    typed = typed_config(cfg)
    if not typed.common.preflight:
        return []
    results = pf.run_preflight(agent, typed, device, paths=INFERENCE_PATHS)
    pf.apply_fallbacks(results, agent, typed)
    ok = sum(r.status == pf.OK for r in results)
    logger.info(
        "preflight on %s: %d fast paths ok, %d switched off", device, ok, sum(r.failed for r in results)
    )
    return results


# -- the ETA ---------------------------------------------------------------------------------------------

#: an epoch projected to take longer than this (seconds) is warned about once, at the start of the run
ETA_WARN_SECONDS = 3 * 3600.0
#: progress updates of a phase not timed: the first gradient step or collection step sets things up
ETA_WARMUP_UPDATES = 1
#: progress updates timed after the warm-up before a phase's rate is taken
ETA_MEASURED_UPDATES = 3


def epoch_schedule(cfg: TrainerConfig, epoch: int) -> dict[str, int]:
    """The units of work of ``epoch``: ``collect`` env steps (all envs together), and each component's
    optimizer steps."""
    c = cfg.collection.train
    collect = 0
    if epoch <= c.stop_after_epochs and not cfg.collection.path_to_static_dataset:
        n = c.num_steps_first_epoch if epoch == 1 else c.num_steps
        collect = math.ceil(max(n, 0) / c.num_envs) * c.num_envs if n > 0 else 0
    out = {"collect": collect}
    for name in COMPONENT_NAMES:
        out[name] = epoch_steps(getattr(cfg.training, name), epoch) if cfg.training.should else 0
    return out


def format_seconds(s: float) -> str:
    """``s`` seconds as ``1.5 h``, ``12 min`` or ``40 s``."""
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


@dataclass
class _Timing:
    updates: int = 0
    units: int = 0
    t0: float = 0.0
    warm_t: float | None = None
    warm_units: int = 0
    seconds_per_unit: float | None = None


@dataclass
class EpochEta:
    """The duration of an epoch, from the first measured steps of the first epoch this process runs.

    The trainer calls :meth:`begin_epoch`, :meth:`start` / :meth:`end` around each phase and
    :meth:`advance` after each progress update (``units``: env steps of a collection, one optimizer
    step of a component). After :data:`ETA_WARMUP_UPDATES` + :data:`ETA_MEASURED_UPDATES` updates of a
    phase (or at its end, if shorter) its time per unit is known; once the measured phases alone project
    the epoch, or the next one, past ``threshold_s``, one warning says so, with the breakdown and the
    tiny demo. Only the first epoch is measured (a run warns at most once).
    """

    cfg: TrainerConfig
    device: torch.device
    enabled: bool = True
    #: None: :data:`ETA_WARN_SECONDS` (read when the check runs)
    threshold_s: float | None = None
    clock: Callable[[], float] = time.perf_counter
    epoch: int | None = None
    warned: bool = False
    timings: dict[str, _Timing] = field(default_factory=dict)

    def begin_epoch(self, epoch: int) -> None:
        if self.epoch is None:
            self.epoch = epoch

    def _measuring(self) -> bool:
        return self.enabled and self.epoch is not None and not self.warned

    def start(self, phase: str, epoch: int) -> None:
        if self._measuring() and epoch == self.epoch and phase not in self.timings:
            self.timings[phase] = _Timing(t0=self.clock())

    def advance(self, phase: str, units: int = 1) -> None:
        t = self.timings.get(phase)
        if t is None or t.seconds_per_unit is not None or not self._measuring():
            return
        t.updates += 1
        t.units += units
        if t.updates == ETA_WARMUP_UPDATES:
            t.warm_t, t.warm_units = self.clock(), t.units
        elif t.updates >= ETA_WARMUP_UPDATES + ETA_MEASURED_UPDATES and t.warm_t is not None:
            t.seconds_per_unit = (self.clock() - t.warm_t) / max(t.units - t.warm_units, 1)
            self._check()

    def end(self, phase: str) -> None:
        """The end of a phase: a phase too short for the measurement is timed whole."""
        t = self.timings.get(phase)
        if t is None or t.seconds_per_unit is not None or not self._measuring():
            return
        if t.units > 0:
            t.seconds_per_unit = (self.clock() - t.t0) / t.units
            self._check()
        else:
            del self.timings[phase]  # nothing ran (not scheduled this epoch)

    def projection(self, epoch: int) -> tuple[float, list[str], list[str]]:
        """(seconds of the measured phases at ``epoch``'s schedule, their breakdown, the scheduled
        phases not measured yet)."""
        total, parts, unknown = 0.0, [], []
        for phase, units in epoch_schedule(self.cfg, epoch).items():
            if units <= 0:
                continue
            t = self.timings.get(phase)
            if t is None or t.seconds_per_unit is None:
                unknown.append(phase)
                continue
            seconds = units * t.seconds_per_unit
            total += seconds
            unit = "env steps" if phase == "collect" else "steps"
            parts.append(f"{phase} {units} {unit} x {t.seconds_per_unit:.3g} s = {format_seconds(seconds)}")
        return total, parts, unknown

    def _check(self) -> None:
        assert self.epoch is not None
        now, parts, unknown = self.projection(self.epoch)
        later_epoch = self.epoch + 1
        later = self.projection(later_epoch)[0] if later_epoch <= self.cfg.common.epochs else 0.0
        threshold = ETA_WARN_SECONDS if self.threshold_s is None else self.threshold_s
        if max(now, later) <= threshold:
            return
        self.warned = True
        at_least = "at least " if unknown else ""
        text = (
            f"this run is slow on {self.device}: epoch {self.epoch} will take {at_least}about "
            f"{format_seconds(now)} ({'; '.join(parts)}"
            + (f"; not measured yet: {', '.join(unknown)}" if unknown else "")
            + ")"
        )
        if later:
            text += f", and epoch {later_epoch} {at_least}about {format_seconds(later)}"
        text += f" of {self.cfg.common.epochs} epochs. "
        if self.device.type == "cpu":
            text += f"On a CPU, the demo configuration trains in minutes: deltairis-train {CPU_DEMO}"
        else:
            text += f"A smaller schedule, or the demo configuration, trains in minutes: deltairis-train {CPU_DEMO}"
        logger.warning("%s", text)


__all__ = [
    "ETA_WARN_SECONDS",
    "INFERENCE_PATHS",
    "MEMORY_PLAN_FILE",
    "PREFLIGHT_FILE",
    "EpochEta",
    "MemoryCheck",
    "Preflight",
    "check_memory",
    "combine_over_ranks",
    "epoch_schedule",
    "format_seconds",
    "preflight_for_inference",
    "write_json",
]
