"""The whole imagination rollout as one CUDA graph (burn-in excluded), an opt-in fast path.

:func:`deltairis.rl.imagination.imagine` interleaves, for each of the H steps, the online policy's
forward (with grad), the target critic, the action sampler and the world-model step (transformer,
heads, samplers, tokenizer decoder). Here the rollout is split in two:

1. :func:`rollout_body`, without grad: for each step the online policy's forward, the target critic,
   the counter-based action sample (its offset a device tensor advanced in place), the world-model
   step and the decoder. Its inputs and outputs are fixed-shape tensors, so :class:`GraphedRollout`
   captures it once per (cache position, batch shape, horizon, row offset) and replays all H steps
   with one launch and no host work; on CPU (or without a runner) it runs eagerly on the same buffers.
2. the online policy's forward *with* grad over the imagined frames (:func:`policy_forward`): the CNN
   batched over the B*H frames the policy acted on, then the H LSTM steps from the burn-in state.

Step 1 computes exactly the eager imagination's frames, actions, rewards, ends and target values (the
same ops on the same shapes; the samplers draw the same words). Step 2 gives the eager per-step logits
and values up to floating-point rounding (a batched CNN may sum in another order), hence the same loss
and gradients to tolerance. Under autocast the eager path is used (the graph is captured in float32).
"""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple

import torch

from deltairis import ops
from deltairis.models.kv_cache import KVCache
from deltairis.ops.graphs import CapturedStep
from deltairis.rl.graphs import parameter_fingerprint
from deltairis.rl.imagination import (
    ImaginationOutput,
    WorldModelState,
    imagine,
    world_model_burn_in,
    world_model_step,
)
from deltairis.seeding import POLICY_STREAM, SAMPLER_SEED, stream_base

logger = logging.getLogger(__name__)


def _bf16(device_type: str) -> torch.autocast:
    # no weight-cast cache: a captured graph must re-read the (in-place updated) float32 weights
    return torch.autocast(device_type, torch.bfloat16, cache_enabled=False)


class RolloutOutput(NamedTuple):
    obs: torch.Tensor  # (B, H+1, 3, 64, 64)
    act: torch.Tensor  # (B, H)
    rew: torch.Tensor  # (B, H)
    end: torch.Tensor  # (B, H)
    target_values: torch.Tensor  # (B, H+1)


@torch.no_grad()
def rollout_body(
    tokenizer,
    world_model,
    actor_critic,
    cache: KVCache,
    obs: torch.Tensor,
    pending: torch.Tensor | None,
    state: tuple[torch.Tensor, torch.Tensor],
    tstate: tuple[torch.Tensor, torch.Tensor],
    offsets: torch.Tensor,
    horizon: int,
    row_offset: int = 0,
    bf16_world_model: bool = False,
) -> RolloutOutput:
    """H imagined steps without grad from the burnt-in ``cache`` and frame ``obs`` (B, 3, H, W).

    ``offsets`` int64 (2,): the world model's next sampler stream and the policy's, advanced in place.
    ``bf16_world_model`` (opt-in, changes numerics): the world-model steps (transformer, heads, decoder) run
    under bf16 autocast; the policy and the critics stay float32.
    """
    ac = actor_critic
    temperature = ac.config.temperature
    wm_offset, policy_offset = offsets[0:1], offsets[1:2]  # views: advanced in place
    wstate = WorldModelState(cache, obs, pending, SAMPLER_SEED, wm_offset, row_offset)
    frames, actions, tvalues, rews, ends = [obs], [], [], [], []
    for _ in range(horizon):
        out = ac.model(wstate.obs, state)
        state = out.state
        tout = ac.target_model(wstate.obs, tstate)
        tstate = tout.state
        tvalues.append(ac.target_model.value(tout.value_logits))
        a = ops.sample_categorical(
            out.logits,
            temperature=temperature,
            seed=SAMPLER_SEED,
            offset=policy_offset,
            row_offset=row_offset,
        )
        policy_offset += 1
        with _bf16(obs.device.type) if bf16_world_model else contextlib.nullcontext():
            wstate, r, e = world_model_step(tokenizer, world_model, wstate, a)
        frames.append(wstate.obs)
        actions.append(a)
        rews.append(r)
        ends.append(e)
    tout = ac.target_model(wstate.obs, tstate)
    tvalues.append(ac.target_model.value(tout.value_logits))
    return RolloutOutput(
        obs=torch.stack(frames, 1),
        act=torch.stack(actions, 1),
        rew=torch.stack(rews, 1),
        end=torch.stack(ends, 1),
        target_values=torch.stack(tvalues, 1),
    )


def policy_forward(
    model, frames: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
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
    """:func:`rollout_body` captured as CUDA graphs for one batch size and device, with its own KV cache."""

    def __init__(self, tokenizer, world_model, actor_critic, batch_size: int, device: torch.device) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.tokenizer, self.world_model, self.actor_critic = tokenizer, world_model, actor_critic
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.cache: KVCache = world_model.transformer.empty_cache(batch_size, device)
        e = world_model.config.transformer.embed_dim
        self._dummy_pending = torch.zeros(batch_size, 1, e, device=device)
        self._offsets = torch.zeros(2, dtype=torch.int64, device=device)
        self._graphs: dict[tuple[int, bool, int, int, bool], CapturedStep] = {}
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> tuple[int, ...]:
        return parameter_fingerprint(self.tokenizer, self.world_model, self.actor_critic)

    def _capture(
        self, key: tuple[int, bool, int, int, bool], inputs: tuple[torch.Tensor, ...]
    ) -> CapturedStep:
        size0, has_pending, horizon, row_offset, bf16 = key
        cache = self.cache
        lens0 = cache.lens.clone()

        def fn(obs, pending, h, c, th, tc, offsets):
            cache.size = size0  # every (warm-up or captured) run starts from the same position
            cache.lens.copy_(lens0)
            return rollout_body(
                self.tokenizer,
                self.world_model,
                self.actor_critic,
                cache,
                obs,
                pending if has_pending else None,
                (h, c),
                (th, tc),
                offsets,
                horizon,
                row_offset,
                bf16,
            )

        step = CapturedStep(fn, *inputs, warmup=1)
        cache.size = size0
        # A first CUDA forward (the warm-up) may have moved conv weights to channels_last: this graph reads
        # the new storages, graphs captured before it would read freed ones.
        fingerprint = self._fingerprint()
        if fingerprint != self.fingerprint:
            self._graphs.clear()
            self.fingerprint = fingerprint
        logger.debug("captured the imagination rollout for %s", key)
        return step

    def run(
        self,
        wstate: WorldModelState,
        state: tuple[torch.Tensor, torch.Tensor],
        tstate: tuple[torch.Tensor, torch.Tensor],
        policy_offset: int,
        horizon: int,
        bf16_world_model: bool = False,
    ) -> RolloutOutput:
        """Replay the rollout from a burn-in into ``self.cache``; returns fresh tensors (clones)."""
        if wstate.cache is not self.cache:
            raise ValueError("wstate.cache is not this runner's cache; burn in with cache=runner.cache")
        offsets = self._offsets  # filled on the device: no host-to-device copy, no synchronisation
        offsets[0:1].fill_(int(wstate.offset))
        offsets[1:2].fill_(int(policy_offset))
        key = (
            self.cache.size,
            wstate.pending is not None,
            horizon,
            wstate.row_offset,
            bool(bf16_world_model),
        )
        pending = wstate.pending if wstate.pending is not None else self._dummy_pending
        inputs = (wstate.obs, pending, *state, *tstate, offsets)
        step = self._graphs.get(key)
        if step is None:
            step = self._graphs[key] = self._capture(key, inputs)
        out = step(*inputs)
        return RolloutOutput(*(t.clone() for t in out))


class RolloutRunners:
    """The :class:`GraphedRollout` of one agent's three networks, one per batch size and device."""

    def __init__(self, tokenizer, world_model, actor_critic) -> None:
        self.modules = (tokenizer, world_model, actor_critic)
        self._runners: dict[tuple[int, str], GraphedRollout] = {}

    def get(self, batch_size: int, device: torch.device) -> GraphedRollout:
        """The runner for this batch size and device (rebuilt if a parameter's storage moved)."""
        key = (batch_size, str(device))
        runner = self._runners.get(key)
        if runner is None or runner.fingerprint != parameter_fingerprint(*self.modules):
            runner = self._runners[key] = GraphedRollout(*self.modules, batch_size, device)
        return runner

    def clear(self) -> None:
        self._runners.clear()


def imagine_rollout(
    batch,
    tokenizer,
    world_model,
    actor_critic,
    horizon: int | None = None,
    seed: int = 0,
    runner: GraphedRollout | None = None,
    row_offset: int = 0,
    bf16_world_model: bool | None = None,
) -> ImaginationOutput:
    """:func:`deltairis.rl.imagination.imagine` computed as rollout body + batched policy forward.

    ``runner``: replay the body from CUDA graphs; None runs the same body eagerly (any device).
    ``bf16_world_model`` (default: the config's ``imagination_bf16``, off): see :func:`rollout_body`.
    """
    if bf16_world_model is None:
        bf16_world_model = actor_critic.config.imagination_bf16
    if runner is not None and torch.is_autocast_enabled(batch.obs.device.type):
        return imagine(batch, tokenizer, world_model, actor_critic, horizon, seed, None, row_offset)
    obs, act, mask = batch.obs, batch.act, batch.mask_padding
    ac = actor_critic
    cfg = ac.config
    horizon = cfg.horizon if horizon is None else horizon
    if obs.size(1) < 1:
        raise ValueError("imagination needs at least one real frame")
    cache = runner.cache if runner is not None else None
    wstate = world_model_burn_in(tokenizer, world_model, obs, act, seed, cache, row_offset)
    burn_mask = mask[:, :-1] if cfg.exclude_padding else None
    with torch.no_grad():
        state = ac.model.burn_in(obs[:, :-1], burn_mask)
        tstate = ac.target_model.burn_in(obs[:, :-1], burn_mask)
    policy_offset = stream_base(seed) + POLICY_STREAM
    if runner is not None:
        roll = runner.run(wstate, state, tstate, policy_offset, horizon, bf16_world_model)
    else:
        offsets = torch.tensor([int(wstate.offset), policy_offset], dtype=torch.int64, device=obs.device)
        roll = rollout_body(
            tokenizer,
            world_model,
            ac,
            wstate.cache,
            wstate.obs,
            wstate.pending,
            state,
            tstate,
            offsets,
            horizon,
            row_offset,
            bf16_world_model,
        )
    logits, value_logits = policy_forward(ac.model, roll.obs[:, :horizon], state)
    return ImaginationOutput(
        obs=roll.obs,
        act=roll.act,
        logits=logits,
        value_logits=value_logits,
        target_values=roll.target_values,
        rew=roll.rew,
        end=roll.end,
    )
