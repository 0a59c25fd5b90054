"""What differs between the ranks of a ``torchrun`` run, outside the training loop itself.

Rank 0 is the trainer of a single process; a rank > 0 (see :func:`deltairis.train.trainer.follow`) takes
rank 0's config with its own node's settings, uses the GPU of its local rank, logs no metrics, and joins
the end-of-epoch check that every rank holds the same state (:func:`flatten_state` feeds
:func:`deltairis.distributed.state_digest`).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from deltairis import distributed as dist
from deltairis.errors import ConfigError


class NoMetrics:
    """The metrics sink of ranks > 0: rank 0 logs the run's metrics (with every rank's throughput)."""

    def log(self, epoch: int, metrics: Any) -> None:
        pass

    def truncate_after(self, epoch: int) -> None:
        pass

    def close(self) -> None:
        pass


def follower_config(container: dict[str, Any], store_dir: str | None) -> DictConfig:
    """Rank 0's composed config (seed drawn, resume set) as a rank > 0 uses it: no progress bars, and
    this node's own replica folder when its command line names one."""
    from deltairis.train.configuration import validate_config

    cfg = validate_config(OmegaConf.create(container))
    with open_dict(cfg):
        cfg.common.progress_bar = False
        if store_dir:
            cfg.distributed.store_dir = store_dir
    return cfg


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


__all__ = ["NoMetrics", "flatten_state", "follower_config", "rank_device"]
