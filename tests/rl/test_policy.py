"""The one policy step (collection, test episodes, the play tool) and its named random streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltairis import ops
from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.rl.policy import Policy, policy_step, sample_actions


@pytest.fixture(scope="module")
def agent() -> Agent:
    torch.manual_seed(0)
    return Agent(make_agent_config("tiny", num_actions=5))


def _restated(logits: torch.Tensor, epsilon: float, temperature: float, seed: int, t: int) -> torch.Tensor:
    """The reference collector's rule on our counter streams, offsets written out: 3t, 3t+1, 3t+2."""
    act = ops.sample_categorical(logits, temperature=temperature, seed=seed, offset=3 * t)
    if epsilon > 0:
        coin = ops.counter_uniform(1, seed, 3 * t + 1, logits.device)
        rand = ops.sample_categorical(torch.zeros_like(logits), seed=seed, offset=3 * t + 2)
        act = rand if bool(coin < epsilon) else act
    return act


@pytest.mark.parametrize("epsilon, temperature", [(0.0, 1.0), (0.5, 0.7), (1.0, 1.0)])
def test_sample_actions_uses_the_streams_of_step_t(epsilon: float, temperature: float) -> None:
    g = torch.Generator().manual_seed(1)
    for t in (0, 1, 7, 1000):
        logits = torch.randn(9, 5, generator=g)
        ours = sample_actions(logits, epsilon=epsilon, temperature=temperature, seed=11, step=t)
        assert torch.equal(ours, _restated(logits, epsilon, temperature, 11, t))
    with pytest.raises(ValueError, match="step must be >= 0"):
        sample_actions(torch.zeros(2, 5), seed=0, step=-1)


def test_policy_steps_through_frames_like_policy_step(agent: Agent) -> None:
    ac = agent.actor_critic
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 3, 3, 64, 64), dtype=np.uint8)  # 4 steps of 3 envs
    policy = Policy(ac, 5, "cpu", epsilon=0.3, temperature=0.8, seed=5)
    state = ac.initial_state(3, "cpu")
    for t in range(4):
        got = policy.act_frames(frames[t])
        x = torch.from_numpy(frames[t]).float().div(255.0)
        want, state = policy_step(ac, x, state, epsilon=0.3, temperature=0.8, seed=5, step=t)
        assert got.dtype == np.int64 and np.array_equal(got, want.numpy())
        torch.testing.assert_close(policy.state[0], state[0])
    assert policy.t == 4


def test_reset_rows_zeroes_only_finished_envs(agent: Agent) -> None:
    policy = Policy(agent.actor_critic, 5, "cpu", seed=0)
    policy.observe(torch.rand(3, 3, 64, 64))
    h_before = policy.state[0].clone()
    policy.reset_rows(np.array([False, True, False]))
    assert torch.count_nonzero(policy.state[0][1]) == 0
    torch.testing.assert_close(policy.state[0][[0, 2]], h_before[[0, 2]])
    policy.reset_rows(np.zeros(3, dtype=bool))  # nothing finished: unchanged
    torch.testing.assert_close(policy.state[0][[0, 2]], h_before[[0, 2]])


def test_random_policy_draws_from_numpy_seeded_by_seed() -> None:
    policy = Policy(None, 7, "cpu", seed=42)
    rng = np.random.default_rng(42)
    obs = np.zeros((5, 3, 64, 64), dtype=np.uint8)
    for _ in range(3):
        assert np.array_equal(policy.act_frames(obs), rng.integers(7, size=5, dtype=np.int64))
    with pytest.raises(ValueError, match="random policy"):
        policy.observe(torch.zeros(5, 3, 64, 64))


def test_sample_before_observe_is_an_error(agent: Agent) -> None:
    with pytest.raises(ValueError, match="observe"):
        Policy(agent.actor_critic, 5, "cpu", seed=0).sample()


@pytest.mark.gpu
def test_policy_on_cuda_acts_like_policy_step_without_host_syncs_but_the_action_copy() -> None:
    """The pinned, non-blocking frame and done copies give the actions and states of plain copies, and
    the step's observe, sample and row resets run under torch's sync debug mode "error"."""
    torch.manual_seed(0)
    ac = Agent(make_agent_config("tiny", num_actions=5)).to("cuda").actor_critic
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 16, 3, 64, 64), dtype=np.uint8)  # 6 steps of 16 envs
    dones = rng.random((6, 16)) < 0.3
    policy = Policy(ac, 5, "cuda", epsilon=0.3, temperature=0.8, seed=5)
    state = ac.initial_state(16, "cuda")
    for t in range(6):
        got = policy.act_frames(frames[t])
        x = torch.from_numpy(frames[t]).cuda().float().div(255.0)
        want, state = policy_step(ac, x, state, epsilon=0.3, temperature=0.8, seed=5, step=t)
        assert np.array_equal(got, want.cpu().numpy())
        policy.reset_rows(dones[t])
        state = ac.reset_state_rows(state, torch.from_numpy(dones[t]).cuda())
        assert torch.equal(policy.state[0], state[0]) and torch.equal(policy.state[1], state[1])
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = policy._to_device(frames[0], "obs").float().div_(255.0)
        policy.observe(x)
        actions = policy.sample()
        policy.reset_rows(dones[0])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert actions.shape == (16,) and actions.device.type == "cuda"
