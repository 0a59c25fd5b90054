"""The two roles of a trainer process: the main process and a follower (a rank > 0 of ``torchrun``).

:class:`MainRole` is the trainer of a single process, or rank 0 of a distributed run: it holds the run
folder (lock, layout, config, checkpoints), reads the checkpoint of a resumed run, builds the train env
and the collector, collects, evaluates and logs the metrics. Under ``torchrun`` it sends the other ranks
what they cannot read themselves (:meth:`MainRole.begin`).

:class:`FollowerRole` is a rank > 0: the config, the run folder's path and the checkpoint come from rank 0,
its replay store is a node-local replica (:mod:`deltairis.train.replicas`), it writes nothing in the run
folder, and on a stop signal it stops while rank 0 writes the checkpoint.

The trainer (:class:`deltairis.train.trainer.Trainer`) asks its role, never ``rank == 0``, where the two differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from omegaconf import OmegaConf

from deltairis import distributed as dist
from deltairis.config.schema import CommonConfig, TrainerConfig
from deltairis.data import ReplayStore, import_reference_dataset
from deltairis.errors import Preempted, ResumeError
from deltairis.runtime import resolve_device
from deltairis.seeding import derive_env_seed
from deltairis.train.collector import Collector
from deltairis.train.configuration import save_config, untyped_config
from deltairis.train.env_config import make_env
from deltairis.train.episode_log import EPISODES_FILE, read_episodes
from deltairis.train.logging_utils import MetricsLogger, read_metrics_records
from deltairis.train.ranks import NoMetrics, follower_config, rank_device
from deltairis.train.replicas import open_follower_store
from deltairis.train.run_checks import MEMORY_PLAN_FILE, MemoryCheck, check_memory, write_json
from deltairis.train.run_folder import RunFolderLock, make_layout, read_checkpoint, restore_store_index
from deltairis.train.state import CheckpointSet, Position

if TYPE_CHECKING:
    from deltairis.train.trainer import Trainer

logger = logging.getLogger(__name__)

#: the phases of an epoch that the main process alone runs
MAIN_ONLY_PHASES = ("collect", "evaluate")


@dataclass
class RunStart:
    """What a trainer is built from, the same on every rank (the main process reads it, followers receive it)."""

    cfg: TrainerConfig
    device: torch.device
    saved: CheckpointSet | None
    num_actions: int
    action_names: list[str]
    #: names the run and its start: a replica made for another run is emptied
    run_id: str

    @property
    def seed(self) -> int:
        seed = self.cfg.common.seed
        assert seed is not None, "the seed is settled before a run starts"
        return seed


def process_device(cfg: TrainerConfig) -> torch.device:
    """This process's device: ``common.device`` resolved, the local rank's GPU under ``torchrun``."""
    device = resolve_device(cfg.common.device)
    ctx = dist.current()
    return rank_device(device, ctx) if ctx.is_distributed else device


def configure_torch(common: CommonConfig, device: torch.device) -> None:
    """TF32 matmuls on CUDA (the reference enables them; ``common.tf32=false`` keeps full fp32 matmuls),
    and ``common.num_threads`` intra-op threads when given."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = common.tf32
    if common.num_threads:
        torch.set_num_threads(common.num_threads)


def settle_seed(cfg: TrainerConfig, saved: CheckpointSet | None, run_dir: Path) -> TrainerConfig:
    """A resumed run keeps its seed; a fresh one draws a seed when none is given."""
    if saved is not None:
        return dataclasses.replace(cfg, common=dataclasses.replace(cfg.common, seed=saved.trainer.seed))
    ckpt_dir = run_dir / "checkpoints"
    if (ckpt_dir / "last.pt").exists() or (ckpt_dir / "trainer_state.pt").exists():
        raise ResumeError(
            f"{run_dir} already holds a training run; resume it with common.resume=true "
            "(scripts/resume.sh) or choose another run folder"
        )
    if cfg.common.seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**31)
        cfg = dataclasses.replace(cfg, common=dataclasses.replace(cfg.common, seed=seed))
    return cfg


class Role(Protocol):
    """Where the main process and a follower differ (see the module docstring)."""

    is_main: bool
    run_dir: Path
    collector: Collector | None

    def begin(self) -> RunStart: ...

    def open_experience(self, start: RunStart, burn_in: int) -> dict[str, ReplayStore]: ...

    def metrics_sink(self, cfg: TrainerConfig, epoch: int) -> MetricsLogger | NoMetrics: ...

    def runs(self, phase: str) -> bool: ...

    def pause(self, trainer: Trainer, position: Position) -> None: ...

    def end_epoch(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None: ...

    def env_steps(self) -> int: ...

    def close(self) -> None: ...

    def release(self) -> None: ...


class MainRole:
    """The main process: a single process, or rank 0 of a distributed run (see the module docstring)."""

    is_main = True

    def __init__(self, cfg: TrainerConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir.resolve()
        self.collector: Collector | None = None
        self._lock = RunFolderLock(self.run_dir)
        self._memory_record: dict[str, object] | None = None

    def begin(self) -> RunStart:
        """Lock the run folder, read its checkpoint (resume), settle the seed, write the layout and the
        config (fresh run), build the train env, make the memory plan (:func:`check_memory`, recorded in
        ``config/memory_plan.json``); under ``torchrun`` send all that to the other ranks. A plan that
        does not fit raises :class:`~deltairis.train.memory.MemoryPlanError` (on every rank)."""
        cfg = self.cfg
        device = process_device(cfg)  # a device that does not exist fails before the run folder is touched
        self._lock.acquire()  # one writer per run folder
        resume = cfg.common.resume
        saved = read_checkpoint(self.run_dir, trust=cfg.common.trust_checkpoint) if resume else None
        if resume:  # a damaged metrics or episodes file: refuse before changing anything
            read_metrics_records(self.run_dir / "metrics.jsonl")
            read_episodes(self.run_dir / EPISODES_FILE)
        self.cfg = cfg = settle_seed(cfg, saved, self.run_dir)
        if dist.current().is_distributed:
            dist.set_timeout(cfg.distributed.timeout_s)
        make_layout(self.run_dir)
        config_file = self.run_dir / "config" / "trainer.yaml"
        if not resume:
            fresh = dataclasses.replace(cfg, common=dataclasses.replace(cfg.common, resume=False))
            save_config(untyped_config(fresh), config_file)
        seed = cfg.common.seed
        self._env = make_env(
            cfg.env, "train", cfg.collection.train.num_envs, seed=derive_env_seed(seed, "train_env")
        )
        try:
            # before the first collection and gradient step: a run that cannot fit stops here (exit 2)
            memory = check_memory(cfg, self._env.num_actions, device, dist.current().world_size)
            # A plan that does not fit is recorded at once (the run stops on it); one that fits only once
            # the stores opened, so that a resume refused later (damaged files) leaves the folder as it was.
            self._memory_record = memory.as_dict()
            if not memory.ok:
                write_json(self.run_dir / MEMORY_PLAN_FILE, self._memory_record)
        except BaseException:
            self._env.close()
            raise
        self.cfg = cfg = memory.cfg  # training.auto_grad_acc may have split a component's batch
        mtime = config_file.stat().st_mtime_ns if config_file.exists() else 0
        start = RunStart(
            cfg=cfg,
            device=device,
            saved=saved,
            num_actions=self._env.num_actions,
            action_names=list(getattr(self._env, "action_names", [])),
            run_id=f"{self.run_dir}|{seed}|{mtime}",
        )
        if dist.current().is_distributed:
            self._announce(start, memory)  # the plan's outcome too: no rank trains (or waits) when it fails
        if not memory.ok:
            self._env.close()
            memory.raise_if_not_ok()
        return start

    def _announce(self, start: RunStart, memory: MemoryCheck) -> None:
        """Send ranks > 0 what they cannot read themselves (no shared filesystem is assumed)."""
        dist.from_main(
            "the start of the run",
            {
                "cfg": OmegaConf.to_container(untyped_config(start.cfg), resolve=True),
                "run_dir": str(self.run_dir),
                "run_id": start.run_id,
                "saved": start.saved,
                "num_actions": start.num_actions,
                "action_names": start.action_names,
                "memory": memory,
            },
        )
        ctx = dist.current()
        logger.info(
            "distributed run: %d ranks (backend %s); one replica of the replay store per node but rank 0's",
            ctx.world_size,
            ctx.backend,
        )

    def open_experience(self, start: RunStart, burn_in: int) -> dict[str, ReplayStore]:
        """The run folder's stores (rolled back to the checkpoint) and the collector on the train env."""
        dataset_dir = self.run_dir / "checkpoints" / "dataset"
        saved = start.saved
        if saved is not None and "train" in saved.trainer.dataset_index:
            restore_store_index(dataset_dir / "train", saved.trainer.dataset_index["train"])
        stores = {
            split: ReplayStore(
                dataset_dir / split, backend="auto", create=True, compression=start.cfg.data.compression
            )
            for split in ("train", "test")
        }
        self.collector = Collector(
            self._env, stores["train"], burn_in, seed=derive_env_seed(start.seed, "train_env")
        )
        if saved is not None:
            # The test store only holds one evaluation's episodes and is emptied before every
            # evaluation; it is not part of the checkpoint.
            stores["test"].clear()
            assert saved.trainer.collector is not None, "the main process always saves its collector"
            reset_seed = derive_env_seed(start.seed, "reset", saved.epoch)
            self.collector.load_state_dict(saved.trainer.collector, reset_seed=reset_seed)
        elif start.cfg.collection.path_to_static_dataset:
            path = start.cfg.collection.path_to_static_dataset
            ids = import_reference_dataset(path, stores["train"])
            logger.info("imported %d episodes from %s", len(ids), path)
        if self._memory_record is not None:
            write_json(self.run_dir / MEMORY_PLAN_FILE, self._memory_record)
        return stores

    def metrics_sink(self, cfg: TrainerConfig, epoch: int) -> MetricsLogger:
        config = OmegaConf.to_container(untyped_config(cfg), resolve=True)
        metrics = MetricsLogger(self.run_dir, cfg.wandb, config, cfg.common.resume)  # type: ignore[arg-type]
        if cfg.common.resume:
            metrics.truncate_after(epoch)
        return metrics

    def runs(self, phase: str) -> bool:
        return True

    def pause(self, trainer: Trainer, position: Position) -> None:
        """Write a mid-epoch checkpoint at ``position``; then stop the run when a signal asked."""
        trainer.save_checkpoint(position)
        where = f"epoch {position.epoch}, {position.phase} step {position.step}"
        if trainer.pauses.stop_requested():
            logger.warning("checkpoint written at %s; resume with scripts/resume.sh", where)
            raise Preempted(
                f"stopped by {trainer.pauses.signal_name} at {where}; the checkpoint "
                f"in {trainer.ckpt_dir} goes on from there (scripts/resume.sh)"
            )
        logger.info("mid-epoch checkpoint at %s", where)

    def end_epoch(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """Log the epoch's metrics (with the stores' sizes) and write its checkpoint."""
        stores = trainer.stores
        metrics["dataset/train_steps"] = float(stores["train"].num_steps)
        metrics["dataset/train_episodes"] = float(stores["train"].num_episodes)
        metrics["dataset/test_episodes"] = float(stores["test"].num_episodes)
        trainer.metrics.log(epoch, metrics)
        if trainer.cfg.common.do_checkpoint:
            trainer.save_checkpoint()

    def env_steps(self) -> int:
        return 0 if self.collector is None else self.collector.total_steps

    def main_collector(self) -> Collector:
        """The collector, which only the main process of a run has (it collects and checkpoints)."""
        if self.collector is None:
            raise RuntimeError("only the main process of a run collects (and checkpoints)")
        return self.collector

    def close(self) -> None:
        if self.collector is not None:
            with contextlib.suppress(Exception):
                self.collector.env.close()

    def release(self) -> None:
        self._lock.release()


class FollowerRole:
    """A rank > 0 of a distributed run (see the module docstring).

    ``store_dir``: this node's ``distributed.store_dir`` (from its own command line), instead of rank 0's.
    """

    is_main = False
    collector: Collector | None = None  # rank 0 alone collects

    def __init__(self, store_dir: str | None = None) -> None:
        self.store_dir = store_dir
        self.run_dir = Path()

    def begin(self) -> RunStart:
        """Receive the config, the run folder's path and the checkpoint from rank 0."""
        start = dist.from_main("the start of the run (rank 0 reads its config and checkpoint)")
        start["memory"].raise_if_not_ok()  # rank 0 stops too: the memory plan does not fit
        cfg = follower_config(start["cfg"], self.store_dir)
        self.run_dir = Path(start["run_dir"])
        dist.set_timeout(cfg.distributed.timeout_s)
        return RunStart(
            cfg,
            process_device(cfg),
            start["saved"],
            start["num_actions"],
            list(start["action_names"]),
            start["run_id"],
        )

    def open_experience(self, start: RunStart, burn_in: int) -> dict[str, ReplayStore]:
        """The train store of this rank's node (rank 0's, or a node-local replica): no env, no collector,
        no test store."""
        main_store = self.run_dir / "checkpoints" / "dataset" / "train"
        return {
            "train": open_follower_store(
                start.cfg.distributed.store_dir,
                self.run_dir,
                main_store,
                start.run_id,
                start.cfg.data.compression,
            )
        }

    def metrics_sink(self, cfg: TrainerConfig, epoch: int) -> NoMetrics:
        return NoMetrics()

    def runs(self, phase: str) -> bool:
        return phase not in MAIN_ONLY_PHASES  # rank 0 alone collects and evaluates

    def pause(self, trainer: Trainer, position: Position) -> None:
        """Rank 0 writes the checkpoint; on a signal this rank stops too."""
        trainer.pauses.checkpointed()
        if trainer.pauses.stop_requested():
            raise Preempted(
                f"rank {dist.current().rank}: stopped by {trainer.pauses.signal_name} at epoch {position.epoch}, "
                f"{position.phase} step {position.step}; rank 0 writes the checkpoint"
            )

    def end_epoch(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        pass  # rank 0 logs the metrics (with this rank's throughput) and writes the checkpoint

    def env_steps(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


__all__ = [
    "MAIN_ONLY_PHASES",
    "FollowerRole",
    "MainRole",
    "Role",
    "RunStart",
    "configure_torch",
    "process_device",
    "settle_seed",
]
