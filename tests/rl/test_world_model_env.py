"""The world model as an environment (rl/world_model_env.py): reset / step contract, the same numbers as
the step loop it replaced, continued random streams, dtypes, no host synchronisation, CUDA graphs."""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys

import pytest
import torch
from models.helpers import make_batch

from deltairis import ops
from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.rl.imagination import imagine
from deltairis.rl.losses import actor_critic_loss
from deltairis.rl.world_model_env import WorldModelEnv
from deltairis.seeding import SAMPLER_SEED, stream_base


@functools.cache
def _agent(two_hot_rewards: bool = False, max_blocks: int = 4) -> Agent:
    """Tiny agent; sampled rewards and a 4-block context by default (the cache restarts within 7 steps)."""
    cfg = make_agent_config("tiny")
    wm = dataclasses.replace(
        cfg.world_model,
        two_hot_rewards=two_hot_rewards,
        transformer=dataclasses.replace(cfg.world_model.transformer, max_blocks=max_blocks),
    )
    torch.manual_seed(0)
    return Agent(dataclasses.replace(cfg, world_model=wm)).eval()


def _env(agent: Agent, **kw) -> WorldModelEnv:
    return WorldModelEnv(agent.tokenizer, agent.world_model, **kw)


def _actions(b: int, steps: int, n: int) -> list[torch.Tensor]:
    return [torch.tensor([(i * (r + 2) + r) % n for r in range(b)]) for i in range(steps)]


@torch.no_grad()
def _loop_before_the_env(agent: Agent, obs, act, seed: int, actions: list[torch.Tensor]):
    """The world-model step loop as the imagination and the play tools wrote it before WorldModelEnv
    (burn-in, then per step: restart a full cache, feed [pending Δ, frame, action], sample K Δ-tokens,
    decode, sample reward class and end), restated here as the oracle."""
    tok, wm = agent.tokenizer, agent.world_model
    cfg = wm.config
    cache = wm.transformer.empty_cache(obs.size(0), obs.device)
    pending = None
    if obs.size(1) > 1:
        tokens = tok.encode_tokens(obs[:, :-1], act[:, :-1], obs[:, 1:])
        seq = wm.embed_sequence(obs[:, :-1], act[:, :-1], tokens)
        wm.transformer(seq[:, :-1], cache)
        pending = seq[:, -1:]
    x, offset = obs[:, -1], stream_base(seed)

    def draw(logits):
        nonlocal offset
        offset += 1
        return ops.sample_categorical(logits, seed=SAMPLER_SEED, offset=offset - 1)

    out = []
    for a in actions:
        if cache.max_tokens - cache.size <= cfg.transformer.tokens_per_block:
            cache.reset()
            pending = None
        parts = [wm.embed_frames(x.unsqueeze(1)), wm.act_emb(a).unsqueeze(1)]
        h = wm.transformer(torch.cat(parts if pending is None else [pending, *parts], 1), cache)[:, -1:]
        rew_logits, end_logits = wm.head_rewards(h)[:, 0], wm.head_ends(h)[:, 0]
        tokens = []
        for j in range(cfg.tokens_per_frame):
            tokens.append(draw(wm.head_latents(h)[:, 0]))
            emb = wm.latents_emb(tokens[-1]).unsqueeze(1)
            if j < cfg.tokens_per_frame - 1:
                h = wm.transformer(emb, cache)
            else:
                pending = emb
        tokens_t = torch.stack(tokens, 1)[:, None]  # (B, 1, K)
        x = tok.decode_tokens(x.unsqueeze(1), a.unsqueeze(1), tokens_t, clamp=True)[:, 0]
        if cfg.two_hot_rewards:
            r = ops.twohot_expectation(rew_logits, low=cfg.bucket_low, high=cfg.bucket_high)
        else:
            r = draw(rew_logits).float() - 1.0
        out.append((x, r, draw(end_logits), offset, cache.size))
    return out


@pytest.mark.parametrize(("two_hot", "b", "t", "seed"), [(False, 3, 3, 9), (True, 1, 1, 4), (False, 5, 2, 0)])
def test_steps_equal_the_loop_before_the_env(two_hot: bool, b: int, t: int, seed: int) -> None:
    agent = _agent(two_hot)
    batch = make_batch(b, t, agent.config.num_actions, seed=seed)
    actions = _actions(b, 7, agent.config.num_actions)  # 7 steps: the 4-block context restarts twice
    env = _env(agent)
    first = env.reset(batch.obs, batch.act, seed=seed)
    assert torch.equal(first, batch.obs[:, -1])
    sizes = []
    before = _loop_before_the_env(agent, batch.obs, batch.act, seed, actions)
    for a, (x, r, e, offset, size) in zip(actions, before):
        obs, rew, end = env.step(a)
        assert torch.equal(obs, x) and torch.equal(rew, r) and torch.equal(end, e)
        assert env.state.offset == offset and env.state.cache.size == size
        sizes.append(size)
    assert 0 < min(sizes) < max(sizes)  # the context did restart


def test_reset_and_step_shapes_and_errors() -> None:
    agent = _agent()
    n = agent.config.num_actions
    env = _env(agent)
    with pytest.raises(ValueError, match="reset"):
        env.step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="seed"):  # no running streams to continue yet
        env.reset(torch.rand(2, 3, 64, 64), seed=None)
    batch = make_batch(3, 4, n)
    with pytest.raises(ValueError, match="actions"):
        env.reset(batch.obs, seed=0)
    with pytest.raises(ValueError, match="do not match"):
        env.reset(batch.obs, batch.act[:, :2], seed=0)
    obs = env.reset(batch.obs, batch.act, seed=0)
    assert obs.shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        env.step(torch.zeros(2, dtype=torch.long))
    obs, rew, end = env.step(torch.arange(3) % n)
    assert obs.shape == (3, 3, 64, 64) and obs.dtype == torch.float32 and env.obs is obs
    assert 0 <= obs.min() and obs.max() <= 1
    torch.testing.assert_close(obs * 255, (obs * 255).round())  # decoded pixels
    assert rew.shape == (3,) and rew.dtype == torch.float32 and set(rew.tolist()) <= {-1.0, 0.0, 1.0}
    assert end.shape == (3,) and end.dtype == torch.int64 and set(end.tolist()) <= {0, 1}
    # a single frame (B, 3, H, W) needs no actions: the play tools start so
    one = env.reset(batch.obs[:, -1], seed=0)
    assert torch.equal(one, batch.obs[:, -1]) and env.state.pending is None and env.state.cache.size == 0
    assert env.step(torch.zeros(3, dtype=torch.long))[0].shape == (3, 3, 64, 64)


def test_reset_without_seed_continues_the_streams() -> None:
    """The play window restarts the context from the current frame with the sampler's counter running on."""
    agent = _agent()
    per_step = agent.world_model.config.tokens_per_frame + 2  # Δ-tokens, reward class, end
    env = _env(agent)
    env.reset(make_batch(1, 1, 5, seed=2).obs[:, 0], seed=3)
    assert env.state.offset == stream_base(3)
    env.step(torch.tensor([1]))
    assert env.state.offset == stream_base(3) + per_step
    frame = env.obs
    env.reset(frame, seed=None)
    assert env.state.offset == stream_base(3) + per_step and env.state.cache.size == 0
    x, r, e = env.step(torch.tensor([2]))
    assert env.state.offset == stream_base(3) + 2 * per_step
    # the same as a fresh burn-in on that frame whose counter starts where the first stopped
    fresh = _env(agent)
    fresh.reset(frame, seed=3)
    fresh.state.offset = stream_base(3) + per_step
    y, s, f = fresh.step(torch.tensor([2]))
    assert torch.equal(x, y) and torch.equal(r, s) and torch.equal(e, f)


def test_same_seed_same_steps_other_seed_other_steps() -> None:
    agent = _agent()
    batch = make_batch(2, 3, 5, seed=1)
    runs = []
    for seed in (5, 5, 6):
        env = _env(agent)
        env.reset(batch.obs, batch.act, seed=seed)
        runs.append(torch.stack([env.step(a)[0] for a in _actions(2, 3, 5)]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_the_env_keeps_one_cache_per_shape() -> None:
    agent = _agent()
    env = _env(agent)
    b3, b2 = make_batch(3, 2, 5), make_batch(2, 2, 5)
    env.reset(b3.obs, b3.act, seed=0)
    cache3 = env.state.cache
    env.reset(b2.obs, b2.act, seed=0)
    assert env.state.cache is not cache3 and env.state.cache.batch_size == 2
    env.reset(b3.obs, b3.act, seed=1)
    assert env.state.cache is cache3  # reused: a captured graph keeps reading the same memory
    assert env.slot_cache(3, torch.device("cpu"), torch.float32) is cache3


def test_graphs_requested_on_cpu_step_eagerly() -> None:
    agent = _agent()
    batch = make_batch(2, 3, 5, seed=4)
    outs = []
    for graphs in (False, True):
        env = _env(agent, cuda_graphs=graphs)
        assert not env.uses_graphs(torch.device("cpu"))
        env.reset(batch.obs, batch.act, seed=2)
        outs.append([env.step(a) for a in _actions(2, 3, 5)])
    for (x, r, e), (y, s, f) in zip(*outs):
        assert torch.equal(x, y) and torch.equal(r, s) and torch.equal(e, f)


def test_bf16_env_returns_input_dtype_frames_with_other_numerics() -> None:
    agent = _agent(two_hot_rewards=True)
    batch = make_batch(2, 2, 5, seed=6)
    outs = []
    for bf16 in (False, True):
        env = _env(agent, bf16=bf16)
        env.reset(batch.obs, batch.act, seed=1)
        outs.append(env.step(torch.tensor([0, 3])))
    (x, r, _), (y, s, _) = outs
    assert y.dtype == r.dtype == s.dtype == torch.float32 and x.shape == y.shape
    assert not torch.equal(x, y) or not torch.equal(r, s)  # the step ran in bf16


def test_float64_env_and_imagination() -> None:
    """Computations follow the input dtype: a float64 agent imagines and trains in float64."""
    cfg = make_agent_config("tiny")
    torch.manual_seed(0)
    agent = Agent(cfg).double().eval()
    batch = make_batch(2, cfg.actor_critic.burn_in + 1, cfg.num_actions, seed=2)
    batch = dataclasses.replace(batch, obs=batch.obs.double())
    env = _env(agent)
    obs = env.reset(batch.obs, batch.act, seed=0)
    assert env.state.cache.k.dtype == torch.float64
    obs, rew, end = env.step(torch.tensor([0, 1]))
    assert obs.dtype == rew.dtype == torch.float64 and end.dtype == torch.int64
    out = imagine(batch, _env(agent), agent.actor_critic, horizon=2, seed=0)
    assert out.obs.dtype == out.rew.dtype == out.target_values.dtype == out.logits.dtype == torch.float64
    loss = actor_critic_loss(agent.actor_critic, batch, _env(agent), seed=0)
    assert loss.loss.dtype == torch.float64 and torch.isfinite(loss.loss)
    loss.loss.backward()
    assert agent.actor_critic.model.actor_linear.weight.grad.dtype == torch.float64


def test_steps_never_sync_with_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _agent()
    batch = make_batch(2, 3, 5)
    env = _env(agent)
    env.reset(batch.obs, batch.act, seed=0)
    actions = _actions(2, 5, 5)

    def guard(name: str):
        original = getattr(torch.Tensor, name)

        def forbidden(self, *args, **kwargs):
            # only the KV-cache op's range check reads values, and only for CPU tensors
            if sys._getframe(1).f_code.co_name == "_check_kvcache" and not self.is_cuda:
                return original(self, *args, **kwargs)
            raise AssertionError(f"host synchronisation in a world-model step: Tensor.{name}")

        return forbidden

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    steps = [env.step(a) for a in actions]
    monkeypatch.undo()
    assert all(torch.isfinite(x).all() for x, _, _ in steps)


# -- GPU ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("two_hot", [True, False])
def test_graphed_steps_equal_eager_steps_gpu(two_hot: bool) -> None:
    agent = copy.deepcopy(_agent(two_hot)).cuda()  # the CPU tests keep the cached agent
    batch = make_batch(5, 3, 5, seed=3).to("cuda")
    graphed, eager = _env(agent, cuda_graphs=True), _env(agent)
    for seed in (0, 1):  # the second reset replays the graphs captured by the first
        for env in (graphed, eager):
            env.reset(batch.obs, batch.act, seed=seed, row_offset=2)
        assert isinstance(graphed.state.offset, torch.Tensor) and graphed.state.offset.is_cuda
        for a in _actions(5, 7, 5):
            x, r, e = graphed.step(a.cuda())
            y, s, f = eager.step(a.cuda())
            torch.testing.assert_close(x, y, rtol=0, atol=1.5 / 255)
            torch.testing.assert_close(r, s, rtol=1e-4, atol=1e-4)
            assert torch.equal(e, f)
            assert graphed.state.cache.size == eager.state.cache.size
            assert int(graphed.state.offset) == eager.state.offset
