"""The Δ-IRIS training loop (docs/algorithm.md section 6): collect, train tokenizer / world model / actor-critic,
evaluate, checkpoint, per epoch, in a run folder that can be resumed after a crash.

The three components are records of a table (:mod:`deltairis.train.components`) that the loop treats
alike; the run folder's layout, scripts and checkpoint reading live in :mod:`deltairis.train.run_folder`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from deltairis import distributed as dist
from deltairis.agent import Agent, agent_checkpoint, load_agent
from deltairis.checkpoint import BackgroundWriter, non_finite_names, serialize_members, write_checkpoint_set
from deltairis.data import ReplayStore, StepPrefetcher, import_reference_dataset
from deltairis.data.replay_store import INDEX_NAME
from deltairis.errors import CorruptCheckpointError, NonFiniteError, Preempted, ResumeError
from deltairis.runtime import resolve_device
from deltairis.seeding import derive_env_seed, derive_seed, global_rng_state, set_global_rng_state
from deltairis.train.collector import Collector, CollectStats, run_test_episodes
from deltairis.train.components import COMPONENT_NAMES, Component, build_components
from deltairis.train.configuration import agent_config_from, save_config
from deltairis.train.env_config import make_env
from deltairis.train.evaluate import episode_metrics
from deltairis.train.logging_utils import (
    MetricsLogger,
    Progress,
    read_metrics_records,
    save_episode,
    save_image_grid,
    to_uint8_hwc,
)
from deltairis.train.preemption import StopSignals
from deltairis.train.ranks import NoMetrics, flatten_state, follower_config, rank_device
from deltairis.train.replicas import open_replica, replica_dir, store_digest, sync_replicas
from deltairis.train.run_folder import (
    STATE_VERSION,
    RunFolderLock,
    check_same_model,
    make_layout,
    new_run_dir,
    read_checkpoint,
    restore_store_index,
)
from deltairis.train.step import gradient_step, sync_torch_rng

logger = logging.getLogger(__name__)

#: The phases of an epoch, in order; a mid-epoch checkpoint names one and the step to go on from.
PHASES = ("collect", *COMPONENT_NAMES, "evaluate")


class Trainer:
    """Owns the agent, its components (optimizers), replay stores, envs and the run folder of one run.

    Args:
        cfg: a validated config (:func:`deltairis.train.configuration.compose_config`).
        run_dir: the run folder; created for a fresh run, read back when ``cfg.common.resume``.

    Under ``torchrun`` (:mod:`deltairis.distributed`), rank 0 is this trainer as in a single process (run
    folder, collection, evaluation, metrics, checkpoints). A rank > 0 is built with ``cfg=None`` and
    ``run_dir=None``: the config, the run folder's path and the checkpoint come from rank 0, its replay
    store is a node-local replica (:mod:`deltairis.train.replicas`), and it writes nothing in the run folder.
    """

    def __init__(
        self, cfg: DictConfig | None, run_dir: Path | str | None, *, store_dir: str | None = None
    ) -> None:
        self.dist = dist.current()
        start: dict[str, Any] | None = None
        if not self.dist.is_main:
            start = dist.from_main("the start of the run (rank 0 reads its config and checkpoint)")
            cfg = follower_config(start["cfg"], store_dir)
            run_dir = start["run_dir"]
            dist.set_timeout(float(cfg.distributed.timeout_s))
        assert cfg is not None and run_dir is not None
        self.run_dir = Path(run_dir).resolve() if start is None else Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.media_dir = self.run_dir / "media"
        resume = bool(cfg.common.resume)
        self.device = resolve_device(cfg.common.device)
        if self.dist.is_distributed:
            self.device = rank_device(self.device, self.dist)
        # one writer per run folder: rank 0 (ranks > 0 do not even need to see it)
        self._lock = RunFolderLock(self.run_dir).acquire() if start is None else None
        self._checkpoint_writer = BackgroundWriter()
        try:
            self._setup(cfg, resume, start)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def _setup(self, cfg: DictConfig, resume: bool, start: dict[str, Any] | None = None) -> None:
        self._configure_torch(cfg)
        if start is None:
            saved = read_checkpoint(self.run_dir) if resume else None
            if resume:  # a damaged metrics file: refuse before changing anything
                read_metrics_records(self.run_dir / "metrics.jsonl")
            self.cfg = cfg = self._settle_seed(cfg, saved)
            if self.dist.is_distributed:
                dist.set_timeout(float(cfg.distributed.timeout_s))
        else:
            saved, self.cfg = start["saved"], cfg
        self.seed = int(cfg.common.seed)
        if start is None:
            make_layout(self.run_dir)
            if not resume:
                save_config(
                    OmegaConf.merge(cfg, {"common": {"resume": False}}),
                    self.run_dir / "config" / "trainer.yaml",
                )

        env = None
        if start is None:
            env = make_env(
                cfg.env, "train", cfg.collection.train.num_envs, seed=derive_env_seed(self.seed, "train_env")
            )
            self.num_actions = int(env.num_actions)
            self.action_names = list(getattr(env, "action_names", []))
            if self.dist.is_distributed:
                self._announce(cfg, saved)
        else:
            self.num_actions, self.action_names = int(start["num_actions"]), list(start["action_names"])
        self.agent = self._build_agent(cfg, saved)
        if saved is None and self.dist.is_distributed:
            self._share_initial_weights()
        self.components: dict[str, Component] = build_components(self.agent, cfg.training)
        if saved is not None:
            for name, component in self.components.items():
                try:
                    component.optimizer.load_state_dict(saved[2][name])
                except (KeyError, ValueError) as exc:
                    raise CorruptCheckpointError(
                        f"{self.ckpt_dir / 'optimizer.pt'} does not hold the {name} optimizer of this model ({exc})"
                    ) from exc
        if start is None:
            self.stores = self._open_stores(saved)
            self.collector: Collector | None = Collector(
                env,
                self.stores["train"],
                self.agent.config.actor_critic.burn_in,
                seed=derive_env_seed(self.seed, "train_env"),
            )
        else:  # a rank > 0: a node-local replica of the train store, no env, no test store
            folder = replica_dir(cfg.distributed.store_dir, self.run_dir, self.dist.rank)
            self.stores = {"train": open_replica(folder, str(start["run_id"]))}
            self.collector = None
        self.epoch = 0
        self.num_updates = {name: 0 for name in COMPONENT_NAMES}
        self.skipped_steps = {name: 0 for name in COMPONENT_NAMES}
        self.consecutive_skips = {name: 0 for name in COMPONENT_NAMES}  # across epochs
        self.position: dict[str, Any] | None = None  # where a mid-epoch checkpoint stopped
        self._stop_requested: Any = lambda: False  # a StopSignals while run() runs
        self._steps_since_checkpoint = 0
        self._epoch_metrics: dict[str, float] = {}
        self._epoch_t0 = 0.0
        self._perf: dict[str, tuple[float, float, float]] = {}  # phase -> (steps, samples, seconds)
        if saved is not None:
            self._restore_progress(saved[0])
        elif cfg.collection.path_to_static_dataset and start is None:
            ids = import_reference_dataset(cfg.collection.path_to_static_dataset, self.stores["train"])
            logger.info("imported %d episodes from %s", len(ids), cfg.collection.path_to_static_dataset)
        if start is not None:
            self.metrics: Any = NoMetrics()
            return
        self.metrics = MetricsLogger(
            self.run_dir,
            cfg.wandb,
            OmegaConf.to_container(cfg, resolve=True),
            resume,  # type: ignore[arg-type]
        )
        if resume:
            self.metrics.truncate_after(self.epoch)
        logger.info(
            "run folder %s | device %s | preset %s | %d actions | seed %d",
            self.run_dir,
            self.device,
            self.agent.config.preset,
            self.num_actions,
            self.seed,
        )

    # -- construction ----------------------------------------------------------------------------------
    def _announce(self, cfg: DictConfig, saved: tuple[dict[str, Any], ...] | None) -> None:
        """Rank 0: send ranks > 0 what they cannot read themselves (no shared filesystem is assumed)."""
        config_file = self.run_dir / "config" / "trainer.yaml"
        run_id = f"{self.run_dir}|{self.seed}|{config_file.stat().st_mtime_ns if config_file.exists() else 0}"
        dist.from_main(
            "the start of the run",
            {
                "cfg": OmegaConf.to_container(cfg, resolve=True),
                "run_dir": str(self.run_dir),
                "run_id": run_id,
                "saved": saved,
                "num_actions": self.num_actions,
                "action_names": self.action_names,
            },
        )
        logger.info(
            "distributed run: %d ranks (backend %s); ranks > 0 keep replicas of the replay store",
            self.dist.world_size,
            self.dist.backend,
        )

    def _share_initial_weights(self) -> None:
        """A fresh run: every rank starts from rank 0's initial weights (and buffers)."""
        state = None
        if self.dist.is_main:
            state = {k: v.detach().cpu() for k, v in self.agent.state_dict().items()}
        state = dist.broadcast_object(state)
        if not self.dist.is_main:
            self.agent.load_state_dict(state, strict=True)

    def _configure_torch(self, cfg: DictConfig) -> None:
        if self.device.type == "cuda":
            # The reference enables TF32 matmuls; common.tf32=false keeps full fp32 matmuls.
            torch.backends.cuda.matmul.allow_tf32 = bool(cfg.common.tf32)
        if cfg.common.num_threads:
            torch.set_num_threads(int(cfg.common.num_threads))

    def _settle_seed(self, cfg: DictConfig, saved: tuple[dict[str, Any], ...] | None) -> DictConfig:
        """A resumed run keeps its seed; a fresh one draws a seed when none is given."""
        if saved is not None:
            cfg = OmegaConf.merge(cfg, {"common": {"seed": int(saved[0]["seed"])}})
        else:
            if (self.ckpt_dir / "last.pt").exists() or (self.ckpt_dir / "trainer_state.pt").exists():
                raise ResumeError(
                    f"{self.run_dir} already holds a training run; resume it with common.resume=true "
                    "(scripts/resume.sh) or choose another run folder"
                )
            if cfg.common.seed is None:
                cfg = OmegaConf.merge(
                    cfg, {"common": {"seed": int(np.random.SeedSequence().entropy % 2**31)}}
                )
        OmegaConf.set_struct(cfg, True)
        return cfg

    def _build_agent(self, cfg: DictConfig, saved: tuple[dict[str, Any], ...] | None) -> Agent:
        agent_cfg = agent_config_from(cfg, self.num_actions)
        if saved is not None:
            check_same_model(saved[1], agent_cfg)
        torch.manual_seed(derive_seed(self.seed, "init") % 2**63)
        agent = Agent(agent_cfg).to(self.device)
        if saved is not None:
            agent.load_state_dict(saved[1]["state_dict"], strict=True)
        elif cfg.agent.path_to_ckpt and self.dist.is_main:  # ranks > 0 get these weights from rank 0
            init = load_agent(cfg.agent.path_to_ckpt, agent_cfg.preset, self.num_actions)
            agent.load_state_dict(init.state_dict(), strict=True)
            logger.info("initialised the agent from %s", cfg.agent.path_to_ckpt)
        return agent

    def _open_stores(self, saved: tuple[dict[str, Any], ...] | None) -> dict[str, ReplayStore]:
        dataset_dir = self.ckpt_dir / "dataset"
        if saved is not None and "train" in saved[0]["dataset_index"]:
            restore_store_index(dataset_dir / "train", saved[0]["dataset_index"]["train"])
        stores = {
            split: ReplayStore(dataset_dir / split, backend="auto", create=True)
            for split in ("train", "test")
        }
        if saved is not None:
            # The test store only holds one evaluation's episodes and is emptied before every
            # evaluation; it is not part of the checkpoint.
            stores["test"].clear()
        return stores

    def _restore_progress(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.num_updates = dict(state["num_updates"])
        self.position = state.get("position")
        self.skipped_steps.update(state.get("skipped_steps", {}))
        self.consecutive_skips.update(state.get("consecutive_skips", {}))
        if self.collector is not None:
            self.collector.load_state_dict(
                state["collector"], reset_seed=derive_env_seed(self.seed, "reset", self.epoch)
            )
        set_global_rng_state(state["rng"])
        logger.info("resumed %s at the end of epoch %d", self.run_dir, self.epoch)

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The components' optimizers by name (what ``checkpoints/optimizer.pt`` holds)."""
        return {name: c.optimizer for name, c in self.components.items()}

    # -- checkpoint ------------------------------------------------------------------------------------
    def save_checkpoint(self, position: dict[str, Any] | None = None) -> None:
        """Commit the stores, then write the checkpoint set atomically (never with non-finite weights).

        ``position``: for a mid-epoch checkpoint, where the epoch in progress stopped (see :meth:`_pause`).

        The set is serialized here (tensors copied to the host), so what is written is the state at this
        call. With ``common.checkpoint_in_background`` (default) the files are then written and synced on
        a background thread while training goes on; the next save, :meth:`close` and
        :meth:`wait_for_checkpoint` wait for that write and raise its error (CheckpointWriteError).
        Otherwise they are written before this returns. The bytes are the same either way.
        """
        t0 = time.perf_counter()
        self.wait_for_checkpoint()  # one write in flight at most; a failed one is raised here
        bad = non_finite_names(self.agent.state_dict())  # one host sync
        if bad:
            raise NonFiniteError(
                f"refusing to checkpoint epoch {self.epoch}: non-finite values in {', '.join(bad[:5])}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                + f"; the previous checkpoint in {self.ckpt_dir} is left as it was"
            )
        for store in self.stores.values():
            store.commit()
        path = self.stores["train"].directory / INDEX_NAME
        index: dict[str, bytes | None] = {"train": path.read_bytes() if path.exists() else None}
        agent_payload = agent_checkpoint(self.agent)
        agent_payload["epoch"] = self.epoch
        members = {
            "last.pt": agent_payload,
            "optimizer.pt": {
                "version": STATE_VERSION,
                "epoch": self.epoch,
                **{k: o.state_dict() for k, o in self.optimizers.items()},
            },
            "trainer_state.pt": {
                "version": STATE_VERSION,
                "epoch": self.epoch,
                "seed": self.seed,
                "num_updates": dict(self.num_updates),
                "skipped_steps": dict(self.skipped_steps),
                "consecutive_skips": dict(self.consecutive_skips),
                "rng": global_rng_state(),
                "collector": self.collector.state_dict(),
                "dataset_index": index,
                "position": position,
            },
        }
        blobs = serialize_members(members)  # host bytes: later training cannot change what is written
        epoch = self.epoch
        if self.cfg.common.checkpoint_in_background:
            self._checkpoint_writer.submit(lambda: write_checkpoint_set(self.ckpt_dir, blobs, epoch))
            logger.debug(
                "checkpoint of epoch %d handed to the writer in %.2fs", epoch, time.perf_counter() - t0
            )
        else:
            write_checkpoint_set(self.ckpt_dir, blobs, epoch)
            logger.debug("checkpoint of epoch %d written in %.2fs", epoch, time.perf_counter() - t0)
        self._steps_since_checkpoint = 0

    def wait_for_checkpoint(self) -> None:
        """Block until the checkpoint write in flight (if any) is on disk; raise its error if it failed."""
        self._checkpoint_writer.wait()

    # -- mid-epoch checkpoints -------------------------------------------------------------------------
    def _pause_wanted(self) -> bool:
        """Asked after every unit step: stop now (a signal) or write a periodic mid-epoch checkpoint?"""
        self._steps_since_checkpoint += 1
        every = self.cfg.common.checkpoint_every_steps
        periodic = (
            bool(every) and self.cfg.common.do_checkpoint and self._steps_since_checkpoint >= int(every)
        )
        return self._stop_requested() or periodic

    def _pause(self, epoch: int, phase: str, step: int, partial: dict[str, Any] | None) -> None:
        """Write a mid-epoch checkpoint at (epoch, phase, step); then exit the run when a signal asked."""
        if not self.dist.is_main:  # ranks > 0 write nothing: rank 0 checkpoints; on a signal they stop
            self._steps_since_checkpoint = 0
            if self._stop_requested():
                raise Preempted(
                    f"rank {self.dist.rank}: stopped by {getattr(self._stop_requested, 'received', 'a signal')} "
                    f"at epoch {epoch}, {phase} step {step}; rank 0 writes the checkpoint"
                )
            return
        position = {
            "epoch": epoch,
            "phase": phase,
            "step": step,
            "partial": partial,
            "metrics": dict(self._epoch_metrics),
            "seconds": time.perf_counter() - self._epoch_t0,
        }
        self.save_checkpoint(position)
        where = f"epoch {epoch}, {phase} step {step}"
        if self._stop_requested():
            logger.warning("checkpoint written at %s; resume with scripts/resume.sh", where)
            raise Preempted(
                f"stopped by {getattr(self._stop_requested, 'received', 'a signal')} at {where}; the checkpoint "
                f"in {self.ckpt_dir} goes on from there (scripts/resume.sh)"
            )
        logger.info("mid-epoch checkpoint at %s", where)

    # -- main loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        """Train until ``common.epochs`` (continuing after ``self.epoch`` when resumed)."""
        epochs = int(self.cfg.common.epochs)
        if self.epoch >= epochs:
            logger.info("run already at epoch %d of %d: nothing to do", self.epoch, epochs)
        try:
            with StopSignals() as stop:
                self._stop_requested = stop
                try:
                    for epoch in range(self.epoch + 1, epochs + 1):
                        position = self.position
                        position = position if position and position["epoch"] == epoch else None
                        self.position = None
                        self.run_epoch(epoch, position)
                finally:
                    # the last checkpoint write (a preemption's too) ends while signals are still caught
                    self.wait_for_checkpoint()
        finally:
            self._stop_requested = lambda: False
            self.close()

    def close(self) -> None:
        """Wait for the checkpoint write in flight, close the metrics, the env and the stores, then let go
        of the run folder; a failed checkpoint write is raised after that (CheckpointWriteError)."""
        try:
            self.wait_for_checkpoint()
        finally:
            try:
                self._close_resources()
            finally:
                if self._lock is not None:
                    self._lock.release()

    def _close_resources(self) -> None:
        self.metrics.close()
        with contextlib.suppress(Exception):
            self.collector.env.close()
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                store.close()

    def run_epoch(self, epoch: int, position: dict[str, Any] | None = None) -> dict[str, float]:
        """One epoch: collect, train each component, evaluate, log, checkpoint.

        ``position`` (from a mid-epoch checkpoint) starts the epoch at that phase and step, with the
        metrics of the phases already done.
        """
        cfg = self.cfg
        self._epoch_t0 = time.perf_counter() - (float(position["seconds"]) if position else 0.0)
        if position:
            logger.info(
                "epoch %d / %d, from %s step %d",
                epoch,
                cfg.common.epochs,
                position["phase"],
                position["step"],
            )
        else:
            logger.info("epoch %d / %d", epoch, cfg.common.epochs)
        self._epoch_metrics = metrics = dict(position["metrics"]) if position else {}
        first = PHASES.index(position["phase"]) if position else 0
        self._perf = {}
        synced = False
        for phase in PHASES[first:]:
            here = position if position is not None and phase == position["phase"] else None
            step, partial = (int(here["step"]), here["partial"]) if here else (0, None)
            if here is None and self._stop_requested():  # between two phases
                self._pause(epoch, phase, 0, None)
            if phase in COMPONENT_NAMES and not synced and self.dist.is_distributed:
                # rank 0's new (and, after a start or resume, missing) steps reach every replica
                metrics.update(sync_replicas(self.stores["train"], f"the experience of epoch {epoch}"))
                synced = True
            t0, env_steps = time.perf_counter(), self._env_steps()
            out = self._run_phase(phase, epoch, step, partial)
            self._record_perf(phase, epoch, step, out, time.perf_counter() - t0, env_steps)
            metrics.update(out)
        self.epoch = epoch
        # ranks > 0 wait here (on rank 0's heartbeat) while rank 0 evaluates
        dist.from_main(f"the end of epoch {epoch} (rank 0 evaluates)")
        metrics.update(self._rank_metrics(epoch))
        metrics["epoch_seconds"] = time.perf_counter() - self._epoch_t0
        if self.dist.is_main:
            metrics["dataset/train_steps"] = float(self.stores["train"].num_steps)
            metrics["dataset/train_episodes"] = float(self.stores["train"].num_episodes)
            metrics["dataset/test_episodes"] = float(self.stores["test"].num_episodes)
        self.metrics.log(epoch, metrics)
        if cfg.common.do_checkpoint and self.dist.is_main:
            self.save_checkpoint()
        dist.from_main(f"the checkpoint of epoch {epoch}")  # the other ranks wait for rank 0's checkpoint
        summary = ", ".join(
            f"{k}={metrics[k]:.4g}"
            for k in (
                "train/return_mean",
                "tokenizer/loss",
                "world_model/loss",
                "actor_critic/loss",
                "test/return_mean",
            )
            if k in metrics
        )
        logger.info("epoch %d done in %.1fs: %s", epoch, metrics["epoch_seconds"], summary)
        return metrics

    def _run_phase(
        self, phase: str, epoch: int, step: int, partial: dict[str, Any] | None
    ) -> dict[str, float]:
        cfg = self.cfg
        if phase in ("collect", "evaluate") and not self.dist.is_main:
            return {}  # rank 0 alone collects and evaluates
        if phase == "collect":
            if epoch <= cfg.collection.train.stop_after_epochs and not cfg.collection.path_to_static_dataset:
                return self.collect(epoch)
            return {}
        if phase == "evaluate":
            if cfg.evaluation.should and epoch % cfg.evaluation.every == 0:
                return self.evaluate(epoch)
            return {}
        return self.train_component(phase, epoch, step, partial) if cfg.training.should else {}

    # -- throughput and consistency across ranks ----------------------------------------------------------
    def _env_steps(self) -> int:
        return int(self.collector.total_steps) if self.collector is not None else 0

    def _record_perf(
        self, phase: str, epoch: int, step: int, out: dict[str, float], seconds: float, env_steps: int
    ) -> None:
        """This rank's throughput of a phase: collect (env steps), or a component's gradient steps and
        the batch rows this rank trained on (its slice of the global batch)."""
        if not out or seconds <= 0:
            return
        if phase == "collect":
            n = float(self._env_steps() - env_steps)
            self._perf[phase] = (n, n, seconds)
        elif phase in self.components:
            c = self.components[phase].config
            n = float(epoch_steps(c, epoch) - step)
            rows = self.dist.row_slice(int(c.batch_size))
            self._perf[phase] = (n, n * (rows.stop - rows.start), seconds)

    def _rank_metrics(self, epoch: int) -> dict[str, float]:
        """Per-rank throughput (gathered to rank 0), the world size and, with several ranks, the check
        that every rank holds the same weights, optimizer states and visit counts."""
        r = self.dist.rank
        perf = {}
        for phase, (steps, samples, seconds) in self._perf.items():
            perf[f"perf/rank{r}/{phase}/steps_per_s"] = steps / seconds
            perf[f"perf/rank{r}/{phase}/samples_per_s"] = samples / seconds
        out: dict[str, float] = {"distributed/world_size": float(self.dist.world_size)}
        if not self.dist.is_distributed:
            return {**out, **perf}
        named: list[tuple[str, Any]] = list(self.agent.state_dict().items())
        for name, optimizer in self.optimizers.items():
            named += flatten_state(f"optimizer/{name}", optimizer.state_dict())
        named += store_digest(self.stores["train"])
        digest = dist.state_digest(named)
        gathered = dist.gather_objects((perf, digest))
        dist.check_in_sync(
            f"at the end of epoch {epoch}, the weights, optimizer states or visit counts", digest
        )
        for rank_perf, _ in gathered:
            out.update(rank_perf)
        out["distributed/weights_in_sync"] = 1.0
        return out

    # -- collection ------------------------------------------------------------------------------------
    def collect(self, epoch: int) -> dict[str, float]:
        c = self.cfg.collection.train
        first = epoch == 1
        num_steps = c.num_steps_first_epoch if first else c.num_steps
        if num_steps <= 0:
            return {}
        total = math.ceil(num_steps / self.collector.num_envs) * self.collector.num_envs
        bar = Progress(self.cfg.common.progress_bar, total, f"epoch {epoch} collect", "step")
        if self.collector.paused is not None:
            bar.update(int(self.collector.paused["stats"].num_steps))
        self.agent.eval()
        try:
            while True:
                stats = self.collector.collect(
                    num_steps,
                    None if first else self.agent.actor_critic,
                    self.device,
                    epsilon=c.epsilon,
                    temperature=c.temperature,
                    seed=derive_seed(self.seed, "collect", epoch),
                    progress=bar.update,
                    should_stop=self._pause_wanted,
                )
                if not stats.interrupted:
                    break
                # paused after an env step: checkpoint there (exits on a signal), then go on
                self._pause(epoch, "collect", int(self.collector.paused["round"]), None)
        finally:
            bar.close()
        self._save_episodes(stats, self.stores["train"], "train", epoch, c.num_episodes_to_save)
        out = self._episode_metrics("train", stats)
        out["collection/steps_per_s"] = stats.steps_per_second
        out["collection/total_env_steps"] = float(self.collector.total_steps)
        return out

    @staticmethod
    def _episode_metrics(prefix: str, stats: CollectStats) -> dict[str, float]:
        try:
            return episode_metrics(stats, prefix=f"{prefix}/")
        except ValueError as exc:  # e.g. an unknown Crafter achievement name
            logger.warning("cannot compute episode metrics: %s", exc)
            return {}

    def _save_episodes(self, stats: CollectStats, store: Any, split: str, epoch: int, limit: int) -> None:
        for ep_id in stats.finished_episode_ids[: max(0, limit)]:
            ep = store.load_episode(ep_id)
            save_episode(
                self.media_dir / "episodes" / split / f"epoch_{epoch:05d}_episode_{ep_id:06d}.npz",
                ep.obs,
                ep.act,
                ep.rew,
                ep.end,
                ep.trunc,
            )

    # -- training --------------------------------------------------------------------------------------
    def _autocast(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        if enabled and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_modes(self, training: Component | None) -> None:
        self.agent.eval()
        if training is not None:
            training.train_module.train()

    def train_component(
        self, name: str, epoch: int, start_step: int = 0, partial: dict[str, Any] | None = None
    ) -> dict[str, float]:
        """One epoch of gradient steps of the component ``name`` (docs/algorithm.md section 6 schedule).

        ``start_step``/``partial`` continue a phase that a mid-epoch checkpoint interrupted.
        """
        component = self.components[name]
        c = component.config
        steps = epoch_steps(c, epoch)
        store = self.stores["train"]
        if steps == 0 or store.num_episodes == 0:
            return {}
        # As in the reference: visit counts are updated after every batch from global epoch 2 on.
        update_counts = epoch > 1
        self._set_modes(component)
        sums: dict[str, torch.Tensor] = {}
        grad_norm_sum = torch.zeros((), device=self.device)
        skipped = 0
        t0 = time.perf_counter()
        if partial is not None:
            sums = {k: v.to(self.device) for k, v in partial["sums"].items()}
            grad_norm_sum = partial["grad_norm_sum"].to(self.device)
            skipped = int(partial["skipped"])
            t0 -= float(partial["seconds"])
        # World size W: every rank draws the global batch's segments (same seed, same counts) and trains
        # on its rows; the step averages over ranks (deltairis.train.step). W = 1: the whole batch.
        ctx = dist.current()
        rows = ctx.row_slice(int(c.batch_size)) if ctx.is_distributed else None
        row_offset = 0 if rows is None else rows.start
        sync_torch_rng(self.device)  # the codebook EMA's random draws: the same on every rank
        # The next batch is drawn (and gathered into pinned buffers on CUDA) while this one trains; it is
        # counted when taken, so a batch drawn ahead leaves the counts of a mid-epoch checkpoint alone.
        prefetch = StepPrefetcher(
            store,
            name,
            int(c.batch_size),
            component.seq_len,
            steps=range(start_step, steps),
            seed_of=lambda step: derive_seed(self.seed, name, epoch, step),
            device=self.device,
            pad_mode=component.pad_mode,
            alpha=float(c.sampling_alpha),
            update_counts=update_counts,
            rows=rows,
        )
        bar = Progress(self.cfg.common.progress_bar, steps, f"epoch {epoch} {name}", "it")
        bar.update(start_step)
        try:
            for step in range(start_step, steps):
                batch = prefetch.take(step)
                res = gradient_step(
                    component,
                    batch,
                    derive_seed(self.seed, name, "imagine", epoch, step),
                    float(c.max_grad_norm),
                    row_offset=row_offset,
                    autocast=self._autocast(bool(c.mixed_precision)),
                )
                if not res.applied:
                    skipped += 1
                    self.consecutive_skips[name] += 1
                    self._check_skips(name, epoch, step)
                    bar.update(1)
                    continue
                self.consecutive_skips[name] = 0
                grad_norm_sum += res.grad_norm
                for k, v in res.metrics.items():
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v
                bar.update(1)
                if step + 1 < steps and self._pause_wanted():
                    partial = {
                        "sums": {k: v.cpu() for k, v in sums.items()},
                        "grad_norm_sum": grad_norm_sum.cpu(),
                        "skipped": skipped,
                        "seconds": time.perf_counter() - t0,
                    }
                    self._pause(epoch, name, step + 1, partial)
        finally:
            prefetch.close()
            bar.close()
        seconds = time.perf_counter() - t0
        applied = steps - skipped
        self.num_updates[name] += applied
        self.skipped_steps[name] += skipped
        self._set_modes(None)
        result = (
            {k: float(v) / applied for k, v in sums.items()} if applied else {}
        )  # one host sync per phase
        if applied:
            result[f"{name}/grad_norm"] = float(grad_norm_sum) / applied
        result[f"{name}/steps_per_s"] = steps / seconds if seconds > 0 else 0.0
        result[f"{name}/num_updates"] = float(self.num_updates[name])
        result[f"{name}/skipped_steps"] = float(skipped)
        return result

    def _check_skips(self, name: str, epoch: int, step: int) -> None:
        consecutive = self.consecutive_skips[name]
        limit = int(self.cfg.training.max_consecutive_skips)
        logger.warning(
            "%s: non-finite loss or gradient norm at epoch %d step %d: step skipped", name, epoch, step
        )
        if limit and consecutive >= limit:
            last = (
                f"{self.ckpt_dir} (end of epoch {self.epoch})"
                if (self.ckpt_dir / "last.pt").exists()
                else "none yet (no epoch finished)"
            )
            raise NonFiniteError(
                f"{name}: {consecutive} consecutive steps with a non-finite loss or gradient norm, the last at "
                f"epoch {epoch} step {step} (training.max_consecutive_skips={limit}); the last good "
                f"checkpoint is {last}"
            )

    # -- evaluation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """The reference's evaluation: empty the test store, play the test episodes into it, then the
        tokenizer and world-model losses over those episodes (every segment, in order, no autocast)."""
        cfg = self.cfg
        out: dict[str, float] = {}
        self._set_modes(None)
        ctest = cfg.collection.test
        test_store = self.stores["test"]
        test_store.clear()
        if ctest.num_episodes > 0:
            env = make_env(
                cfg.env, "test", ctest.num_envs, seed=derive_env_seed(self.seed, "test_env", epoch)
            )
            bar = Progress(cfg.common.progress_bar, ctest.num_episodes, f"epoch {epoch} test episodes", "ep")
            try:
                stats = run_test_episodes(
                    env,
                    ctest.num_episodes,
                    self.agent.actor_critic,
                    self.device,
                    epsilon=ctest.epsilon,
                    temperature=ctest.temperature,
                    seed=derive_env_seed(self.seed, "test", epoch),
                    store=test_store,
                    progress=bar.update,
                    burn_in=int(self.agent.config.actor_critic.burn_in),
                    should_stop=self._stop_requested,
                )
            finally:
                bar.close()
                env.close()
            if stats.interrupted:  # a signal: the evaluation is replayed from its start after resuming
                self._pause(epoch, "evaluate", 0, None)
            out.update(self._episode_metrics("test", stats))
            out["test/steps_per_s"] = stats.steps_per_second
            self._save_episodes(stats, test_store, "test", epoch, ctest.num_episodes_to_save)
        if test_store.num_episodes == 0:
            return out
        for component in self.components.values():
            if component.spec.evaluated and epoch > component.config.start_after_epochs:
                out.update(self._eval_losses(component, test_store))
        if cfg.evaluation.save_reconstructions and epoch > cfg.training.tokenizer.start_after_epochs:
            self.save_reconstructions(test_store, epoch)
        return out

    def _eval_losses(self, component: Component, store: Any) -> dict[str, float]:
        """Mean over batches of each loss metric, the batches covering every test episode in order."""
        seq_len = component.seq_len
        batch_size = int(component.config.batch_size)
        eps, starts = eval_chunks(store.lengths, seq_len)
        limit = self.cfg.evaluation.num_batches
        num_batches = -(-len(eps) // batch_size)
        if limit is not None:
            num_batches = min(num_batches, int(limit))
        sums: dict[str, torch.Tensor] = {}
        for b in range(num_batches):
            ep, st = eps[b * batch_size : (b + 1) * batch_size], starts[b * batch_size : (b + 1) * batch_size]
            batch = store.gather(ep, st, st + seq_len).to(self.device)
            res = component.loss(batch, 0)
            for k, v in res.metrics.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
        return {f"eval/{k}": float(v) / num_batches for k, v in sums.items()}

    @torch.no_grad()
    def save_reconstructions(self, store: Any, epoch: int) -> Path:
        """Rows of real frames x_{t+1} above the tokenizer's reconstruction from (x_t, a_t, Δ-tokens)."""
        k = int(self.cfg.evaluation.num_reconstructions)
        seq_len = min(8, max(self.components["tokenizer"].seq_len, self.components["world_model"].seq_len))
        batch = store.sample(
            "eval_reconstructions",
            k,
            seq_len,
            pad_mode="left",
            seed=derive_seed(self.seed, "reconstructions", epoch),
            update_counts=False,
        ).to(self.device)
        recon = self.agent.reconstruct(
            batch.obs[:, :-1], batch.act[:, :-1], batch.obs[:, 1:]
        )  # (K, T-1, 3, H, W)
        mask = (batch.mask_padding[:, :-1] & batch.mask_padding[:, 1:]).cpu().numpy()
        rows = []
        real = to_uint8_hwc(batch.obs[:, 1:])
        fake = to_uint8_hwc(recon)
        for i in range(k):
            rows.append(real[i] * mask[i][:, None, None, None])
            rows.append(fake[i] * mask[i][:, None, None, None])
        path = self.media_dir / "reconstructions" / f"epoch_{epoch:05d}.png"
        save_image_grid(rows, path)
        return path


def epoch_steps(component_cfg: Any, epoch: int) -> int:
    """Gradient steps of a component at global epoch ``epoch`` (0 before it starts).

    As in the reference, ``steps_first_epoch`` applies at global epoch 1 only: a component that starts
    later (the Atari tokenizer at epoch 6) runs ``steps_per_epoch`` from its first epoch on.
    """
    if epoch <= int(component_cfg.start_after_epochs):
        return 0
    return int(component_cfg.steps_first_epoch if epoch == 1 else component_cfg.steps_per_epoch)


def eval_chunks(lengths: Any, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive segments covering every episode, as the reference's evaluation traverses a store.

    Episode ``i`` of length ``n`` gives the segments ``[j*L, (j+1)*L)`` for ``j < ceil(n / L)`` (the last
    one right-padded), in episode order; a last segment with a single real step is dropped. Returns
    (episode ids, starts), int64.
    """
    eps, starts = [], []
    for ep, n in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        k = -(-n // seq_len)
        if n - (k - 1) * seq_len < 2:  # the last segment holds a single real step
            k -= 1
        eps.extend([ep] * k)
        starts.extend(j * seq_len for j in range(k))
    return np.asarray(eps, dtype=np.int64), np.asarray(starts, dtype=np.int64)


def train(cfg: DictConfig, run_dir: Path | str) -> Trainer:
    """Build a :class:`Trainer` for ``run_dir`` and run it to ``common.epochs``.

    Under ``torchrun`` this is rank 0 (it joins the process group first when nobody did);
    ranks > 0 call :func:`follow`.
    """
    world = dist.env_world()
    if world is not None and world[1] > 1 and not dist.current().is_distributed:
        dist.init(resolve_device(cfg.common.device).type, float(cfg.distributed.timeout_s))
    trainer = Trainer(cfg, run_dir)
    trainer.run()
    return trainer


def follow(store_dir: str | None = None) -> Trainer:
    """A rank > 0 of a ``torchrun`` run (after :func:`deltairis.distributed.init`): train with rank 0.

    ``store_dir``: this node's ``distributed.store_dir`` (from its own command line), instead of rank 0's.
    """
    if dist.current().is_main:
        raise RuntimeError("follow() is for ranks > 0 of a distributed run")
    trainer = Trainer(None, None, store_dir=store_dir)
    trainer.run()
    return trainer


__all__ = ["ResumeError", "Trainer", "epoch_steps", "eval_chunks", "follow", "new_run_dir", "train"]
