"""How often bf16 imagination (``actor_critic.imagination_bf16``, opt-in) samples other Δ-tokens and actions.

Runs the rollout body (:func:`deltairis.rl.rollout.rollout_body`) twice from the same burn-in and the same
random words, in a world-model env stepping in float32 and one stepping under bf16 autocast, records
every categorical sample (per step: the action, the K Δ-tokens, the sampled reward if any, the end), and
reports

* ``first_step_token_mismatch``: the fraction of the first imagined step's Δ-tokens that differ (same
  history, same action; only the world model's precision differs);
* ``token_mismatch_by_step`` / ``action_mismatch_by_step``: the fraction of differing samples at each
  imagined step (a difference propagates: later steps condition on different tokens and frames);
* ``frame_mean_abs_diff``: mean |frame_bf16 - frame_fp32| over the rollout, in grey levels.

A numerics measurement, not a speed one. It uses freshly initialised weights unless ``--checkpoint``
gives an agent state dict; trained models have sharper logits, so their mismatch rates will differ. On CPU
the autocast is CPU bf16; on CUDA, CUDA bf16.

    python benchmarks/bf16_imagination.py --preset tiny --batch 16 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Iterator

import torch

from deltairis import ops
from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.data import Batch
from deltairis.rl.imagination import begin_imagination
from deltairis.rl.rollout import rollout_body
from deltairis.rl.world_model_env import WorldModelEnv
from deltairis.seeding import POLICY_STREAM, stream_base


@contextlib.contextmanager
def recording_samples() -> Iterator[list[torch.Tensor]]:
    """Record the output of every ops.sample_categorical call (the imagination calls it through ``ops``)."""
    calls: list[torch.Tensor] = []
    original = ops.sample_categorical

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.clone())
        return out

    ops.sample_categorical = wrapped
    try:
        yield calls
    finally:
        ops.sample_categorical = original


def make_batch(b: int, t: int, num_actions: int, seed: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.rand(b, t, 3, 64, 64, generator=g),
        act=torch.randint(0, num_actions, (b, t), generator=g),
        rew=torch.zeros(b, t),
        end=torch.zeros(b, t, dtype=torch.uint8),
        trunc=torch.zeros(b, t, dtype=torch.uint8),
        mask_padding=torch.ones(b, t, dtype=torch.bool),
        episode_id=torch.zeros(b, dtype=torch.long),
        start=torch.zeros(b, dtype=torch.long),
        stop=torch.full((b,), t, dtype=torch.long),
    ).to(device)


def rollout(agent: Agent, batch: Batch, horizon: int, seed: int, bf16: bool):
    ac = agent.actor_critic
    env = WorldModelEnv(agent.tokenizer, agent.world_model, bf16=bf16)
    horizon, state, tstate = begin_imagination(batch, env, ac, horizon, seed, row_offset=0)
    offsets = torch.tensor(
        [int(env.state.offset), stream_base(seed) + POLICY_STREAM], dtype=torch.int64, device=batch.obs.device
    )
    with recording_samples() as calls:
        out = rollout_body(env, ac, state, tstate, offsets, horizon)
    return out, calls


def measure(preset: str, batch_size: int, horizon: int | None, seeds: int, device: torch.device, checkpoint):
    cfg = make_agent_config(preset)
    if horizon is not None:
        cfg = dataclasses.replace(cfg, actor_critic=dataclasses.replace(cfg.actor_critic, horizon=horizon))
    torch.manual_seed(0)
    agent = Agent(cfg)
    if checkpoint:
        agent.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    agent = agent.to(device).eval()
    h = cfg.actor_critic.horizon
    k = cfg.world_model.tokens_per_frame
    per_step = k + 2 + (0 if cfg.world_model.two_hot_rewards else 1)  # action, K tokens, [reward], end
    tok_mis = torch.zeros(h)
    act_mis = torch.zeros(h)
    first_tok = 0.0
    frame_diff = 0.0
    for s in range(seeds):
        batch = make_batch(batch_size, cfg.actor_critic.burn_in + 1, cfg.num_actions, s, device)
        ref, ref_calls = rollout(agent, batch, h, s, bf16=False)
        low, low_calls = rollout(agent, batch, h, s, bf16=True)
        assert len(ref_calls) == len(low_calls) == h * per_step
        for i in range(h):
            r = ref_calls[i * per_step : (i + 1) * per_step]
            q = low_calls[i * per_step : (i + 1) * per_step]
            act_mis[i] += (r[0] != q[0]).float().mean().item() / seeds
            toks = torch.stack([(a != b).float() for a, b in zip(r[1 : 1 + k], q[1 : 1 + k])])
            tok_mis[i] += toks.mean().item() / seeds
            if i == 0:
                first_tok += toks.mean().item() / seeds
        frame_diff += (low.obs - ref.obs).abs().mean().item() * 255 / seeds
    return {
        "preset": preset,
        "device": str(device),
        "batch": batch_size,
        "horizon": h,
        "seeds": seeds,
        "weights": checkpoint or "fresh initialisation",
        "first_step_token_mismatch": first_tok,
        "token_mismatch_by_step": [round(x, 4) for x in tok_mis.tolist()],
        "action_mismatch_by_step": [round(x, 4) for x in act_mis.tolist()],
        "token_mismatch_mean": tok_mis.mean().item(),
        "action_mismatch_mean": act_mis.mean().item(),
        "frame_mean_abs_diff": frame_diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", default=None, help="an agent state dict (torch.save(agent.state_dict()))")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    res = measure(
        args.preset, args.batch, args.horizon, args.seeds, torch.device(args.device), args.checkpoint
    )
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
