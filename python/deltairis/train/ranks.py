"""What differs between the ranks of a ``torchrun`` run, outside the training loop itself.

Rank 0 is the trainer of a single process; a rank > 0 (see :func:`deltairis.train.trainer.follow`) takes
rank 0's config with its own node's settings, uses the GPU of its local rank, logs no metrics, and joins
the end-of-epoch check that every rank holds the same state (:func:`flatten_state` feeds
:func:`deltairis.distributed.state_digest`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from deltairis import distributed as dist
from deltairis.config.schema import ComponentTrainingConfig, TrainerConfig
from deltairis.data import ReplayStore
from deltairis.errors import ConfigError
from deltairis.train.replicas import store_digest


class NoMetrics:
    """The metrics sink of ranks > 0: rank 0 logs the run's metrics (with every rank's throughput)."""

    def log(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    def truncate_after(self, epoch: int) -> None:
        pass

    def close(self) -> None:
        pass


def follower_config(container: dict[str, Any], store_dir: str | None) -> TrainerConfig:
    """Rank 0's composed config (seed drawn, resume set) as a rank > 0 uses it: no progress bars, and
    this node's own replica folder when its command line names one."""
    from deltairis.train.configuration import typed_config

    cfg = typed_config(OmegaConf.create(container))
    distributed = cfg.distributed
    if store_dir:
        distributed = dataclasses.replace(distributed, store_dir=store_dir)
    return dataclasses.replace(
        cfg, common=dataclasses.replace(cfg.common, progress_bar=False), distributed=distributed
    )


def share_initial_weights(agent: torch.nn.Module) -> None:
    """A fresh distributed run: every rank starts from rank 0's initial weights (and buffers)."""
    ctx = dist.current()
    state = {k: v.detach().cpu() for k, v in agent.state_dict().items()} if ctx.is_main else None
    state = dist.broadcast_object(state)
    if not ctx.is_main:
        agent.load_state_dict(state, strict=True)


class Throughput:
    """This rank's throughput in each phase of an epoch: (unit steps, batch rows, seconds) by phase."""

    def __init__(self) -> None:
        self.phases: dict[str, tuple[float, float, float]] = {}

    def record(self, phase: str, steps: int, rows_per_step: int, seconds: float) -> None:
        """``steps`` unit steps of ``phase`` (env or gradient steps), each of ``rows_per_step`` batch rows."""
        if seconds > 0:
            self.phases[phase] = (float(steps), float(steps * rows_per_step), seconds)

    def record_training(self, name: str, config: ComponentTrainingConfig, steps: int, seconds: float) -> None:
        """``steps`` optimizer steps of component ``name``: the rows this rank trained on per step are its
        slice of the global batch times the micro-batches of a step."""
        rows = dist.current().row_slice(config.batch_size)
        self.record(name, steps, (rows.stop - rows.start) * config.grad_acc_steps, seconds)

    def metrics(self, rank: int) -> dict[str, float]:
        out = {}
        for phase, (steps, samples, seconds) in self.phases.items():
            out[f"perf/rank{rank}/{phase}/steps_per_s"] = steps / seconds
            out[f"perf/rank{rank}/{phase}/samples_per_s"] = samples / seconds
        return out


def rank_metrics(
    epoch: int,
    throughput: Throughput,
    agent: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    store: ReplayStore,
) -> dict[str, float]:
    """Per-rank throughput (gathered to rank 0), the world size and, with several ranks, the check that
    every rank holds the same weights, optimizer states and visit counts (those of ``store``)."""
    ctx = dist.current()
    perf = throughput.metrics(ctx.rank)
    out: dict[str, float] = {"distributed/world_size": float(ctx.world_size)}
    if not ctx.is_distributed:
        return {**out, **perf}
    named: list[tuple[str, Any]] = list(agent.state_dict().items())
    for name, optimizer in optimizers.items():
        named += flatten_state(f"optimizer/{name}", optimizer.state_dict())
    named += store_digest(store)
    digest = dist.state_digest(named)
    gathered = dist.gather_objects((perf, digest))
    dist.check_in_sync(f"at the end of epoch {epoch}, the weights, optimizer states or visit counts", digest)
    for rank_perf, _ in gathered:
        out.update(rank_perf)
    out["distributed/weights_in_sync"] = 1.0
    return out


def rank_device(device: torch.device, ctx: dist.DistContext) -> torch.device:
    """On CUDA each rank uses the GPU of its local rank; the backend must fit the device."""
    if ctx.backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            f"common.device={device} but the process group uses NCCL (CUDA): give common.device=cpu on the "
            "torchrun command line to train on CPUs (gloo)"
        )
    if device.type == "cuda":
        if ctx.backend != "nccl":
            raise ConfigError(
                "common.device is cuda but the process group uses gloo: give common.device=cuda on the torchrun "
                "command line"
            )
        return torch.device("cuda", ctx.local_rank) if device.index is None else device
    return device


def flatten_state(prefix: str, obj: Any) -> list[tuple[str, Any]]:
    """(path, leaf) pairs of nested dicts / lists, in a fixed order (for :func:`dist.state_digest`)."""
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k in sorted(obj, key=str):
            out += flatten_state(f"{prefix}.{k}", obj[k])
        return out
    if isinstance(obj, (list, tuple)):
        out = []
        for i, v in enumerate(obj):
            out += flatten_state(f"{prefix}[{i}]", v)
        return out
    return [(prefix, obj)]


__all__ = [
    "NoMetrics",
    "Throughput",
    "flatten_state",
    "follower_config",
    "rank_device",
    "rank_metrics",
    "share_initial_weights",
]
