"""The Δ-IRIS training loop (docs/algorithm.md section 6): collect, train tokenizer / world model /
actor-critic, evaluate, checkpoint, per epoch, in a run folder that can be resumed after a crash.

The pieces live beside this module: the component table (:mod:`deltairis.train.components`), one gradient
step (:mod:`deltairis.train.step`), the resumable position inside a phase (:mod:`deltairis.train.phase`),
the checkpoint's contents (:mod:`deltairis.train.state`), the run folder (:mod:`deltairis.train.run_folder`),
evaluation (:mod:`deltairis.train.evaluate`) and what the main process and the other ranks of a
distributed run do differently (:mod:`deltairis.train.roles`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from deltairis import distributed as dist
from deltairis.checkpoint import BackgroundWriter
from deltairis.config.schema import TrainerConfig
from deltairis.data import ReplayStore
from deltairis.errors import ResumeError
from deltairis.runtime import resolve_device
from deltairis.seeding import derive_env_seed, derive_seed, set_global_rng_state
from deltairis.train.build import build_agent, load_optimizers
from deltairis.train.checkpointing import refuse_non_finite, take_checkpoint, write_checkpoint
from deltairis.train.collector import Collector
from deltairis.train.components import COMPONENT_NAMES, Component, build_components, epoch_steps
from deltairis.train.configuration import typed_config
from deltairis.train.episode_log import EpisodeLog
from deltairis.train.evaluate import episode_metrics, eval_chunks, eval_losses, play_test_episodes
from deltairis.train.evaluate import save_reconstructions as write_reconstructions
from deltairis.train.logging_utils import Progress, save_episodes
from deltairis.train.phase import PausePoints, PhaseProgress, check_skip_streak, never
from deltairis.train.preemption import StopSignals
from deltairis.train.ranks import Throughput, rank_metrics, share_initial_weights
from deltairis.train.replicas import sync_replicas
from deltairis.train.roles import FollowerRole, MainRole, Role, RunStart, configure_torch
from deltairis.train.run_checks import EpochEta, Preflight
from deltairis.train.run_folder import new_run_dir
from deltairis.train.state import Position, TrainerState
from deltairis.train.step import accumulated_step, bf16_autocast, sync_torch_rng

logger = logging.getLogger(__name__)

#: The phases of an epoch, in order; a mid-epoch checkpoint names one and the step to go on from.
PHASES = ("collect", *COMPONENT_NAMES, "evaluate")
#: The metrics of an epoch's log line.
SUMMARY_KEYS = ("train/return_mean", *(f"{n}/loss" for n in COMPONENT_NAMES), "test/return_mean")


class Trainer:
    """Owns the agent, its components (optimizers), replay stores, envs and the run folder of one run.

    ``Trainer(cfg, run_dir)`` is the main process (:class:`deltairis.train.roles.MainRole`): ``cfg`` a
    validated config (:func:`deltairis.train.configuration.compose_config`, or its typed
    :class:`~deltairis.config.schema.TrainerConfig`), ``run_dir`` the run folder, created for a fresh run
    and read back when ``cfg.common.resume``. Under ``torchrun`` it is rank 0, and each rank > 0 is a
    :meth:`Trainer.follower` (:class:`deltairis.train.roles.FollowerRole`).
    """

    def __init__(self, cfg: DictConfig | TrainerConfig, run_dir: Path | str) -> None:
        self._open(MainRole(typed_config(cfg), Path(run_dir)))

    @classmethod
    def follower(cls, store_dir: str | None = None) -> Trainer:
        """A rank > 0 of a distributed run: config, run folder path and checkpoint come from rank 0.

        ``store_dir``: this node's ``distributed.store_dir`` (from its own command line), instead of rank 0's.
        """
        trainer = cls.__new__(cls)
        trainer._open(FollowerRole(store_dir))
        return trainer

    def _open(self, role: Role) -> None:
        self.role = role
        self.dist = dist.current()
        self._checkpoint_writer = BackgroundWriter()
        try:
            self._setup(role.begin())
        except BaseException:
            role.release()
            raise

    def _setup(self, start: RunStart) -> None:
        self.cfg = cfg = start.cfg
        self.run_dir = self.role.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.media_dir = self.run_dir / "media"
        self.device, self.seed = start.device, start.seed
        configure_torch(cfg.common, self.device)
        self.num_actions, self.action_names = start.num_actions, start.action_names
        self.agent = build_agent(start, load_initial=self.role.is_main)
        if start.saved is None and self.dist.is_distributed:
            share_initial_weights(self.agent)
        self.components: dict[str, Component] = build_components(self.agent, cfg.training)
        if start.saved is not None:
            load_optimizers(self.components, start.saved, self.ckpt_dir)
        self.preflight = self._preflight()
        self.stores = self.role.open_experience(start, self.agent.config.actor_critic.burn_in)
        self.state = TrainerState(seed=self.seed)
        self.pauses = PausePoints(cfg.common)
        self._epoch_metrics: dict[str, float] = {}
        self._epoch_t0 = 0.0
        self._throughput = Throughput()
        if start.saved is not None:  # the collector's state went to the collector (Role.open_experience)
            self.state = dataclasses.replace(start.saved.trainer, collector=None, dataset_index={})
            set_global_rng_state(start.saved.trainer.rng)
            logger.info("resumed %s at the end of epoch %d", self.run_dir, self.epoch)
        self.metrics = self.role.metrics_sink(cfg, self.epoch)
        self.episode_log = EpisodeLog.opened(self.run_dir, self.epoch, self.state.position, self.role.is_main)
        #: the run's duration estimate from its first steps (a warning when an epoch takes hours)
        self.eta = EpochEta(cfg, self.device, enabled=self.role.is_main)
        what = (self.run_dir, self.device, self.agent.config.preset, self.num_actions, self.seed)
        logger.info("run folder %s | device %s | preset %s | %d actions | seed %d", *what)

    def _preflight(self) -> Preflight:
        """The GPU fast paths checked against their references on this run's shapes (every rank; the
        failures of all ranks switched off on all; nothing runs on CPU), recorded in the run folder's
        ``config/preflight.json`` and, on CUDA, in this process's first ``metrics.jsonl`` record."""
        found = Preflight.run(self.agent, self.cfg, self.device, self.components["actor_critic"].loss)
        if self.role.is_main:
            found.write(self.run_dir)
        self._start_metrics = found.metrics()
        return found

    # -- progress (the checkpointed TrainerState) ---------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.state.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.state.epoch = value

    @property
    def num_updates(self) -> dict[str, int]:
        return self.state.num_updates

    @property
    def collector(self) -> Collector | None:
        """The main process's collector (None on the other ranks of a distributed run)."""
        return self.role.collector

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The components' optimizers by name (what ``checkpoints/optimizer.pt`` holds)."""
        return {name: c.optimizer for name, c in self.components.items()}

    # -- checkpoint ------------------------------------------------------------------------------------
    def save_checkpoint(self, position: Position | None = None) -> None:
        """Commit the stores, then write the checkpoint set atomically (never with non-finite weights).

        ``position``: for a mid-epoch checkpoint, where the epoch in progress stopped (see :meth:`_pause`).

        The set is serialized here (tensors copied to the host), so what is written is the state at this
        call. With ``common.checkpoint_in_background`` (default) the files are then written and synced on
        a background thread while training goes on; the next save, :meth:`close` and
        :meth:`wait_for_checkpoint` wait for that write and raise its error (CheckpointWriteError).
        Otherwise they are written before this returns. The bytes are the same either way.
        """
        self.wait_for_checkpoint()  # one write in flight at most; a failed one is raised here
        refuse_non_finite(self.agent, self.epoch, self.ckpt_dir)
        collector = self.role.main_collector()
        snapshot = take_checkpoint(self.state, self.agent, self.optimizers, self.stores, collector, position)
        background = self.cfg.common.checkpoint_in_background
        write_checkpoint(self._checkpoint_writer, self.ckpt_dir, snapshot, background)
        self.pauses.checkpointed()

    def wait_for_checkpoint(self) -> None:
        """Block until the checkpoint write in flight (if any) is on disk; raise its error if it failed."""
        self._checkpoint_writer.wait()

    def _pause(self, epoch: int, phase: str, step: int, partial: dict[str, Any] | None) -> None:
        """A mid-epoch checkpoint at (epoch, phase, step) (the main process writes it); then stop the run
        when a signal asked."""
        seconds = time.perf_counter() - self._epoch_t0
        self.role.pause(self, Position(epoch, phase, step, partial, dict(self._epoch_metrics), seconds))

    # -- main loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        """Train until ``common.epochs`` (continuing after ``self.epoch`` when resumed)."""
        epochs = self.cfg.common.epochs
        if self.epoch >= epochs:
            logger.info("run already at epoch %d of %d: nothing to do", self.epoch, epochs)
        try:
            with StopSignals() as stop:
                self.pauses.stop = stop
                try:
                    for epoch in range(self.epoch + 1, epochs + 1):
                        self.run_epoch(epoch, self.state.take_position(epoch))
                finally:
                    # the last checkpoint write (a preemption's too) ends while signals are still caught
                    self.wait_for_checkpoint()
        finally:
            self.pauses.stop = never
            self.close()

    def close(self) -> None:
        """Wait for the checkpoint write in flight, close the metrics, the env and the stores, then let go
        of the run folder; a failed checkpoint write is raised after that (CheckpointWriteError)."""
        try:
            self.wait_for_checkpoint()
        finally:
            try:
                self.metrics.close()
                self.role.close()
                for store in self.stores.values():
                    with contextlib.suppress(Exception):
                        store.close()
            finally:
                self.role.release()

    def run_epoch(self, epoch: int, position: Position | None = None) -> dict[str, float]:
        """One epoch: collect, train each component, evaluate, log, checkpoint.

        ``position`` (from a mid-epoch checkpoint) starts the epoch at that phase and step, with the
        metrics of the phases already done.
        """
        self._epoch_t0 = time.perf_counter() - (position.seconds if position else 0.0)
        where = f", from {position.phase} step {position.step}" if position else ""
        logger.info("epoch %d / %d%s", epoch, self.cfg.common.epochs, where)
        self._epoch_metrics = metrics = dict(position.metrics) if position else {}
        metrics.update(self._start_metrics)  # the first record of this process: the preflight (CUDA)
        self._start_metrics = {}
        self._throughput = Throughput()
        self.eta.begin_epoch(epoch)
        synced = False
        for phase in PHASES[PHASES.index(position.phase) if position else 0 :]:
            here = position if position is not None and phase == position.phase else None
            if here is None and self.pauses.stop_requested():  # between two phases
                self._pause(epoch, phase, 0, None)
            if phase in COMPONENT_NAMES and not synced and self.dist.is_distributed:
                # rank 0's new (and, after a start or resume, missing) steps reach every replica
                metrics.update(sync_replicas(self.stores["train"], f"the experience of epoch {epoch}"))
                synced = True
            t0, env_steps, step = time.perf_counter(), self.role.env_steps(), here.step if here else 0
            self.eta.start(phase, epoch)
            out = self._run_phase(phase, epoch, here) if self.role.runs(phase) else {}
            self.eta.end(phase)
            self._record_perf(phase, epoch, step, out, time.perf_counter() - t0, env_steps)
            metrics.update(out)
        self.epoch = epoch
        dist.from_main(f"the end of epoch {epoch} (rank 0 evaluates)")  # ranks > 0 wait on rank 0's heartbeat
        metrics.update(
            rank_metrics(epoch, self._throughput, self.agent, self.optimizers, self.stores["train"])
        )
        metrics["epoch_seconds"] = time.perf_counter() - self._epoch_t0
        self.role.end_epoch(self, epoch, metrics)
        dist.from_main(f"the checkpoint of epoch {epoch}")  # the other ranks wait for rank 0's checkpoint
        summary = ", ".join(f"{k}={metrics[k]:.4g}" for k in SUMMARY_KEYS if k in metrics)
        logger.info("epoch %d done in %.1fs: %s", epoch, metrics["epoch_seconds"], summary)
        return metrics

    def _run_phase(self, phase: str, epoch: int, here: Position | None) -> dict[str, float]:
        cfg = self.cfg
        if phase == "collect":
            if epoch <= cfg.collection.train.stop_after_epochs and not cfg.collection.path_to_static_dataset:
                return self.collect(epoch)
            return {}
        if phase == "evaluate":
            if cfg.evaluation.should and epoch % cfg.evaluation.every == 0:
                return self.evaluate(epoch)
            return {}
        if not cfg.training.should:
            return {}
        return self.train_component(phase, epoch, here.step if here else 0, here.partial if here else None)

    def _record_perf(
        self, phase: str, epoch: int, step: int, out: dict[str, float], seconds: float, env_steps: int
    ) -> None:
        """This rank's throughput in a phase: the collection's env steps, a component's optimizer steps."""
        if not out:
            return
        if phase == "collect":
            self._throughput.record(phase, self.role.env_steps() - env_steps, 1, seconds)
        elif phase in self.components:
            c = self.components[phase].config
            self._throughput.record_training(phase, c, epoch_steps(c, epoch) - step, seconds)

    # -- training --------------------------------------------------------------------------------------
    def _set_modes(self, training: Component | None) -> None:
        self.agent.eval()
        if training is not None:
            training.train_module.train()

    def train_component(
        self, name: str, epoch: int, start_step: int = 0, partial: dict[str, Any] | None = None
    ) -> dict[str, float]:
        """One epoch of gradient steps of the component ``name`` (docs/algorithm.md section 6 schedule).

        Each optimizer step accumulates ``training.<name>.grad_acc_steps`` micro-batches of ``batch_size``
        (:func:`deltairis.train.step.accumulated_step`; micro-batch ``j`` of step ``s`` is the phase's
        draw ``s * k + j``, :meth:`Component.draws`). ``start_step``/``partial`` continue a phase that a
        mid-epoch checkpoint interrupted: it stops between optimizer steps only.
        """
        component = self.components[name]
        steps = epoch_steps(component.config, epoch)
        if steps == 0 or self.stores["train"].num_episodes == 0:
            return {}
        self._set_modes(component)
        progress = PhaseProgress.resume(self.device, start_step, partial)
        # World size W: every rank draws the global batch's segments (same seed, same counts) and trains
        # on its rows; the step averages over ranks (deltairis.train.step). W = 1: the whole batch.
        rows = self.dist.row_slice(component.config.batch_size) if self.dist.is_distributed else None
        offset = 0 if rows is None else rows.start
        sync_torch_rng(self.device)  # the codebook EMA's random draws: the same on every rank
        store, span = self.stores["train"], range(start_step, steps)
        prefetch = component.prefetcher(store, epoch, span, self.seed, self.device, rows)
        bar = Progress(self.cfg.common.progress_bar, steps, f"epoch {epoch} {name}", "it")
        bar.update(start_step)
        k, max_norm = component.grad_acc_steps, component.config.max_grad_norm
        autocast = functools.partial(bf16_autocast, self.device, component.config.mixed_precision)
        try:
            for step in range(start_step, steps):
                batches = component.micro_batches(prefetch, step, self.seed, epoch)
                res = accumulated_step(component, batches, k, max_norm, offset, autocast)
                progress.add_step(res.applied, res.grad_norm, res.metrics)
                self._count_skip(name, epoch, step, res.applied)
                bar.update(1)
                if res.applied and step + 1 < steps and self.pauses.wanted():
                    self._pause(epoch, name, step + 1, progress.state_dict())
        finally:
            prefetch.close()
            bar.close()
        self.num_updates[name] += steps - progress.skipped
        self.state.skipped_steps[name] += progress.skipped
        self._set_modes(None)
        return progress.metrics(name, steps, self.num_updates[name])

    def _count_skip(self, name: str, epoch: int, step: int, applied: bool) -> None:
        """The non-finite guard's streak of skipped steps of ``name`` (too long a streak stops the run)."""
        self.eta.advance(name)  # called after every optimizer step: the first ones time the epoch
        streaks = self.state.consecutive_skips
        streaks[name] = 0 if applied else streaks[name] + 1
        if not applied:
            last = f"{self.ckpt_dir} (end of epoch {self.epoch})"
            last = last if (self.ckpt_dir / "last.pt").exists() else "none yet (no epoch finished)"
            check_skip_streak(name, streaks[name], self.cfg.training.max_consecutive_skips, epoch, step, last)

    # -- collection and evaluation (the main process) -------------------------------------------------------
    def collect(self, epoch: int) -> dict[str, float]:
        """One epoch's collection into the train store (uniformly random actions in epoch 1)."""
        c, collector, first = self.cfg.collection.train, self.role.main_collector(), epoch == 1
        num_steps = c.num_steps_first_epoch if first else c.num_steps
        if num_steps <= 0:
            return {}
        total = math.ceil(num_steps / collector.num_envs) * collector.num_envs
        bar = Progress(self.cfg.common.progress_bar, total, f"epoch {epoch} collect", "step")
        bar.update(collector.paused_steps)
        self.agent.eval()

        def progress(n: int) -> None:
            bar.update(n)
            self.eta.advance("collect", n)

        try:
            policy = None if first else self.agent.actor_critic
            stats = collector.collect_resumable(
                num_steps, c, policy, self.device, seed=derive_seed(self.seed, "collect", epoch),
                progress=progress, should_stop=self.pauses.wanted,
                pause=lambda step: self._pause(epoch, "collect", step, None),
            )  # fmt: skip
        finally:
            bar.close()
        folder = self.media_dir / "episodes" / "train"
        save_episodes(stats.finished_episode_ids, self.stores["train"], folder, epoch, c.num_episodes_to_save)
        self.episode_log.log(stats, "train", epoch, stats.episode_env_steps)
        out = episode_metrics(stats, "train/", strict=False)
        out["collection/steps_per_s"] = stats.steps_per_second
        out["collection/total_env_steps"] = float(collector.total_steps)
        return out

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """The reference's evaluation: empty the test store, play the test episodes into it, then the
        tokenizer and world-model losses over those episodes (every segment, in order, no autocast)."""
        cfg, out = self.cfg, {}
        self._set_modes(None)
        ctest, test_store = cfg.collection.test, self.stores["test"]
        test_store.clear()
        if ctest.num_episodes > 0:
            bar = Progress(cfg.common.progress_bar, ctest.num_episodes, f"epoch {epoch} test episodes", "ep")
            try:
                stats, out = play_test_episodes(
                    self.agent, cfg.env, ctest, seed=derive_env_seed(self.seed, "test", epoch),
                    device=self.device, env_seed=derive_env_seed(self.seed, "test_env", epoch),
                    store=test_store, progress=bar.update, should_stop=self.pauses.stop, prefix="test/",
                    strict_metrics=False,
                )  # fmt: skip
            finally:
                bar.close()
            if stats.interrupted:  # a signal: the evaluation is replayed from its start after resuming
                self._pause(epoch, "evaluate", 0, None)
            self.episode_log.log(stats, "test", epoch, self.role.env_steps())
            folder = self.media_dir / "episodes" / "test"
            save_episodes(stats.finished_episode_ids, test_store, folder, epoch, ctest.num_episodes_to_save)
        if test_store.num_episodes == 0:
            return out
        for component in self.components.values():
            if component.spec.evaluated and epoch > component.config.start_after_epochs:
                out.update(eval_losses(component, test_store, self.device, cfg.evaluation.num_batches))
        if cfg.evaluation.save_reconstructions and epoch > cfg.training.tokenizer.start_after_epochs:
            self.save_reconstructions(test_store, epoch)
        return out

    def save_reconstructions(self, store: ReplayStore, epoch: int) -> Path:
        """Real frames above the tokenizer's reconstructions, in ``media/reconstructions``."""
        seq_len = min(8, max(self.components["tokenizer"].seq_len, self.components["world_model"].seq_len))
        path = self.media_dir / "reconstructions" / f"epoch_{epoch:05d}.png"
        seed = derive_seed(self.seed, "reconstructions", epoch)
        count = self.cfg.evaluation.num_reconstructions
        return write_reconstructions(self.agent, store, count, seq_len, seed, path, self.device)


def train(cfg: DictConfig | TrainerConfig, run_dir: Path | str) -> Trainer:
    """Build a :class:`Trainer` for ``run_dir`` and run it to ``common.epochs``.

    Under ``torchrun`` this is rank 0 (it joins the process group first when nobody did);
    ranks > 0 call :func:`follow`.
    """
    cfg = typed_config(cfg)
    world = dist.env_world()
    if world is not None and world[1] > 1 and not dist.current().is_distributed:
        dist.init(resolve_device(cfg.common.device).type, cfg.distributed.timeout_s)
    trainer = Trainer(cfg, run_dir)
    trainer.run()
    return trainer


def follow(store_dir: str | None = None) -> Trainer:
    """A rank > 0 of a ``torchrun`` run (after :func:`deltairis.distributed.init`): train with rank 0.

    ``store_dir``: this node's ``distributed.store_dir`` (from its own command line), instead of rank 0's.
    """
    if dist.current().is_main:
        raise RuntimeError("follow() is for ranks > 0 of a distributed run")
    trainer = Trainer.follower(store_dir)
    trainer.run()
    return trainer


__all__ = ["PHASES", "ResumeError", "Trainer", "epoch_steps", "eval_chunks", "follow", "new_run_dir", "train"]
