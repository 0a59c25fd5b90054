"""Imagination: roll the world model forward with a KV cache (docs/algorithm.md, sections 4 and 5).

Everything stays on the device: token sampling uses counter-based random streams identified by
(seed, offset), and the cache position is a Python int, so no step reads a value back from the device.

Random streams: an imagination call with seed ``s`` draws world-model samples from offsets
``stream_base(s) + k`` and policy samples from ``stream_base(s) + POLICY_STREAM + i`` of the fixed
sampler seed :data:`~deltairis.seeding.SAMPLER_SEED` (the layout is declared in
:mod:`deltairis.seeding`). Keeping the sampler seed fixed and varying only offsets lets a captured CUDA
graph (:mod:`deltairis.rl.graphs`) read the offset from a device tensor and reproduce the eager path's
samples exactly. The caller owns such a graph runner and passes it in (``runner=``).

Slices of a batch (distributed training): ``row_offset`` is the global index of the slice's first row.
Every sampler call passes it on (:func:`deltairis.ops.sample_categorical`), so a rank imagining from
rows ``[a, b)`` of the global batch draws the same random words, hence the same tokens, rewards, ends and
actions, as rows ``[a, b)`` of the single-process imagination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from deltairis import ops
from deltairis.models.kv_cache import KVCache
from deltairis.seeding import POLICY_STREAM, SAMPLER_SEED, stream_base


class ImaginationOutput(NamedTuple):
    obs: torch.Tensor  # (B, H+1, 3, 64, 64) imagined frames (the first is the last real frame)
    act: torch.Tensor  # (B, H)
    logits: torch.Tensor  # (B, H, A) online policy logits (with grad)
    value_logits: torch.Tensor  # (B, H, K or 1) online critic (with grad)
    target_values: torch.Tensor  # (B, H+1) target critic values (no grad)
    rew: torch.Tensor  # (B, H)
    end: torch.Tensor  # (B, H) {0, 1}


@dataclass
class WorldModelState:
    """Explicit rollout state of the world model, passed in and out of every step."""

    cache: KVCache
    obs: torch.Tensor  # (B, 3, H, W) current frame
    pending: torch.Tensor | None  # (B, 1, E) embedding of the last Δ-token, not yet fed
    seed: int
    offset: int | torch.Tensor  # next counter stream of the sampler (a device tensor under CUDA graphs)
    row_offset: int = 0  # global index of the first row (a slice of a larger batch)


@torch.no_grad()
def world_model_burn_in(
    tokenizer,
    world_model,
    obs: torch.Tensor,
    act: torch.Tensor,
    seed: int,
    cache: KVCache | None = None,
    row_offset: int = 0,
) -> WorldModelState:
    """Warm the cache on the T-1 real transitions of ``obs`` (B, T, ...); the last frame becomes current."""
    b = obs.size(0)
    if cache is None:
        cache = world_model.transformer.empty_cache(b, obs.device)
    else:
        cache.reset()
    pending = None
    if obs.size(1) > 1:
        tokens = tokenizer.encode_tokens(obs[:, :-1], act[:, :-1], obs[:, 1:])  # (B, T-1, K)
        seq = world_model.embed_sequence(obs[:, :-1], act[:, :-1], tokens)  # (B, (T-1)*(K+2), E)
        if seq.size(1) > cache.max_tokens:
            raise ValueError(f"burn-in of {seq.size(1)} tokens exceeds the cache ({cache.max_tokens})")
        world_model.transformer(seq[:, :-1], cache)
        pending = seq[:, -1:]
    return WorldModelState(cache, obs[:, -1], pending, SAMPLER_SEED, stream_base(seed), row_offset)


@torch.no_grad()
def world_model_step(
    tokenizer, world_model, state: WorldModelState, act: torch.Tensor
) -> tuple[WorldModelState, torch.Tensor, torch.Tensor]:
    """One imagined step from ``state.obs`` with actions (B,): returns (state, reward (B,), end (B,))."""
    wm = world_model
    cfg = wm.config
    block = cfg.transformer.tokens_per_block
    cache, pending, offset = state.cache, state.pending, state.offset
    if (
        cache.remaining <= block
    ):  # at most one block left (the reference's rule): restart from the current frame
        cache.reset()
        pending = None
    frame = wm.embed_frames(state.obs.unsqueeze(1))  # (B, 1, E)
    a = wm.act_emb(act).unsqueeze(1)  # (B, 1, E)
    x = torch.cat((frame, a) if pending is None else (pending, frame, a), dim=1)
    h = wm.transformer(x, cache)[:, -1:]  # (B, 1, E) output at the action position
    rew_logits = wm.head_rewards(h)[:, 0]
    end_logits = wm.head_ends(h)[:, 0]
    tokens = []
    k = cfg.tokens_per_frame
    for j in range(k):
        logits = wm.head_latents(h)[:, 0]  # (B, V)
        tok = ops.sample_categorical(logits, seed=state.seed, offset=offset, row_offset=state.row_offset)
        offset += 1
        tokens.append(tok)
        emb = wm.latents_emb(tok).unsqueeze(1)  # (B, 1, E)
        if j < k - 1:
            h = wm.transformer(emb, cache)
        else:
            pending = emb
    tokens_t = torch.stack(tokens, dim=1).unsqueeze(1)  # (B, 1, K)
    next_obs = tokenizer.decode_tokens(state.obs.unsqueeze(1), act.unsqueeze(1), tokens_t, clamp=True)[:, 0]
    if cfg.two_hot_rewards:
        rew = ops.twohot_expectation(rew_logits, low=cfg.bucket_low, high=cfg.bucket_high)
    else:
        rew = (
            ops.sample_categorical(
                rew_logits, seed=state.seed, offset=offset, row_offset=state.row_offset
            ).float()
            - 1.0
        )
        offset += 1
    end = ops.sample_categorical(end_logits, seed=state.seed, offset=offset, row_offset=state.row_offset)
    offset += 1
    new = WorldModelState(cache, next_obs.float(), pending, state.seed, offset, state.row_offset)
    return new, rew.float(), end


def imagine(
    batch,
    tokenizer,
    world_model,
    actor_critic,
    horizon: int | None = None,
    seed: int = 0,
    runner: Any | None = None,
    row_offset: int = 0,
) -> ImaginationOutput:
    """Burn in on the real segment, then imagine ``horizon`` steps (default: the config's) with the
    online policy.

    ``runner``: a :class:`deltairis.rl.graphs.GraphedWorldModelStep` for this batch size and device
    (the caller owns it, e.g. through :class:`deltairis.rl.graphs.GraphRunners`); the world-model step
    is then replayed from its CUDA graphs, drawing the same samples as the eager step.

    ``row_offset``: the global index of ``batch``'s first row when it is a slice of a larger batch (each
    rank of a distributed run imagines from its slice and samples what the whole batch samples there).
    """
    obs, act, mask = batch.obs, batch.act, batch.mask_padding
    ac = actor_critic
    cfg = ac.config
    horizon = cfg.horizon if horizon is None else horizon
    if obs.size(1) < 1:
        raise ValueError("imagination needs at least one real frame")
    step_fn = world_model_step
    cache = None
    if runner is not None:
        step_fn, cache = runner.step, runner.cache
    wstate = world_model_burn_in(tokenizer, world_model, obs, act, seed, cache, row_offset)
    # The reference feeds every burn-in frame to both LSTMs, zero padding frames included.
    burn_mask = mask[:, :-1] if cfg.exclude_padding else None
    with torch.no_grad():
        state = ac.model.burn_in(obs[:, :-1], burn_mask)
        tstate = ac.target_model.burn_in(obs[:, :-1], burn_mask)
    policy_offset = stream_base(seed) + POLICY_STREAM
    frames, actions, logits_l, values_l, tvalues, rews, ends = [wstate.obs], [], [], [], [], [], []
    for _ in range(horizon):
        out = ac.model(wstate.obs, state)
        state = out.state
        with torch.no_grad():
            tout = ac.target_model(wstate.obs, tstate)
            tstate = tout.state
            tvalues.append(ac.target_model.value(tout.value_logits))
            a = ops.sample_categorical(
                out.logits.detach(),
                temperature=cfg.temperature,
                seed=SAMPLER_SEED,
                offset=policy_offset,
                row_offset=row_offset,
            )
            policy_offset += 1
        wstate, r, e = step_fn(tokenizer, world_model, wstate, a)
        frames.append(wstate.obs)
        actions.append(a)
        logits_l.append(out.logits)
        values_l.append(out.value_logits)
        rews.append(r)
        ends.append(e)
    with torch.no_grad():
        tout = ac.target_model(wstate.obs, tstate)
        tvalues.append(ac.target_model.value(tout.value_logits))
    return ImaginationOutput(
        obs=torch.stack(frames, 1),
        act=torch.stack(actions, 1),
        logits=torch.stack(logits_l, 1),
        value_logits=torch.stack(values_l, 1),
        target_values=torch.stack(tvalues, 1),
        rew=torch.stack(rews, 1),
        end=torch.stack(ends, 1),
    )
