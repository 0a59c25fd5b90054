"""The whole imagination rollout as one CUDA graph (burn-in excluded), an opt-in fast path.

:func:`imagine_rollout` splits the imagination in two:

1. :func:`rollout_body`, without grad: the imagination's step loop
   (:func:`deltairis.rl.imagination.imagination_steps`, the same code the eager path runs, stepping the
   same :class:`~deltairis.rl.world_model_env.WorldModelEnv`) with both sampler offsets in a device tensor
   advanced in place. Its inputs and outputs are fixed-shape tensors, so :class:`GraphedRollout` captures
   it once per (cache position, pending token, horizon, row offset, bf16) and replays all H steps with one
   launch and no host work; on CPU (or without a runner) it runs eagerly on the same buffers.
2. the online policy's forward *with* grad over the imagined frames (:func:`policy_forward`): the CNN
   batched over the B*H frames the policy acted on, then the H LSTM steps from the burn-in state.

Step 1 computes exactly the eager imagination's frames, actions, rewards, ends and target values (the
same ops on the same shapes; the samplers draw the same words). Step 2 gives the eager per-step logits
and values up to floating-point rounding (a batched CNN may sum in another order), hence the same loss
and gradients to tolerance. Under autocast the eager path is used (the graph is captured without it).
Whether the whole-rollout graph is faster than the per-step graphs of the env has not been measured
since the step loop was shared (``benchmarks/bench_models.py``, modes ``triton-graphs`` and
``triton-rollout-graph``).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from deltairis.models.kv_cache import KVCache
from deltairis.ops.graphs import CapturedStep, parameter_fingerprint
from deltairis.rl.imagination import (
    ImaginationOutput,
    State,
    begin_imagination,
    imagination_steps,
    imagine,
)
from deltairis.rl.world_model_env import WorldModelEnv, WorldModelState
from deltairis.seeding import POLICY_STREAM, stream_base

logger = logging.getLogger(__name__)


@torch.no_grad()
def rollout_body(
    env: WorldModelEnv, actor_critic, state: State, tstate: State, offsets: torch.Tensor, horizon: int
) -> ImaginationOutput:
    """``horizon`` imagined steps without grad from the env's current state (logits and values left out).

    ``offsets`` int64 (2,) on the device: the world model's next sampler stream (it replaces the env
    state's counter) and the policy's, both advanced in place.
    """
    env.state = dataclasses.replace(env.state, offset=offsets[0:1])
    return imagination_steps(env, actor_critic, state, tstate, horizon, offsets[1:2], policy_outputs=False)


def policy_forward(model, frames: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """Online logits (B, T, A) and value logits (B, T, K) over frames (B, T, 3, 64, 64), with grad.

    The CNN runs once over all B*T frames; the LSTM steps through T from ``state``."""
    feats = model.cnn(frames)  # (B, T, F)
    h, c = state
    hs = []
    for i in range(frames.size(1)):
        h, c = model.lstm(feats[:, i], (h, c))
        hs.append(h)
    hs_t = torch.stack(hs, 1)  # (B, T, L)
    return model.actor_linear(hs_t), model.critic_linear(hs_t)


class GraphedRollout:
    """:func:`rollout_body` captured as CUDA graphs for one batch size, device and dtype, on the env's
    KV cache for that shape (the env steps eagerly inside the captured rollout)."""

    def __init__(
        self,
        env: WorldModelEnv,
        actor_critic,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if env.cuda_graphs:
            raise ValueError(
                "the whole-rollout graph captures the env's step itself: "
                "use a WorldModelEnv with cuda_graphs=False"
            )
        self.env, self.actor_critic = env, actor_critic
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.cache: KVCache = env.slot_cache(batch_size, self.device, dtype)
        e = env.world_model.latents_emb.weight
        self._dummy_pending = torch.zeros(batch_size, 1, e.size(1), dtype=e.dtype, device=device)
        self._offsets = torch.zeros(2, dtype=torch.int64, device=device)
        self._graphs: dict[tuple[int, bool, int, int, bool], tuple[CapturedStep, int]] = {}
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> tuple[int, ...]:
        return parameter_fingerprint(self.env.tokenizer, self.env.world_model, self.actor_critic)

    def _capture(
        self, key: tuple[int, bool, int, int, bool], inputs: tuple[torch.Tensor, ...]
    ) -> tuple[CapturedStep, int]:
        size0, has_pending, horizon, row_offset, _ = key
        env, cache = self.env, self.cache
        lens0 = cache.lens.clone()
        result = {}

        def fn(obs, pending, h, c, th, tc, offsets):
            cache.size = size0  # every (warm-up or captured) run starts from the same position
            cache.lens.copy_(lens0)
            pending = pending if has_pending else None
            env.state = WorldModelState(cache, obs, pending, offsets[0:1], row_offset)
            roll = rollout_body(env, self.actor_critic, (h, c), (th, tc), offsets, horizon)
            result["size_after"] = cache.size
            return roll, env.state.pending

        step = CapturedStep(fn, *inputs, warmup=1)
        cache.size = size0
        # A first CUDA forward (the warm-up) may have moved conv weights to channels_last: this graph reads
        # the new storages, graphs captured before it would read freed ones.
        fingerprint = self._fingerprint()
        if fingerprint != self.fingerprint:
            self._graphs.clear()
            self.fingerprint = fingerprint
        logger.debug("captured the imagination rollout for %s", key)
        return step, result["size_after"]

    def run(self, state: State, tstate: State, policy_offset: int, horizon: int) -> ImaginationOutput:
        """Replay the rollout from the env's burn-in (into ``self.cache``); returns fresh tensors (clones).
        The env's state is left at the end of the rollout."""
        env = self.env
        wstate = env.state
        if wstate is None or wstate.cache is not self.cache:
            raise ValueError(
                "the env's state is not on this runner's cache: reset the env on a batch of this shape"
            )
        offsets = self._offsets  # filled on the device: no host-to-device copy, no synchronisation
        offsets[0:1].fill_(int(wstate.offset))
        offsets[1:2].fill_(int(policy_offset))
        key = (self.cache.size, wstate.pending is not None, horizon, wstate.row_offset, env.bf16)
        pending = wstate.pending if wstate.pending is not None else self._dummy_pending
        inputs = (wstate.obs, pending, *state, *tstate, offsets)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(key, inputs)
        step, size_after = captured
        roll, new_pending = step(*inputs)
        out = ImaginationOutput(*(None if t is None else t.clone() for t in roll))
        self.cache.size = size_after
        wm_offset = step.static_inputs[-1][0:1].clone()  # advanced by the replay
        rows = wstate.row_offset
        env.state = WorldModelState(self.cache, out.obs[:, -1], new_pending.clone(), wm_offset, rows)
        return out


class RolloutRunners:
    """The :class:`GraphedRollout` of one env and actor-critic, one per batch size, device and dtype."""

    def __init__(self, env: WorldModelEnv, actor_critic) -> None:
        self.env, self.actor_critic = env, actor_critic
        self._runners: dict[tuple[int, str, torch.dtype], GraphedRollout] = {}

    def get(
        self, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> GraphedRollout:
        """The runner for this shape (rebuilt if a parameter's storage moved)."""
        key = (batch_size, str(device), dtype)
        runner = self._runners.get(key)
        modules = (self.env.tokenizer, self.env.world_model, self.actor_critic)
        if runner is None or runner.fingerprint != parameter_fingerprint(*modules):
            runner = GraphedRollout(self.env, self.actor_critic, batch_size, device, dtype)
            self._runners[key] = runner
        return runner

    def clear(self) -> None:
        self._runners.clear()


def imagine_rollout(
    batch,
    env: WorldModelEnv,
    actor_critic,
    horizon: int | None = None,
    seed: int = 0,
    row_offset: int = 0,
    runner: GraphedRollout | None = None,
) -> ImaginationOutput:
    """:func:`deltairis.rl.imagination.imagine` computed as rollout body + batched policy forward.

    ``runner``: replay the body from CUDA graphs (its env must be ``env``); None runs the same body eagerly
    (any device). The world model runs under bf16 autocast when ``env.bf16`` (opt-in).
    """
    if runner is not None and runner.env is not env:
        raise ValueError("the rollout runner was built for another WorldModelEnv")
    if runner is not None and torch.is_autocast_enabled(batch.obs.device.type):
        return imagine(batch, env, actor_critic, horizon, seed, row_offset)
    horizon, state, tstate = begin_imagination(batch, env, actor_critic, horizon, seed, row_offset)
    policy_offset = stream_base(seed) + POLICY_STREAM
    if runner is not None:
        roll = runner.run(state, tstate, policy_offset, horizon)
    else:
        offsets = torch.tensor(
            [int(env.state.offset), policy_offset], dtype=torch.int64, device=batch.obs.device
        )
        roll = rollout_body(env, actor_critic, state, tstate, offsets, horizon)
    logits, value_logits = policy_forward(actor_critic.model, roll.obs[:, :horizon], state)
    return roll._replace(logits=logits, value_logits=value_logits)


__all__ = ["GraphedRollout", "RolloutRunners", "imagine_rollout", "policy_forward", "rollout_body"]
