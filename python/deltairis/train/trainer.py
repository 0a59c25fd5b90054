"""The Δ-IRIS training loop (SPEC section 6): collect, train tokenizer / world model / actor-critic,
evaluate, checkpoint, per epoch, in a run folder that can be resumed after a crash.

Run folder (``outputs/YYYY-MM-DD/hh-mm-ss/``)::

    checkpoints/last.pt            agent weights + model config (deltairis.load_agent)
    checkpoints/optimizer.pt       the three optimizers and the epoch
    checkpoints/trainer_state.pt   epoch, seed, RNG states, collector (envs, running episodes), the
                                   replay stores' committed indexes (dataset + visit counts)
    checkpoints/dataset/{train,test}   the replay stores
    config/trainer.yaml            the resolved configuration (what scripts/resume.sh uses)
    media/episodes/{train,test}    a few episodes per epoch (NPZ; deltairis-play -e makes GIFs)
    media/reconstructions          original frames above their tokenizer reconstructions (PNG)
    scripts/resume.sh, play.sh     run deltairis.cli.train / .play with the interpreter that created the run
    metrics.jsonl, tensorboard/, train.log, wandb/ (when enabled)

Consistency: at the end of an epoch the stores are committed, then the checkpoint set (including a
copy of each store's committed index) is written atomically. A crash between the two leaves stores
ahead of the checkpoint; resuming writes the saved indexes back, which rolls the stores (episodes,
steps and visit counts) back to the checkpointed epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from deltairis.errors import ResumeError
from deltairis.train.checkpoint import (
    CorruptCheckpointError,
    atomic_write_bytes,
    load_torch_file,
    recover_checkpoint_set,
    write_checkpoint_set,
)
from deltairis.train.collector import Collector, CollectStats, derive_env_seed, derive_seed, run_test_episodes
from deltairis.train.configuration import ConfigError, agent_config_from, diff_dicts, save_config
from deltairis.train.envs import make_env
from deltairis.train.logging_utils import MetricsLogger, save_episode, save_image_grid, to_uint8_hwc

logger = logging.getLogger(__name__)

COMPONENTS = ("tokenizer", "world_model", "actor_critic")
STATE_VERSION = 1


def resolve_device(spec: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the given torch device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"common.device: invalid device {spec!r} ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"common.device={spec} but CUDA is not available (use common.device=cpu or auto)")
    return device


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Progress:
    """A tqdm bar (rates and ETA) or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str, unit: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, smoothing=0.1)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


RESUME_SH = """#!/usr/bin/env bash
# Resume this run from its last complete epoch. Extra key=value overrides are passed on
# (e.g. common.epochs=2000 to train longer); a change of the model is refused.
# Same as `deltairis-train hydra.run.dir=RUN common.resume=true`, but with the Python that created the
# run, so no activated environment is needed; edit PYTHON if that environment moved.
set -euo pipefail
PYTHON={python}
if [ ! -x "$PYTHON" ]; then
  echo "resume.sh: $PYTHON (the Python that created this run) is missing; trying python3 from PATH" >&2
  PYTHON=python3
fi
cd "$(dirname "$0")/.."
exec "$PYTHON" -m deltairis.cli.train hydra.run.dir="$PWD" common.resume=true "$@"
"""

PLAY_SH = """#!/usr/bin/env bash
# Watch the agent of this run (see `deltairis-play --help`):
#   ./scripts/play.sh       agent in the real environment      ./scripts/play.sh -w   you/random in the world model
#   ./scripts/play.sh -a    agent in the world model           ./scripts/play.sh -e   episodes of media/episodes
#   add -h for a header with step, reward and return. Frames are written as GIFs to media/play/.
# It runs the Python that created the run, so no activated environment is needed; edit PYTHON if it moved.
set -euo pipefail
PYTHON={python}
if [ ! -x "$PYTHON" ]; then
  echo "play.sh: $PYTHON (the Python that created this run) is missing; trying python3 from PATH" >&2
  PYTHON=python3
fi
cd "$(dirname "$0")/.."
exec "$PYTHON" -m deltairis.cli.play --run-dir "$PWD" "$@"
"""


class Trainer:
    """Owns the agent, optimizers, replay stores, envs and the run folder of one training run.

    Args:
        cfg: a validated config (:func:`deltairis.train.configuration.compose_config`).
        run_dir: the run folder; created for a fresh run, read back when ``cfg.common.resume``.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path | str) -> None:
        from deltairis.agent import Agent
        from deltairis.data import ReplayStore
        from deltairis.models import configure_optimizer

        self.run_dir = Path(run_dir).resolve()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.media_dir = self.run_dir / "media"
        resume = bool(cfg.common.resume)
        self.device = resolve_device(cfg.common.device)
        if self.device.type == "cuda":
            # The reference enables TF32 matmuls; common.tf32=false keeps full fp32 matmuls.
            torch.backends.cuda.matmul.allow_tf32 = bool(cfg.common.tf32)
        if cfg.common.num_threads:
            torch.set_num_threads(int(cfg.common.num_threads))

        state: dict[str, Any] | None = None
        saved_agent: dict[str, Any] | None = None
        optim_state: dict[str, Any] | None = None
        if resume:
            state, saved_agent, optim_state = self._read_checkpoint()
            cfg = OmegaConf.merge(cfg, {"common": {"seed": int(state["seed"])}})  # the run's seed
        else:
            if (self.ckpt_dir / "last.pt").exists() or (self.ckpt_dir / "trainer_state.pt").exists():
                raise ResumeError(
                    f"{self.run_dir} already holds a training run; resume it with common.resume=true "
                    "(scripts/resume.sh) or choose another run folder"
                )
            if cfg.common.seed is None:
                cfg = OmegaConf.merge(cfg, {"common": {"seed": int(np.random.SeedSequence().entropy % 2**31)}})
        OmegaConf.set_struct(cfg, True)
        self.cfg = cfg
        self.seed = int(cfg.common.seed)
        self._make_layout()
        if not resume:
            save_config(OmegaConf.merge(cfg, {"common": {"resume": False}}), self.run_dir / "config" / "trainer.yaml")

        # -- environments and model configuration ----------------------------------------------------
        ctrain = cfg.collection.train
        env = make_env(cfg.env, "train", ctrain.num_envs, seed=derive_env_seed(self.seed, "train_env"))
        self.num_actions = int(env.num_actions)
        self.action_names = list(getattr(env, "action_names", []))
        agent_cfg = agent_config_from(cfg, self.num_actions)
        if saved_agent is not None:
            self._check_same_model(saved_agent, agent_cfg)

        torch.manual_seed(derive_seed(self.seed, "init") % 2**63)
        self.agent = Agent(agent_cfg).to(self.device)
        if saved_agent is not None:
            self.agent.load_state_dict(saved_agent["state_dict"], strict=True)
        elif cfg.agent.path_to_ckpt:
            from deltairis.agent import load_agent

            init = load_agent(cfg.agent.path_to_ckpt, agent_cfg.preset, self.num_actions)
            self.agent.load_state_dict(init.state_dict(), strict=True)
            logger.info("initialised the agent from %s", cfg.agent.path_to_ckpt)

        tcfg = cfg.training
        self.optimizers = {
            "tokenizer": configure_optimizer(
                self.agent.tokenizer, tcfg.tokenizer.learning_rate, tcfg.tokenizer.weight_decay, "adamw"
            ),
            "world_model": configure_optimizer(
                self.agent.world_model, tcfg.world_model.learning_rate, tcfg.world_model.weight_decay, "adamw"
            ),
            "actor_critic": torch.optim.Adam(
                self.agent.actor_critic.model.parameters(), lr=tcfg.actor_critic.learning_rate
            ),
        }
        if optim_state is not None:
            for name, opt in self.optimizers.items():
                opt.load_state_dict(optim_state[name])

        # -- replay stores ---------------------------------------------------------------------------
        dataset_dir = self.ckpt_dir / "dataset"
        if state is not None and "train" in state["dataset_index"]:
            self._restore_store_index(dataset_dir / "train", state["dataset_index"]["train"])
        self.stores = {
            split: ReplayStore(dataset_dir / split, backend="auto", create=True) for split in ("train", "test")
        }
        if state is not None:
            # The test store only holds one evaluation's episodes and is emptied before every
            # evaluation; it is not part of the checkpoint.
            self.stores["test"].clear()
        self.collector = Collector(
            env, self.stores["train"], agent_cfg.actor_critic.burn_in, seed=derive_env_seed(self.seed, "train_env")
        )
        self.epoch = 0
        self.num_updates = {c: 0 for c in COMPONENTS}
        if state is not None:
            self.epoch = int(state["epoch"])
            self.num_updates = dict(state["num_updates"])
            self.collector.load_state_dict(state["collector"], reset_seed=derive_env_seed(self.seed, "reset", self.epoch))
            _set_rng_state(state["rng"])
            logger.info("resumed %s at the end of epoch %d", self.run_dir, self.epoch)
        elif cfg.collection.path_to_static_dataset:
            from deltairis.data import import_reference_dataset

            ids = import_reference_dataset(cfg.collection.path_to_static_dataset, self.stores["train"])
            logger.info("imported %d episodes from %s", len(ids), cfg.collection.path_to_static_dataset)

        self.metrics = MetricsLogger(
            self.run_dir, cfg.wandb, OmegaConf.to_container(cfg, resolve=True), resume  # type: ignore[arg-type]
        )
        if resume:
            self.metrics.truncate_after(self.epoch)
        logger.info(
            "run folder %s | device %s | preset %s | %d actions | seed %d",
            self.run_dir,
            self.device,
            agent_cfg.preset,
            self.num_actions,
            self.seed,
        )

    # -- run folder ------------------------------------------------------------------------------------
    def _make_layout(self) -> None:
        for sub in ("checkpoints/dataset", "config", "media/episodes", "media/reconstructions", "scripts"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        import shlex
        import sys

        for name, text in (("resume.sh", RESUME_SH), ("play.sh", PLAY_SH)):
            path = self.run_dir / "scripts" / name
            atomic_write_bytes(path, text.format(python=shlex.quote(sys.executable)).encode())
            path.chmod(0o755)

    def _read_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if not (self.ckpt_dir / "trainer_state.pt").exists() and not (self.ckpt_dir / ".journal.json").exists():
            raise ResumeError(f"nothing to resume in {self.run_dir}: no checkpoints/trainer_state.pt")
        recover_checkpoint_set(self.ckpt_dir)
        state = load_torch_file(self.ckpt_dir / "trainer_state.pt", "trainer state")
        agent = load_torch_file(self.ckpt_dir / "last.pt", "agent checkpoint")
        optim = load_torch_file(self.ckpt_dir / "optimizer.pt", "optimizer checkpoint")
        for what, payload in (("trainer state", state), ("agent checkpoint", agent), ("optimizer checkpoint", optim)):
            if not isinstance(payload, dict):
                raise CorruptCheckpointError(f"{what} in {self.ckpt_dir} holds a {type(payload).__name__}")
        epochs = {int(state.get("epoch", -1)), int(agent.get("epoch", state.get("epoch", -1))), int(optim.get("epoch", -1))}
        if len(epochs) != 1:
            raise CorruptCheckpointError(
                f"checkpoint files in {self.ckpt_dir} are from different epochs {sorted(epochs)}; they were left untouched"
            )
        if "state_dict" not in agent or "config" not in agent:
            raise CorruptCheckpointError(f"{self.ckpt_dir / 'last.pt'} is not a delta-iris agent checkpoint")
        return state, agent, optim

    def _check_same_model(self, saved: dict[str, Any], agent_cfg: Any) -> None:
        from deltairis.agent import Agent

        changes = diff_dicts(saved["config"], agent_cfg.to_dict())
        if not changes:
            return
        fresh = Agent(agent_cfg).state_dict()  # only built when the model settings changed
        old = saved["state_dict"]
        shape_changes = [
            f"{k}: {tuple(old[k].shape) if k in old else None} -> {tuple(v.shape)}"
            for k, v in fresh.items()
            if k not in old or tuple(old[k].shape) != tuple(v.shape)
        ] + [f"{k}: removed" for k in old if k not in fresh]
        if shape_changes:
            raise ResumeError(
                "resume refused: the configuration changes the model's shape ("
                + "; ".join(changes[:10])
                + "). Parameters affected: "
                + "; ".join(shape_changes[:10])
                + ". Resume with the run's own config/trainer.yaml or start a new run."
            )
        logger.warning("resuming with changed model settings (same shapes): %s", "; ".join(changes))

    @staticmethod
    def _restore_store_index(directory: Path, payload: bytes | None) -> None:
        from deltairis.data.replay import INDEX_NAME

        path = directory / INDEX_NAME
        if payload is None:
            if path.exists():  # the store was created after the checkpoint: roll it back to empty
                path.unlink()
            return
        if not path.exists() or path.read_bytes() != payload:
            logger.warning("rolling the replay store %s back to the checkpointed epoch", directory)
            atomic_write_bytes(path, payload)

    # -- checkpoint ------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        from deltairis.agent import agent_checkpoint
        from deltairis.data.replay import INDEX_NAME

        t0 = time.perf_counter()
        index: dict[str, bytes | None] = {}
        for split, store in self.stores.items():
            store.commit()
        path = self.stores["train"].directory / INDEX_NAME
        index["train"] = path.read_bytes() if path.exists() else None
        agent_payload = agent_checkpoint(self.agent)
        agent_payload["epoch"] = self.epoch
        members = {
            "last.pt": agent_payload,
            "optimizer.pt": {"epoch": self.epoch, **{k: o.state_dict() for k, o in self.optimizers.items()}},
            "trainer_state.pt": {
                "version": STATE_VERSION,
                "epoch": self.epoch,
                "seed": self.seed,
                "num_updates": dict(self.num_updates),
                "rng": _rng_state(),
                "collector": self.collector.state_dict(),
                "dataset_index": index,
            },
        }
        write_checkpoint_set(self.ckpt_dir, members, self.epoch)
        logger.debug("checkpoint of epoch %d written in %.2fs", self.epoch, time.perf_counter() - t0)

    # -- main loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        """Train until ``common.epochs`` (continuing after ``self.epoch`` when resumed)."""
        epochs = int(self.cfg.common.epochs)
        if self.epoch >= epochs:
            logger.info("run already at epoch %d of %d: nothing to do", self.epoch, epochs)
        try:
            for epoch in range(self.epoch + 1, epochs + 1):
                self.run_epoch(epoch)
        finally:
            self.close()

    def close(self) -> None:
        self.metrics.close()
        with contextlib.suppress(Exception):
            self.collector.env.close()
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                store.close()

    def run_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        t_epoch = time.perf_counter()
        logger.info("epoch %d / %d", epoch, cfg.common.epochs)
        metrics: dict[str, float] = {}
        ctrain = cfg.collection.train
        if epoch <= ctrain.stop_after_epochs and not cfg.collection.path_to_static_dataset:
            metrics.update(self.collect(epoch))
        if cfg.training.should:
            for name in COMPONENTS:
                metrics.update(self.train_component(name, epoch))
        if cfg.evaluation.should and epoch % cfg.evaluation.every == 0:
            metrics.update(self.evaluate(epoch))
        self.epoch = epoch
        metrics["epoch_seconds"] = time.perf_counter() - t_epoch
        metrics["dataset/train_steps"] = float(self.stores["train"].num_steps)
        metrics["dataset/train_episodes"] = float(self.stores["train"].num_episodes)
        metrics["dataset/test_episodes"] = float(self.stores["test"].num_episodes)
        self.metrics.log(epoch, metrics)
        if cfg.common.do_checkpoint:
            self.save_checkpoint()
        summary = ", ".join(
            f"{k}={metrics[k]:.4g}"
            for k in ("train/return_mean", "tokenizer/loss", "world_model/loss", "actor_critic/loss", "test/return_mean")
            if k in metrics
        )
        logger.info("epoch %d done in %.1fs: %s", epoch, metrics["epoch_seconds"], summary)
        return metrics

    # -- collection ------------------------------------------------------------------------------------
    def collect(self, epoch: int) -> dict[str, float]:
        c = self.cfg.collection.train
        first = epoch == 1
        num_steps = c.num_steps_first_epoch if first else c.num_steps
        if num_steps <= 0:
            return {}
        total = math.ceil(num_steps / self.collector.num_envs) * self.collector.num_envs
        bar = _Progress(self.cfg.common.progress_bar, total, f"epoch {epoch} collect", "step")
        self.agent.eval()
        try:
            stats = self.collector.collect(
                num_steps,
                None if first else self.agent.actor_critic,
                self.device,
                epsilon=c.epsilon,
                temperature=c.temperature,
                seed=derive_seed(self.seed, "collect", epoch),
                progress=bar.update,
            )
        finally:
            bar.close()
        self._save_episodes(stats, self.stores["train"], "train", epoch, c.num_episodes_to_save)
        out = self._episode_metrics("train", stats)
        out["collection/steps_per_s"] = stats.steps_per_second
        out["collection/total_env_steps"] = float(self.collector.total_steps)
        return out

    @staticmethod
    def _episode_metrics(prefix: str, stats: CollectStats) -> dict[str, float]:
        from deltairis.train.evaluate import episode_metrics

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
                ep.obs, ep.act, ep.rew, ep.end, ep.trunc,
            )

    # -- training --------------------------------------------------------------------------------------
    def _autocast(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        if enabled and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_modes(self, training: str | None) -> None:
        self.agent.eval()
        if training is not None:
            getattr(self.agent, training).train()

    def _seq_len(self, name: str) -> int:
        c = self.cfg.training[name]
        if c.seq_len is not None:
            return int(c.seq_len)
        return int(self.agent.config.actor_critic.burn_in) + 1

    def _loss(self, name: str, batch: Any, seed: int) -> Any:
        a = self.agent
        if name == "tokenizer":
            return a.tokenizer.compute_loss(batch)
        if name == "world_model":
            return a.world_model.compute_loss(batch, a.tokenizer)
        return a.actor_critic.compute_loss(batch, a.tokenizer, a.world_model, seed=seed)

    def _parameters(self, name: str) -> list[torch.nn.Parameter]:
        if name == "actor_critic":
            return list(self.agent.actor_critic.model.parameters())
        return [p for p in getattr(self.agent, name).parameters() if p.requires_grad]

    def train_component(self, name: str, epoch: int) -> dict[str, float]:
        """One epoch of gradient steps of ``name`` (SPEC section 6 schedule)."""
        c = self.cfg.training[name]
        if epoch <= c.start_after_epochs:
            return {}
        steps = epoch_steps(c, epoch)
        store = self.stores["train"]
        if steps == 0 or store.num_episodes == 0:
            return {}
        seq_len = self._seq_len(name)
        pad_mode = "left" if name == "actor_critic" else "both"
        # As in the reference: visit counts are updated after every batch from global epoch 2 on.
        update_counts = epoch > 1
        optimizer = self.optimizers[name]
        params = self._parameters(name)
        self._set_modes(name)
        sums: dict[str, torch.Tensor] = {}
        grad_norm_sum = torch.zeros((), device=self.device)
        bar = _Progress(self.cfg.common.progress_bar, steps, f"epoch {epoch} {name}", "it")
        t0 = time.perf_counter()
        try:
            for step in range(steps):
                batch = store.sample(
                    name,
                    int(c.batch_size),
                    seq_len,
                    pad_mode=pad_mode,
                    alpha=float(c.sampling_alpha),
                    seed=derive_seed(self.seed, name, epoch, step),
                    update_counts=update_counts,
                ).to(self.device, non_blocking=True)
                with self._autocast(bool(c.mixed_precision)):
                    out = self._loss(name, batch, derive_seed(self.seed, name, "imagine", epoch, step))
                if name == "actor_critic":
                    # where the reference does it: after imagining, before this step's update
                    self.agent.actor_critic.update_target()
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                grad_norm_sum += torch.nn.utils.clip_grad_norm_(params, float(c.max_grad_norm)).detach()
                optimizer.step()
                for k, v in out.metrics.items():
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v
                bar.update(1)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        self.num_updates[name] += steps
        self._set_modes(None)
        result = {k: float(v) / steps for k, v in sums.items()}  # one host sync per phase
        result[f"{name}/grad_norm"] = float(grad_norm_sum) / steps
        result[f"{name}/steps_per_s"] = steps / seconds if seconds > 0 else 0.0
        result[f"{name}/num_updates"] = float(self.num_updates[name])
        return result

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
            env = make_env(cfg.env, "test", ctest.num_envs, seed=derive_env_seed(self.seed, "test_env", epoch))
            bar = _Progress(cfg.common.progress_bar, ctest.num_episodes, f"epoch {epoch} test episodes", "ep")
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
                )
            finally:
                bar.close()
                env.close()
            out.update(self._episode_metrics("test", stats))
            out["test/steps_per_s"] = stats.steps_per_second
            self._save_episodes(stats, test_store, "test", epoch, ctest.num_episodes_to_save)
        if test_store.num_episodes == 0:
            return out
        for name in ("tokenizer", "world_model"):
            c = cfg.training[name]
            if epoch <= c.start_after_epochs:
                continue
            out.update(self._eval_losses(name, test_store, int(c.batch_size)))
        if cfg.evaluation.save_reconstructions and epoch > cfg.training.tokenizer.start_after_epochs:
            self.save_reconstructions(test_store, epoch)
        return out

    def _eval_losses(self, name: str, store: Any, batch_size: int) -> dict[str, float]:
        """Mean over batches of each loss metric, the batches covering every test episode in order."""
        seq_len = self._seq_len(name)
        eps, starts = eval_chunks(store.lengths, seq_len)
        limit = self.cfg.evaluation.num_batches
        num_batches = -(-len(eps) // batch_size)
        if limit is not None:
            num_batches = min(num_batches, int(limit))
        sums: dict[str, torch.Tensor] = {}
        for b in range(num_batches):
            ep, st = eps[b * batch_size : (b + 1) * batch_size], starts[b * batch_size : (b + 1) * batch_size]
            batch = store.gather(ep, st, st + seq_len).to(self.device)
            res = self._loss(name, batch, 0)
            for k, v in res.metrics.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
        return {f"eval/{k}": float(v) / num_batches for k, v in sums.items()}

    @torch.no_grad()
    def save_reconstructions(self, store: Any, epoch: int) -> Path:
        """Rows of real frames x_{t+1} above the tokenizer's reconstruction from (x_t, a_t, Δ-tokens)."""
        k = int(self.cfg.evaluation.num_reconstructions)
        seq_len = min(8, max(self._seq_len("tokenizer"), self._seq_len("world_model")))
        batch = store.sample(
            "eval_reconstructions", k, seq_len, pad_mode="left",
            seed=derive_seed(self.seed, "reconstructions", epoch), update_counts=False,
        ).to(self.device)
        recon = self.agent.reconstruct(batch.obs[:, :-1], batch.act[:, :-1], batch.obs[:, 1:])  # (K, T-1, 3, H, W)
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


def new_run_dir(base: Path | str = "outputs") -> Path:
    """``outputs/YYYY-MM-DD/hh-mm-ss`` (local time, like Hydra), made unique if it already exists."""
    now = time.localtime()
    path = Path(base) / time.strftime("%Y-%m-%d", now) / time.strftime("%H-%M-%S", now)
    candidate, k = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}_{k}")
        k += 1
    return candidate


def train(cfg: DictConfig, run_dir: Path | str) -> Trainer:
    """Build a :class:`Trainer` for ``run_dir`` and run it to ``common.epochs``."""
    trainer = Trainer(cfg, run_dir)
    trainer.run()
    return trainer


__all__ = ["ResumeError", "Trainer", "epoch_steps", "eval_chunks", "new_run_dir", "resolve_device", "train"]
