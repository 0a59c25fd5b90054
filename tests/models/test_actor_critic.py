from __future__ import annotations

import dataclasses

import pytest
import torch

import deltairis.rl.losses as acl
from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.models.actor_critic import ActorCritic
from deltairis.rl.losses import actor_critic_loss
from deltairis.rl.imagination import imagine
from deltairis.rl.world_model_env import WorldModelEnv
from deltairis.rl.policy import policy_step

from .helpers import make_batch


@pytest.fixture(scope="module")
def agent() -> Agent:
    torch.manual_seed(0)
    return Agent(make_agent_config("tiny"))


def _env(agent: Agent) -> WorldModelEnv:
    return WorldModelEnv(agent.tokenizer, agent.world_model)


def test_critic_starts_at_zero_and_target_is_a_frozen_copy(agent: Agent) -> None:
    ac = agent.actor_critic
    assert torch.count_nonzero(ac.model.critic_linear.weight) == 0
    assert all(not p.requires_grad for p in ac.target_model.parameters())
    for p, pt in zip(ac.model.parameters(), ac.target_model.parameters()):
        assert torch.equal(p, pt)


def test_target_ema() -> None:
    ac = ActorCritic(make_agent_config("tiny").actor_critic)
    before = [p.clone() for p in ac.target_model.parameters()]
    with torch.no_grad():
        for p in ac.model.parameters():
            p.add_(torch.randn_like(p))
    ac.update_target()
    for pt, b, p in zip(ac.target_model.parameters(), before, ac.model.parameters()):
        torch.testing.assert_close(pt, 0.995 * b + 0.005 * p)


def test_burn_in_skips_padding_and_reset_rows() -> None:
    ac = ActorCritic(make_agent_config("tiny").actor_critic)
    obs = torch.rand(2, 4, 3, 64, 64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, :2] = False
    s = ac.burn_in(obs, mask)
    s_ref = ac.burn_in(obs[:1, 2:])
    torch.testing.assert_close(s[0][:1], s_ref[0], rtol=1e-5, atol=1e-6)
    s2 = ac.reset_state_rows(s, torch.tensor([True, False]))
    assert torch.count_nonzero(s2[0][0]) == 0 and torch.equal(s2[0][1], s[0][1])


def test_act_is_deterministic_per_stream_and_epsilon() -> None:
    ac = ActorCritic(make_agent_config("tiny").actor_critic)
    obs = torch.rand(64, 3, 64, 64)
    s = ac.initial_state(64, "cpu")
    a1, _ = policy_step(ac, obs, s, seed=1, step=0)
    a2, _ = policy_step(ac, obs, s, seed=1, step=0)
    a3, _ = policy_step(ac, obs, s, seed=2, step=0)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert a1.dtype == torch.int64 and a1.min() >= 0 and a1.max() < 5
    ae, _ = policy_step(ac, obs, s, epsilon=1.0, seed=1, step=0)
    assert not torch.equal(ae, a1)


def test_imagination_shapes_masks_and_no_nan(agent: Agent) -> None:
    batch = make_batch(3, 6, 5, pad_left=3)
    out = imagine(batch, _env(agent), agent.actor_critic, seed=0, horizon=7)
    assert out.obs.shape == (3, 8, 3, 64, 64)
    assert out.act.shape == (3, 7) and out.logits.shape == (3, 7, 5)
    assert out.target_values.shape == (3, 8) and out.rew.shape == (3, 7) and out.end.shape == (3, 7)
    for t in out:
        assert torch.isfinite(t.float()).all()
    # imagined frames are valid pixels
    assert out.obs[:, 1:].min() >= 0 and out.obs[:, 1:].max() <= 1
    torch.testing.assert_close(out.obs[:, 1:] * 255, (out.obs[:, 1:] * 255).round())
    torch.testing.assert_close(out.obs[:, 0], batch.obs[:, -1])
    # same seed -> same rollout
    again = imagine(batch, _env(agent), agent.actor_critic, seed=0, horizon=7)
    assert torch.equal(again.act, out.act) and torch.equal(again.obs, out.obs)


def test_loss_is_masked_after_first_end(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    ac = agent.actor_critic
    batch = make_batch(2, 6, 5)
    real = imagine(batch, _env(agent), ac, seed=0)
    end = torch.zeros_like(real.end)
    end[0, 2] = 1
    fake = real._replace(end=end)
    monkeypatch.setattr(acl, "imagine", lambda *a, **k: fake)
    base = actor_critic_loss(ac, batch, _env(agent), seed=0).loss
    # changing rewards after the end of row 0 (steps > 2 are masked and cut from the returns) changes nothing
    rew = fake.rew.clone()
    rew[0, 3:] += 50.0
    monkeypatch.setattr(acl, "imagine", lambda *a, **k: fake._replace(rew=rew))
    torch.testing.assert_close(
        actor_critic_loss(ac, batch, _env(agent), seed=0).loss, base
    )
    rew[0, 1] += 50.0
    monkeypatch.setattr(acl, "imagine", lambda *a, **k: fake._replace(rew=rew))
    assert not torch.isclose(
        actor_critic_loss(ac, batch, _env(agent), seed=0).loss, base
    )


def test_loss_gradients_reach_only_the_online_model(agent: Agent) -> None:
    agent.zero_grad(set_to_none=True)
    batch = make_batch(2, 6, 5)
    out = actor_critic_loss(agent.actor_critic, batch, _env(agent), seed=3)
    out.loss.backward()
    assert all(p.grad is None for p in agent.tokenizer.parameters())
    assert all(p.grad is None for p in agent.world_model.parameters())
    assert all(p.grad is None for p in agent.actor_critic.target_model.parameters())
    assert agent.actor_critic.model.actor_linear.weight.grad.abs().sum() > 0
    assert agent.actor_critic.model.critic_linear.weight.grad.abs().sum() > 0
    agent.zero_grad(set_to_none=True)


def test_cache_resets_when_full() -> None:
    cfg = make_agent_config("tiny")
    wm_cfg = dataclasses.replace(
        cfg.world_model, transformer=dataclasses.replace(cfg.world_model.transformer, max_blocks=4)
    )
    cfg = dataclasses.replace(cfg, world_model=wm_cfg)
    agent = Agent(cfg).eval()
    b = make_batch(2, 3, 5)
    env = _env(agent)
    env.reset(b.obs, b.act, seed=0)
    assert env.state.cache.size == 11
    sizes = []
    for _ in range(4):
        _, r, e = env.step(torch.zeros(2, dtype=torch.long))
        sizes.append(env.state.cache.size)
    assert sizes == _reference_cache_sizes(max_blocks=4, burn_in_blocks=2, steps=4) == [17, 23, 5, 11]
    assert r.shape == (2,) and e.dtype == torch.int64


def _reference_cache_sizes(max_blocks: int, burn_in_blocks: int, steps: int, block: int = 6) -> list[int]:
    """The reference WorldModelEnv's KV-cache size after each step, restated as a loop.

    Its burn-in feeds every burn-in block plus the current I-token; each step first resets the cache
    when ``(max_tokens - size) / block <= 1``; a step feeds ``a`` (right after the burn-in), ``x, a``
    (right after a reset) or ``Δ4, x, a`` (otherwise), then Δ1..Δ3. Our cache defers the last Δ-token and
    the I-token, so after every step both caches hold the same number of tokens.
    """
    max_tokens = max_blocks * block
    size = burn_in_blocks * block + 1
    first, sizes = True, []
    for _ in range(steps):
        if (max_tokens - size) / block <= 1:
            size, first, fresh = 0, False, True
        else:
            fresh = False
        size += (1 if first else 2 if fresh else 3) + (block - 3)
        first = False
        sizes.append(size)
    return sizes


def test_imagination_never_syncs_with_the_host(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_batch(2, 6, 5)

    import sys

    def guard(name: str):
        original = getattr(torch.Tensor, name)

        def forbidden(self, *args, **kwargs):
            # The only allowed reader is the KV-cache op's range check, which runs for CPU tensors only
            # (it is skipped for CUDA tensors precisely because it would synchronise).
            if sys._getframe(1).f_code.co_name == "_check_kvcache" and not self.is_cuda:
                return original(self, *args, **kwargs)
            raise AssertionError(f"host synchronisation inside imagination: Tensor.{name}")

        return forbidden

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    out = actor_critic_loss(agent.actor_critic, batch, _env(agent), seed=0)
    monkeypatch.undo()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("two_hot_values", [True, False])
def test_both_value_heads_train(two_hot_values: bool) -> None:
    """Two-hot (Crafter) and scalar (Atari, tiny) critics: shapes, finite loss, gradients to both heads,
    and a value prediction that moves towards a constant return when trained on it."""
    torch.manual_seed(0)
    cfg = make_agent_config("tiny")
    ac_cfg = dataclasses.replace(cfg.actor_critic, two_hot_values=two_hot_values)
    agent = Agent(dataclasses.replace(cfg, actor_critic=ac_cfg))
    model = agent.actor_critic.model
    out_dim = ac_cfg.num_value_buckets if two_hot_values else 1
    assert model.critic_linear.out_features == out_dim
    batch = make_batch(3, ac_cfg.burn_in + 1, 5)
    loss = actor_critic_loss(agent.actor_critic, batch, _env(agent), seed=0).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.critic_linear.weight.grad.abs().sum() > 0 and model.actor_linear.weight.grad.abs().sum() > 0
    # The value read-out follows a regression target of 2.0 (two-hot: through symlog buckets).
    obs = torch.rand(4, 3, 64, 64)
    opt = torch.optim.Adam(model.critic_linear.parameters(), lr=0.05)
    for _ in range(100):
        vl = model(obs, model.initial_state(4, "cpu")).value_logits
        if two_hot_values:
            from deltairis.ops.twohot import symlog, two_hot

            target = two_hot(
                symlog(torch.full((4,), 2.0)), ac_cfg.num_value_buckets, ac_cfg.bucket_low, ac_cfg.bucket_high
            )
            value_loss = -(target * torch.log_softmax(vl, -1)).sum(-1).mean()
        else:
            value_loss = (vl.squeeze(-1) - 2.0).pow(2).mean()
        opt.zero_grad()
        value_loss.backward()
        opt.step()
    with torch.no_grad():
        v = model.value(model(obs, model.initial_state(4, "cpu")).value_logits)
    assert torch.allclose(v, torch.full_like(v, 2.0), atol=0.15), v
