"""Imagination: the actor-critic acting in the world-model env (docs/algorithm.md, sections 4 and 5).

:func:`imagine` resets a :class:`~deltairis.rl.world_model_env.WorldModelEnv` on real segments (the
burn-in), burns both LSTMs in on the same frames, then runs :func:`imagination_steps`, the one loop of the
imagination: for each of the H steps the online policy (with grad), the target critic, the action
sample and the env's step. The whole-rollout CUDA graph (:mod:`deltairis.rl.rollout`) captures this same
loop without grad.

Random streams: an imagination with seed ``s`` draws the world model's samples from offsets
``stream_base(s) + k`` (the env's counter) and the policy's from ``stream_base(s) + POLICY_STREAM + i`` of
the fixed sampler seed :data:`~deltairis.seeding.SAMPLER_SEED` (the layout is declared in
:mod:`deltairis.seeding`). A slice of a batch (a rank of a distributed run) passes ``row_offset``, the
global index of its first row, and samples what the whole batch samples for those rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from deltairis import ops
from deltairis.rl.world_model_env import WorldModelEnv
from deltairis.seeding import POLICY_STREAM, SAMPLER_SEED, stream_base

State = tuple[torch.Tensor, torch.Tensor]


class ImaginationOutput(NamedTuple):
    obs: torch.Tensor  # (B, H+1, 3, 64, 64) imagined frames (the first is the last real frame)
    act: torch.Tensor  # (B, H)
    logits: torch.Tensor | None  # (B, H, A) online policy logits (with grad; None from a no-grad rollout)
    value_logits: torch.Tensor | None  # (B, H, K or 1) online critic (with grad; None likewise)
    target_values: torch.Tensor  # (B, H+1) target critic values (no grad)
    rew: torch.Tensor  # (B, H)
    end: torch.Tensor  # (B, H) {0, 1}


def begin_imagination(
    batch, env: WorldModelEnv, actor_critic, horizon: int | None, seed: int, row_offset: int
) -> tuple[int, State, State]:
    """Reset ``env`` on ``batch`` and burn both LSTMs in: (horizon, online state, target state)."""
    obs, act, mask = batch.obs, batch.act, batch.mask_padding
    ac = actor_critic
    cfg = ac.config
    horizon = cfg.horizon if horizon is None else int(horizon)
    if horizon < 1:
        raise ValueError(f"imagination horizon must be >= 1, got {horizon}")
    if obs.size(1) < 1:
        raise ValueError("imagination needs at least one real frame")
    env.reset(obs, act, seed=seed, row_offset=row_offset)
    # The reference feeds every burn-in frame to both LSTMs, zero padding frames included.
    burn_mask = mask[:, :-1] if cfg.exclude_padding else None
    with torch.no_grad():
        state = ac.model.burn_in(obs[:, :-1], burn_mask)
        tstate = ac.target_model.burn_in(obs[:, :-1], burn_mask)
    return horizon, state, tstate


def imagination_steps(
    env: WorldModelEnv,
    actor_critic,
    state: State,
    tstate: State,
    horizon: int,
    policy_offset: int | torch.Tensor,
    *,
    policy_outputs: bool = True,
) -> ImaginationOutput:
    """``horizon`` steps of the online policy in ``env`` from its current frame (the step loop, written once).

    ``policy_offset``: the policy sampler's next stream (a Python int, or a one-element device tensor
    advanced in place, as a captured graph needs). ``policy_outputs=False`` leaves the logits and values
    out (the whole-rollout graph recomputes them with grad).
    """
    ac = actor_critic
    temperature = ac.config.temperature
    row_offset = env.state.row_offset
    obs = env.obs
    frames, actions, logits, values, tvalues, rews, ends = [obs], [], [], [], [], [], []
    for _ in range(horizon):
        out = ac.model(obs, state)
        state = out.state
        with torch.no_grad():
            tout = ac.target_model(obs, tstate)
            tstate = tout.state
            tvalues.append(ac.target_model.value(tout.value_logits))
            a = ops.sample_categorical(
                out.logits.detach(),
                temperature=temperature,
                seed=SAMPLER_SEED,
                offset=policy_offset,
                row_offset=row_offset,
            )
            policy_offset += 1  # in place for a device tensor
        obs, r, e = env.step(a)
        frames.append(obs)
        actions.append(a)
        rews.append(r)
        ends.append(e)
        if policy_outputs:
            logits.append(out.logits)
            values.append(out.value_logits)
    with torch.no_grad():
        tvalues.append(ac.target_model.value(ac.target_model(obs, tstate).value_logits))
    return ImaginationOutput(
        obs=torch.stack(frames, 1),
        act=torch.stack(actions, 1),
        logits=torch.stack(logits, 1) if policy_outputs else None,
        value_logits=torch.stack(values, 1) if policy_outputs else None,
        target_values=torch.stack(tvalues, 1),
        rew=torch.stack(rews, 1),
        end=torch.stack(ends, 1),
    )


def imagine(
    batch,
    env: WorldModelEnv,
    actor_critic,
    horizon: int | None = None,
    seed: int = 0,
    row_offset: int = 0,
) -> ImaginationOutput:
    """Burn in on the real segments of ``batch``, then imagine ``horizon`` steps (default: the config's)
    with the online policy in ``env`` (eager, or replaying the env's step graphs if it has them).

    ``row_offset``: the global index of ``batch``'s first row when it is a slice of a larger batch.
    """
    horizon, state, tstate = begin_imagination(batch, env, actor_critic, horizon, seed, row_offset)
    policy_offset = stream_base(seed) + POLICY_STREAM
    return imagination_steps(env, actor_critic, state, tstate, horizon, policy_offset)


__all__ = ["ImaginationOutput", "begin_imagination", "imagination_steps", "imagine"]
