"""The rollout body + batched policy forward (rl/rollout.py) against the eager imagination.

On CPU the body runs eagerly on tensor offsets (what the CUDA graph replays): frames, actions, rewards,
ends and target values must be exactly the eager imagination's, the logits, loss and gradients equal to
tolerance. The capture/replay tests need CUDA.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from models.helpers import make_batch

from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.rl.imagination import imagine
from deltairis.rl.losses import ActorCriticLoss, actor_critic_loss
from deltairis.rl.rollout import RolloutRunners, imagine_rollout
from deltairis.rl.world_model_env import WorldModelEnv


def _env(agent: Agent, **kw) -> WorldModelEnv:
    return WorldModelEnv(agent.tokenizer, agent.world_model, **kw)


@functools.cache
def _agent(horizon: int = 3, two_hot_rewards: bool = True) -> Agent:
    """Built once per (horizon, reward head) for this module; the tests only read it (and its grads)."""
    cfg = make_agent_config("tiny")
    cfg = dataclasses.replace(
        cfg,
        actor_critic=dataclasses.replace(cfg.actor_critic, horizon=horizon),
        world_model=dataclasses.replace(cfg.world_model, two_hot_rewards=two_hot_rewards),
    )
    torch.manual_seed(0)
    agent = Agent(cfg).eval()
    agent.actor_critic.train()
    with torch.no_grad():  # a critic that is not all zeros, and a target that differs from the online one
        for p in agent.actor_critic.model.critic_linear.parameters():
            p.normal_(0, 0.1)
        for p in agent.actor_critic.target_model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return agent


def _assert_same_imagination(got, want) -> None:
    assert torch.equal(got.obs, want.obs)
    assert torch.equal(got.act, want.act)
    assert torch.equal(got.rew, want.rew)
    assert torch.equal(got.end, want.end)
    assert torch.equal(got.target_values, want.target_values)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.value_logits, want.value_logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("b", "t", "horizon", "two_hot", "seed", "pad"),
    [(3, 4, 3, True, 5, 2), (2, 1, 3, False, 11, 1)],
)
def test_rollout_body_equals_eager_imagination(b, t, horizon, two_hot, seed, pad) -> None:
    agent = _agent(horizon, two_hot)
    batch = make_batch(b, t, agent.config.num_actions, pad_left=pad, seed=seed)
    args = (batch, _env(agent), agent.actor_critic, horizon, seed)
    _assert_same_imagination(imagine_rollout(*args), imagine(*args))


def test_rollout_body_keeps_the_row_offset() -> None:
    agent = _agent()
    batch = make_batch(4, 2, agent.config.num_actions, seed=2)
    full = imagine(batch, _env(agent), agent.actor_critic, 2, 4)
    rows = slice(2, 4)
    part = imagine_rollout(batch.rows(rows), _env(agent), agent.actor_critic, 2, 4, row_offset=2)
    assert torch.equal(part.act, full.act[rows])
    assert torch.equal(part.end, full.end[rows])
    torch.testing.assert_close(part.obs, full.obs[rows], rtol=0, atol=1.5 / 255)


def test_rollout_loss_and_gradients_equal_eager() -> None:
    agent = _agent()
    ac = agent.actor_critic
    batch = make_batch(2, ac.config.burn_in + 1, agent.config.num_actions, pad_left=2, seed=9)
    results = []
    for rollout in (False, True):
        ac.zero_grad(set_to_none=True)
        out = actor_critic_loss(ac, batch, _env(agent), seed=3, rollout=rollout)
        out.loss.backward()
        grads = [p.grad.clone() for p in ac.model.parameters()]
        results.append((out, grads))
    (eager, g0), (fast, g1) = results
    torch.testing.assert_close(fast.loss, eager.loss, rtol=1e-5, atol=1e-6)
    for k in eager.metrics:
        torch.testing.assert_close(fast.metrics[k], eager.metrics[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in g1)


def test_loss_object_switch() -> None:
    agent = _agent()
    ac = agent.actor_critic
    batch = make_batch(2, ac.config.burn_in + 1, agent.config.num_actions, seed=1)
    plain = ActorCriticLoss(ac, agent.tokenizer, agent.world_model)
    assert not plain.graph_rollout  # the eager imagination is the default
    fast = ActorCriticLoss(ac, agent.tokenizer, agent.world_model, graph_rollout=True)
    a, b = plain(batch, 7), fast(batch, 7)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)


# -- GPU ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 convolutions and matmuls: the batched CNN of the recompute may pick other cuDNN algorithms
    than the per-step one, and TF32's rounding would hide a real difference behind a loose tolerance."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("preset", ["tiny", "crafter"])
def test_graphed_rollout_equals_eager_gpu(preset: str) -> None:
    torch.manual_seed(0)
    agent = Agent(make_agent_config(preset)).cuda().eval()
    ac = agent.actor_critic
    ac.train()
    batch = make_batch(8, ac.config.burn_in + 1, agent.config.num_actions, pad_left=2).to("cuda")
    env = _env(agent)
    runners = RolloutRunners(env, ac)
    opt = torch.optim.Adam(ac.model.parameters(), lr=1e-3)
    for it in range(3):  # later rounds: replays after in-place optimizer and target updates
        runner = runners.get(batch.obs.size(0), batch.obs.device)
        graphed = imagine_rollout(batch, env, ac, ac.config.horizon, seed=it, runner=runner)
        # the env's state is left at the rollout's end, as after an eager rollout
        assert env.state.cache.size == _env_after_eager(agent, batch, it).cache.size
        assert torch.equal(env.obs, graphed.obs[:, -1])
        eager = imagine(batch, _env(agent), ac, ac.config.horizon, seed=it)
        assert torch.equal(graphed.act, eager.act)
        assert torch.equal(graphed.end, eager.end)
        torch.testing.assert_close(graphed.obs, eager.obs, rtol=0, atol=1.5 / 255)
        torch.testing.assert_close(graphed.rew, eager.rew, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(graphed.target_values, eager.target_values, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(graphed.logits, eager.logits, rtol=1e-3, atol=1e-4)
        loss = actor_critic_loss(ac, batch, _env(agent), seed=it).loss
        opt.zero_grad()
        loss.backward()
        ac.update_target()
        opt.step()
    assert len(runners._runners) == 1  # captured once, replayed after the updates


def _env_after_eager(agent: Agent, batch, seed: int):
    env = _env(agent)
    imagine(batch, env, agent.actor_critic, agent.actor_critic.config.horizon, seed=seed)
    return env.state


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
def test_graphed_rollout_loss_and_gradients_gpu() -> None:
    torch.manual_seed(0)
    agent = Agent(make_agent_config("tiny")).cuda().eval()
    ac = agent.actor_critic
    batch = make_batch(6, ac.config.burn_in + 1, agent.config.num_actions).to("cuda")
    grads, losses = [], []
    for graph_rollout in (False, True):
        loss_fn = ActorCriticLoss(ac, agent.tokenizer, agent.world_model, graph_rollout=graph_rollout)
        ac.zero_grad(set_to_none=True)
        out = loss_fn(batch, 3)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append([p.grad.clone() for p in ac.model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_bf16_world_model_is_opt_in_and_needs_the_rollout_path() -> None:
    agent = _agent()
    ac = agent.actor_critic
    batch = make_batch(2, 2, agent.config.num_actions, seed=4)
    low = imagine_rollout(batch, _env(agent, bf16=True), ac, 2, 1)
    ref = imagine_rollout(batch, _env(agent), ac, 2, 1)  # the default: float32
    assert low.obs.dtype == ref.obs.dtype == torch.float32 and low.obs.shape == ref.obs.shape
    assert not torch.equal(low.obs[:, 1:], ref.obs[:, 1:])  # the decoder ran in bf16
    bf16_cfg = dataclasses.replace(ac.config, imagination_bf16=True)
    object.__setattr__(ac, "config", bf16_cfg)
    try:
        with pytest.raises(ValueError, match="cuda_graph_rollout"):
            ActorCriticLoss(ac, agent.tokenizer, agent.world_model)
        loss_fn = ActorCriticLoss(ac, agent.tokenizer, agent.world_model, graph_rollout=True)
        assert loss_fn.graph_rollout and loss_fn.env.bf16  # the config's switch reaches the env
        same = actor_critic_loss(ac, batch, _env(agent, bf16=True), 1, rollout=True)
        torch.testing.assert_close(loss_fn(batch, 1).loss, same.loss)
    finally:
        object.__setattr__(ac, "config", dataclasses.replace(bf16_cfg, imagination_bf16=False))
