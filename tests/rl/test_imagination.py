from __future__ import annotations

import pytest
import torch
from models.helpers import make_batch

from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.rl.imagination import imagine
from deltairis.rl.world_model_env import WorldModelEnv
from deltairis.seeding import stream_base


def _env(agent: Agent, **kw) -> WorldModelEnv:
    return WorldModelEnv(agent.tokenizer, agent.world_model, **kw)


def _rollout(agent: Agent, batch, tensor_offset: bool, steps: int = 4):
    env = _env(agent)
    env.reset(batch.obs, batch.act, seed=7)
    if tensor_offset:
        env.state.offset = torch.tensor([env.state.offset], dtype=torch.int64)
    frames, rews, ends = [], [], []
    for i in range(steps):
        act = torch.full((batch.obs.size(0),), i % agent.config.num_actions, dtype=torch.long)
        obs, r, e = env.step(act)
        frames.append(obs)
        rews.append(r)
        ends.append(e)
    return torch.stack(frames), torch.stack(rews), torch.stack(ends), env.state


@pytest.mark.parametrize("preset", ["tiny", "atari"])
def test_device_offsets_reproduce_host_offsets(preset: str) -> None:
    """The CUDA-graph path feeds the sampler offset as a device tensor; it must draw the same samples."""
    cfg = make_agent_config(preset)
    if preset == "atari":  # keep it small: Atari's 3-class rewards are sampled, which is what we test
        import dataclasses

        cfg = dataclasses.replace(cfg, tokenizer=make_agent_config("tiny", cfg.num_actions).tokenizer)
        cfg = dataclasses.replace(
            cfg,
            world_model=dataclasses.replace(
                make_agent_config("tiny", cfg.num_actions).world_model, two_hot_rewards=False
            ),
        )
    agent = Agent(cfg).eval()
    batch = make_batch(2, 3, cfg.num_actions)
    f1, r1, e1, s1 = _rollout(agent, batch, tensor_offset=False)
    f2, r2, e2, s2 = _rollout(agent, batch, tensor_offset=True)
    assert torch.equal(f1, f2) and torch.equal(r1, r2) and torch.equal(e1, e2)
    assert int(s2.offset) == s1.offset
    if preset == "atari":
        assert set(r1.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_streams_of_different_seeds_differ() -> None:
    assert stream_base(1) != stream_base(2)
    with pytest.raises(ValueError, match="non-negative"):
        stream_base(-1)
    agent = Agent(make_agent_config("tiny")).eval()
    batch = make_batch(4, 6, 5)
    a = imagine(batch, _env(agent), agent.actor_critic, seed=1, horizon=3)
    b = imagine(batch, _env(agent), agent.actor_critic, seed=2, horizon=3)
    assert not torch.equal(a.obs, b.obs)


def _assert_rows_equal(part, full, rows: slice) -> None:
    assert torch.equal(part.act, full.act[rows])
    assert torch.equal(part.end, full.end[rows])
    torch.testing.assert_close(part.obs, full.obs[rows], rtol=0, atol=1.5 / 255)
    torch.testing.assert_close(part.rew, full.rew[rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part.logits, full.logits[rows], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "rows"), [(5, slice(2, 5)), (5, slice(0, 2)), (7, slice(3, 4))])
def test_slice_with_row_offset_imagines_the_rows_of_the_full_batch(b: int, rows: slice, dtype) -> None:
    """A rank imagining from rows [a, b) with row_offset=a draws what the whole batch draws there.

    Imagined frames are decoded, rounded to 1/255 and fed back, so in float32 the last-bit differences
    between a batch of b rows and a slice (different matmul blockings) can flip a rounding and grow over
    the steps; the draws themselves (Δ-tokens, actions, ends) must not differ. In float64 the whole
    rollout must match the full batch's rows.
    """
    torch.manual_seed(0)
    agent = Agent(make_agent_config("tiny")).eval().to(dtype)
    batch = make_batch(b, 4, agent.config.num_actions, pad_left=2, seed=3)
    batch.obs = batch.obs.to(dtype)
    ac = agent.actor_critic
    full = imagine(batch, _env(agent), ac, horizon=4, seed=5)
    part = imagine(batch.rows(rows), _env(agent), ac, horizon=4, seed=5, row_offset=rows.start)
    assert part.obs.dtype == dtype
    if dtype == torch.float64:
        _assert_rows_equal(part, full, rows)
    else:
        assert torch.equal(part.act, full.act[rows]) and torch.equal(part.end, full.end[rows])
        # the first imagined frame comes from the real frames: no fed-back rounding yet
        torch.testing.assert_close(part.obs[:, :2], full.obs[rows, :2], rtol=0, atol=1.5 / 255)
    if rows.start:  # without the offset the slice draws other words
        plain = imagine(batch.rows(rows), _env(agent), ac, horizon=4, seed=5)
        assert not torch.equal(plain.act, full.act[rows])


@pytest.mark.gpu
def test_cuda_graph_slice_with_row_offset_equals_full_eager() -> None:
    torch.manual_seed(0)
    agent = Agent(make_agent_config("tiny")).cuda()
    batch = make_batch(9, 6, agent.config.num_actions).to("cuda")
    rows = slice(4, 9)
    ac = agent.actor_critic
    full = imagine(batch, _env(agent), ac, ac.config.horizon, seed=1)
    graphed = _env(agent, cuda_graphs=True)
    part = imagine(batch.rows(rows), graphed, ac, ac.config.horizon, seed=1, row_offset=4)
    _assert_rows_equal(part, full, rows)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["tiny", "crafter"])
def test_cuda_graph_imagination_equals_eager(preset: str) -> None:
    torch.manual_seed(0)
    agent = Agent(make_agent_config(preset)).cuda()
    batch = make_batch(8, 6, agent.config.num_actions).to("cuda")
    ac = agent.actor_critic
    opt = torch.optim.Adam(agent.world_model.parameters(), lr=1e-3)
    graphed_env = _env(agent, cuda_graphs=True)  # owned by the caller, with its graphs
    for it in range(2):  # second round: after an in-place optimizer update, the graphs see new weights
        graphed = imagine(batch, graphed_env, ac, ac.config.horizon, seed=it)
        eager = imagine(batch, _env(agent), ac, ac.config.horizon, seed=it)
        assert torch.equal(graphed.act, eager.act)
        torch.testing.assert_close(graphed.obs, eager.obs, rtol=0, atol=1.5 / 255)
        torch.testing.assert_close(graphed.rew, eager.rew, rtol=1e-4, atol=1e-4)
        assert torch.equal(graphed.end, eager.end)
        loss = agent.world_model.compute_loss(batch, agent.tokenizer).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
