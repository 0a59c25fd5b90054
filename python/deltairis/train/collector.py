"""Experience collection: a vector env, the acting policy and the replay store.

Per-env auto-reset (see :mod:`deltairis.train.env_config`): each env's running episode is buffered and written
to the store when it ends (``end`` = termination, ``trunc`` = time limit) or at the end of a collection
round (an unfinished episode is extended in the next round). The collector's state (current
observations, store ids of the running episodes, the last ``burn_in`` frames of each, the envs' exact
state as a versioned blob when the backend can save it) is saved with every checkpoint, as plain data, so
a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deltairis.checkpoint import from_plain, to_plain
from deltairis.config.schema import TrainCollectionConfig
from deltairis.envs.state_blob import pack_env_state, restore_env_state, supports_env_state
from deltairis.rl.policy import Policy

logger = logging.getLogger(__name__)


def to_chw(obs: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 frames -> (N, C, H, W)."""
    return np.ascontiguousarray(obs.transpose(0, 3, 1, 2))


def burn_in_state(actor_critic: Any, frames: np.ndarray, real: np.ndarray, device: torch.device) -> Any:
    """Initial LSTM state after feeding ``frames`` (N, B, 3, H, W) uint8 (zero where not ``real``).

    The reference feeds all B frames, zeros included; ``exclude_padding`` (opt-in) skips non-real ones.
    """
    n, b = frames.shape[:2]
    state = actor_critic.initial_state(n, device)
    if b == 0:
        return state
    mask = None
    if getattr(actor_critic.config, "exclude_padding", False):
        if not real.any():
            return state
        mask = torch.from_numpy(np.ascontiguousarray(real)).to(device)
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).float().div_(255.0)  # (N, B, 3, H, W)
    return actor_critic.burn_in(x, mask, state)


@dataclass
class CollectStats:
    """What one collection round produced (host values, for logging)."""

    num_steps: int = 0
    seconds: float = 0.0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    achievements: list[dict[str, int]] = field(default_factory=list)
    finished_episode_ids: list[int] = field(default_factory=list)
    interrupted: bool = False  # a paused collection (see Collector.collect's should_stop)
    #: the collector's global env-step count at the end of each finished episode (training collection)
    episode_env_steps: list[int] = field(default_factory=list)

    def __setstate__(self, state: dict[str, Any]) -> None:  # paused stats pickled before a field existed
        self.__dict__.update({"episode_env_steps": [], **state})

    def add_finished(self, info: dict[str, Any], i: int, env_steps: int | None = None) -> None:
        """Record the episode env ``i`` just finished (return, length, Crafter achievements, and the
        global env-step count at its end when given)."""
        if env_steps is not None:
            self.episode_env_steps.append(int(env_steps))
        self.episode_returns.append(float(info["episode_return"][i]))
        self.episode_lengths.append(int(info["episode_length"][i]))
        final = info["final_info"][i] if "final_info" in info else None
        if isinstance(final, dict) and "achievements" in final:
            self.achievements.append(dict(final["achievements"]))

    @property
    def steps_per_second(self) -> float:
        return self.num_steps / self.seconds if self.seconds > 0 else 0.0


_PENDING_FIELDS = ("obs", "act", "rew", "end", "trunc")


class _Pending:
    """Steps of one env not yet written to the store."""

    def __init__(self) -> None:
        self.obs: list[np.ndarray] = []
        self.act: list[int] = []
        self.rew: list[float] = []
        self.end: list[int] = []
        self.trunc: list[int] = []

    def __len__(self) -> int:
        return len(self.act)

    def append(self, obs: np.ndarray, act: Any, rew: Any, end: Any, trunc: Any) -> None:
        self.obs.append(obs)
        self.act.append(int(act))
        self.rew.append(float(rew))
        self.end.append(int(end))
        self.trunc.append(int(trunc))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (
            np.stack(self.obs),  # (T, 3, 64, 64)
            np.asarray(self.act, dtype=np.int64),
            np.asarray(self.rew, dtype=np.float32),
            np.asarray(self.end, dtype=np.uint8),
            np.asarray(self.trunc, dtype=np.uint8),
        )


#: how a checkpoint's env state is named in errors
ENV_STATE_WHERE = "the env state in checkpoints/trainer_state.pt"


def _array(value: Any, dtype: type) -> np.ndarray:
    """A writable NumPy copy of a saved tensor (or array)."""
    out = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return np.array(out, dtype=dtype, copy=True)


def paused_to_plain(paused: dict[str, Any] | None) -> dict[str, Any] | None:
    """An interrupted collection (round, statistics, pending steps, policy state) as plain data."""
    if paused is None:
        return None
    pending = [{k: list(getattr(p, k)) for k in _PENDING_FIELDS} for p in paused["pending"]]
    return to_plain(
        {
            "round": int(paused["round"]),
            "stats": dataclasses.asdict(paused["stats"]),
            "pending": pending,
            "policy": paused["policy"],
        }
    )


def paused_from_plain(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The inverse of :func:`paused_to_plain` (the same values, types and bits)."""
    if data is None:
        return None
    data = from_plain(data, ENV_STATE_WHERE.replace("env state", "paused collection"))
    known = {f.name for f in dataclasses.fields(CollectStats)}
    stats = CollectStats(**{k: v for k, v in data["stats"].items() if k in known})
    pending = []
    for fields in data["pending"]:
        p = _Pending()
        for k in _PENDING_FIELDS:
            setattr(p, k, list(fields[k]))
        pending.append(p)
    return {"round": int(data["round"]), "stats": stats, "pending": pending, "policy": data["policy"]}


class Collector:
    """Steps a vector env with a policy (or uniformly random actions) and fills a replay store.

    Args:
        env: a :class:`~deltairis.envs.vector.VectorEnv`.
        store: the :class:`~deltairis.data.ReplayStore` to append to.
        burn_in: frames of the running episode replayed into the policy's LSTM at the start of a round.
        seed: seed of the env's first reset.
    """

    def __init__(self, env: Any, store: Any, burn_in: int, seed: int) -> None:
        self.env = env
        self.store = store
        self.burn_in = int(burn_in)
        n = env.num_envs
        self.obs: np.ndarray = env.reset(seed)  # (N, 64, 64, 3)
        self.episode_ids = np.full(n, -1, dtype=np.int64)  # store id of the running episode, -1: none yet
        self.recent = np.zeros((n, self.burn_in, 3, *self.obs.shape[1:3]), dtype=np.uint8)  # last frames
        self.recent_len = np.zeros(n, dtype=np.int64)
        self.total_steps = 0
        self.paused: dict[str, Any] | None = (
            None  # an interrupted collection, continued by the next collect()
        )

    @property
    def num_envs(self) -> int:
        return int(self.env.num_envs)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The collector's state as plain data (tensors, numbers, bytes): the checkpoint's ``collector``.

        ``env`` is the env's versioned blob (:mod:`deltairis.envs.state_blob`), None for a backend that
        cannot save its exact state; ``paused`` an interrupted collection's (see :func:`paused_to_plain`).
        """
        env_blob: bytes | None = None
        if supports_env_state(self.env):
            try:
                env_blob = pack_env_state(self.env)
            except NotImplementedError as exc:  # e.g. a Python backend whose envs cannot save their state
                logger.debug("env state cannot be saved (%s); a resumed run restarts its episodes", exc)
        return {
            "obs": torch.from_numpy(self.obs.copy()),
            "episode_ids": torch.from_numpy(self.episode_ids.copy()),
            "recent": torch.from_numpy(self.recent.copy()),
            "recent_len": torch.from_numpy(self.recent_len.copy()),
            "total_steps": self.total_steps,
            "env": env_blob,
            "paused": paused_to_plain(self.paused),
        }

    def load_state_dict(self, state: dict[str, Any], reset_seed: int, where: str = ENV_STATE_WHERE) -> None:
        """Restore what :meth:`state_dict` returned; when the env itself was not saved, restart every
        episode. A damaged or foreign env state raises :class:`EnvStateError` naming ``where``."""
        if state.get("env") is not None:
            restore_env_state(self.env, state["env"], where)  # checked before anything else changes
            self.total_steps = int(state["total_steps"])
            self.paused = paused_from_plain(state.get("paused"))
            self.obs = _array(state["obs"], np.uint8)
            self.episode_ids = _array(state["episode_ids"], np.int64)
            self.recent = _array(state["recent"], np.uint8)
            self.recent_len = _array(state["recent_len"], np.int64)
            return
        self.total_steps = int(state["total_steps"])
        logger.warning(
            "the env state was not saved with the checkpoint (backend without an exact state): the %d running "
            "episodes are left unfinished in the store and new ones start from reset(seed=%d)",
            self.num_envs,
            reset_seed,
        )
        if state.get("paused") is not None:
            logger.warning("the paused collection cannot go on without the env state: it starts over")
        self.paused = None
        self.obs = self.env.reset(reset_seed)
        self.episode_ids[:] = -1
        self.recent_len[:] = 0

    # -- collection ---------------------------------------------------------------------------------
    def _flush(self, i: int, pending: _Pending) -> None:
        if len(pending) == 0:
            return
        arrays = pending.arrays()
        if self.episode_ids[i] < 0:
            self.episode_ids[i] = self.store.add_episode(*arrays)
        else:
            self.store.extend_episode(int(self.episode_ids[i]), *arrays)

    def _burn_in_state(self, actor_critic: Any, device: torch.device) -> Any:
        """The policy's LSTM state at the start of a round, burned in as the reference collector does.

        Every env's LSTM consumes ``burn_in`` frames: the last stored frames of its running episode,
        right-aligned, with zero frames where the episode is shorter (all zeros when no episode is
        running yet). With ``exclude_padding`` (opt-in) the zero frames leave the state unchanged.
        """
        b = self.burn_in
        pos = np.arange(b)[None, :]
        real = pos >= (b - self.recent_len[:, None])  # (N, B), right aligned
        return burn_in_state(actor_critic, self.recent * real[:, :, None, None, None], real, device)

    @torch.no_grad()
    def collect(
        self,
        num_steps: int,
        actor_critic: Any | None,
        device: torch.device,
        *,
        epsilon: float,
        temperature: float,
        seed: int,
        progress: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> CollectStats:
        """Collect at least ``num_steps`` env steps (rounded up to a multiple of ``num_envs``).

        ``actor_critic=None`` draws uniformly random actions. Otherwise the policy acts ε-greedily at
        ``temperature``, its LSTM first burned in on the last frames of every running episode, then
        carried across steps and reset for envs that start a new episode.

        ``should_stop`` is asked after every env step: when it says yes before the last one, the
        collection pauses (``stats.interrupted``) and its state (pending steps, policy, statistics so far)
        stays in :attr:`paused`, part of :meth:`state_dict`; the next call with the same arguments goes on
        from there, so a paused and resumed collection stores exactly what an uninterrupted one stores.
        """
        n = self.num_envs
        rounds = math.ceil(num_steps / n)
        policy = Policy(
            actor_critic, int(self.env.num_actions), device, epsilon=epsilon, temperature=temperature, seed=seed
        )
        start, stats, pending = self._start_round(policy, actor_critic, device)
        t0 = time.perf_counter() - stats.seconds
        for r in range(start, rounds):
            obs_chw = to_chw(self.obs)  # (N, 3, H, W)
            act = policy.act_frames(obs_chw)
            next_obs, rew, term, trunc, info = self.env.step(act)
            done = self._record_step(obs_chw, act, rew, term, trunc, info, pending, stats)
            policy.reset_rows(done)
            self.obs = next_obs
            stats.num_steps += n
            if progress is not None:
                progress(n)
            if should_stop is not None and r + 1 < rounds and should_stop():
                stats.seconds = time.perf_counter() - t0
                self.paused = {"round": r + 1, "stats": stats, "pending": pending, "policy": policy.state_dict()}
                stats.interrupted = True
                return stats
        for i in range(n):
            self._flush(i, pending[i])
        self.total_steps += stats.num_steps
        stats.seconds = time.perf_counter() - t0
        stats.interrupted = False
        return stats


    def _start_round(
        self, policy: Policy, actor_critic: Any | None, device: torch.device
    ) -> tuple[int, CollectStats, list[_Pending]]:
        """(first round, statistics so far, pending steps): a paused collection's, whose policy state goes
        back into ``policy``, or a fresh one's, the policy's LSTM burned in."""
        if self.paused is not None:
            paused, self.paused = self.paused, None
            policy.load_state_dict(paused["policy"])
            return int(paused["round"]), paused["stats"], paused["pending"]
        policy.state = None if actor_critic is None else self._burn_in_state(actor_critic, device)
        return 0, CollectStats(), [_Pending() for _ in range(self.num_envs)]

    def _record_step(
        self,
        obs_chw: np.ndarray,
        act: np.ndarray,
        rew: np.ndarray,
        term: np.ndarray,
        trunc: np.ndarray,
        info: dict[str, Any],
        pending: list[_Pending],
        stats: CollectStats,
    ) -> np.ndarray:
        """Buffer one env step of every env; write each finished episode to the store. Returns ``done``."""
        done = np.logical_or(term, trunc)
        env_steps = self.total_steps + stats.num_steps + self.num_envs  # this step included
        for i in range(self.num_envs):
            p = pending[i]
            p.append(obs_chw[i], act[i], rew[i], term[i], trunc[i])
            if done[i]:
                self._flush(i, p)
                stats.finished_episode_ids.append(int(self.episode_ids[i]))
                stats.add_finished(info, i, env_steps)
                self.episode_ids[i] = -1
                pending[i] = _Pending()
        # keep the last burn_in frames of every running episode (right aligned)
        if self.burn_in > 0:
            self.recent[:, :-1] = self.recent[:, 1:]
            self.recent[:, -1] = obs_chw
            self.recent_len = np.minimum(self.recent_len + 1, self.burn_in)
            self.recent_len[done] = 0
        return done

    def collect_resumable(
        self,
        num_steps: int,
        settings: TrainCollectionConfig,
        actor_critic: Any | None,
        device: torch.device,
        *,
        seed: int,
        progress: Callable[[int], None],
        should_stop: Callable[[], bool],
        pause: Callable[[int], None],
    ) -> CollectStats:
        """:meth:`collect` with the ε and temperature of ``settings``, through its pauses: whenever
        ``should_stop`` says yes after an env step, ``pause(round)`` runs (a mid-epoch checkpoint, which
        may end the run) and the collection goes on from there."""
        while True:
            stats = self.collect(
                num_steps,
                actor_critic,
                device,
                epsilon=settings.epsilon,
                temperature=settings.temperature,
                seed=seed,
                progress=progress,
                should_stop=should_stop,
            )
            if not stats.interrupted:
                return stats
            assert self.paused is not None
            pause(self.paused["round"])

    @property
    def paused_steps(self) -> int:
        """Env steps a paused collection already made (0 when none is paused)."""
        return 0 if self.paused is None else self.paused["stats"].num_steps


@torch.no_grad()
def run_test_episodes(
    env: Any,
    num_episodes: int,
    actor_critic: Any | None,
    device: torch.device,
    *,
    epsilon: float,
    temperature: float,
    seed: int,
    store: Any | None = None,
    progress: Callable[[int], None] | None = None,
    burn_in: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> CollectStats:
    """Play exactly ``num_episodes`` episodes from a fresh ``reset(seed)`` and return their statistics.

    Env ``i`` plays episodes ``i, i + N, i + 2N, ...`` of the quota (so short episodes are not favoured);
    once an env has played its share its further steps are ignored. Finished episodes are added to
    ``store`` when given. ``actor_critic=None`` plays uniformly random actions. As in the reference's
    test collector, the policy's LSTM first consumes ``burn_in`` zero frames (no episode is running).
    When ``should_stop`` says yes after a step, the episodes are abandoned (``stats.interrupted``).
    """
    n = env.num_envs
    quota = np.array([num_episodes // n + (1 if i < num_episodes % n else 0) for i in range(n)])
    played = np.zeros(n, dtype=np.int64)
    stats = CollectStats()
    obs = env.reset(seed)
    state = None
    if actor_critic is not None:
        zeros = np.zeros((n, burn_in, obs.shape[3], obs.shape[1], obs.shape[2]), dtype=np.uint8)
        state = burn_in_state(actor_critic, zeros, np.zeros((n, burn_in), dtype=bool), device)
    policy = Policy(
        actor_critic, env.num_actions, device, epsilon=epsilon, temperature=temperature, seed=seed, state=state
    )
    pending = [_Pending() for _ in range(n)]
    t0 = time.perf_counter()
    while (played < quota).any():
        obs_chw = to_chw(obs)
        act = policy.act_frames(obs_chw)
        obs, rew, term, trunc, info = env.step(act)
        done = np.logical_or(term, trunc)
        step = (obs_chw, act, rew, term, trunc, info)
        finished_now = _record_test_step(step, done, played < quota, pending, stats, store)
        played += done & (played < quota)
        policy.reset_rows(done)
        if progress is not None:
            progress(finished_now)
        if should_stop is not None and should_stop():
            stats.interrupted = True
            break
    stats.seconds = time.perf_counter() - t0
    return stats


def _record_test_step(
    step: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]],
    done: np.ndarray,
    playing: np.ndarray,
    pending: list[_Pending],
    stats: CollectStats,
    store: Any | None,
) -> int:
    """Count one test-episode step of the envs still ``playing`` (buffered when a ``store`` is given);
    record and store each episode that ended. Returns how many ended."""
    obs_chw, act, rew, term, trunc, info = step
    finished = 0
    for i in np.flatnonzero(playing).tolist():
        p = pending[i]
        stats.num_steps += 1
        if store is not None:
            p.append(obs_chw[i], act[i], rew[i], term[i], trunc[i])
        if done[i]:
            finished += 1
            stats.add_finished(info, i)
            if store is not None:
                stats.finished_episode_ids.append(int(store.add_episode(*p.arrays())))
            pending[i] = _Pending()
    return finished


__all__ = ["CollectStats", "Collector", "burn_in_state", "run_test_episodes", "to_chw"]
