"""Imagination and acting rules of the reference, restated: burn-in over padding, the ε coin, target EMA."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from models.helpers import make_batch

from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.rl.imagination import imagine
from deltairis.rl.world_model_env import WorldModelEnv
from deltairis.rl.policy import policy_step


def _agent(exclude_padding: bool = False) -> Agent:
    torch.manual_seed(0)
    cfg = make_agent_config("tiny", 5)
    cfg = dataclasses.replace(
        cfg, actor_critic=dataclasses.replace(cfg.actor_critic, horizon=2, exclude_padding=exclude_padding)
    )
    agent = Agent(cfg).eval()
    for m in (agent.actor_critic.model, agent.actor_critic.target_model):
        torch.nn.init.normal_(m.critic_linear.weight)  # zero at init: make the values informative
    agent.actor_critic.target_model.load_state_dict(
        {k: v + 0.01 * torch.randn_like(v) for k, v in agent.actor_critic.model.state_dict().items()}
    )
    return agent


def _reference_lstm(model, frames: torch.Tensor) -> torch.Tensor:
    """The reference's CnnLstmActorCritic: from zero state, one LSTM step per frame, every frame fed."""
    n = frames.size(0)
    h = torch.zeros(n, model.config.lstm_dim)
    c = torch.zeros(n, model.config.lstm_dim)
    for t in range(frames.size(1)):
        h, c = model.lstm(model.cnn(frames[:, t]), (h, c))
    return h


@pytest.mark.parametrize(("pad_left", "pad_right"), [(0, 0), (3, 0), (5, 0)])
def test_burn_in_feeds_every_frame_to_both_lstms(pad_left: int, pad_right: int) -> None:
    agent = _agent()
    ac = agent.actor_critic
    batch = make_batch(2, 6, 5, pad_left=pad_left, seed=3)  # burn_in 5 + 1; sample 0 left padded
    with torch.no_grad():
        out = imagine(batch, WorldModelEnv(agent.tokenizer, agent.world_model), ac, seed=1)
        # the first imagined step acts on the last real frame after the 5 burn-in frames, zeros included
        h = _reference_lstm(ac.model, batch.obs)
        ht = _reference_lstm(ac.target_model, batch.obs)
    torch.testing.assert_close(out.logits[:, 0], ac.model.actor_linear(h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.value_logits[:, 0], ac.model.critic_linear(h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.target_values[:, 0],
        ac.target_model.value(ac.target_model.critic_linear(ht)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_exclude_padding_switch_skips_padding_frames_in_the_burn_in() -> None:
    ref, strict = _agent(), _agent(exclude_padding=True)
    batch = make_batch(2, 6, 5, pad_left=3, seed=3)
    with torch.no_grad():
        a = imagine(batch, WorldModelEnv(ref.tokenizer, ref.world_model), ref.actor_critic, seed=1)
        b = imagine(batch, WorldModelEnv(strict.tokenizer, strict.world_model), strict.actor_critic, seed=1)
        h = _reference_lstm(strict.actor_critic.model, batch.obs[:, 3:])  # real frames only
    assert not torch.allclose(a.logits[0, 0], b.logits[0, 0])
    torch.testing.assert_close(
        b.logits[0, 0], strict.actor_critic.model.actor_linear(h)[0], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(a.logits[1, 0], b.logits[1, 0])  # no padding: same


def test_one_epsilon_coin_per_step_for_all_envs() -> None:
    agent = _agent()
    ac = agent.actor_critic
    with torch.no_grad():
        ac.model.actor_linear.bias.copy_(torch.tensor([50.0, 0, 0, 0, 0]))  # the policy always plays 0
    n, calls = 24, 300
    obs = torch.rand(n, 3, 64, 64)
    state = ac.initial_state(n, "cpu")
    random_calls = 0
    for k in range(calls):
        act, _ = policy_step(ac, obs, state, epsilon=0.3, temperature=1.0, seed=5, step=k)
        policy_rows = int((act == 0).sum())
        # either every env follows the policy, or every env plays uniformly (12+ zeros by chance: < 1e-3)
        assert policy_rows == n or policy_rows < n // 2
        random_calls += policy_rows < n
    assert 0.22 < random_calls / calls < 0.38


def test_target_update_is_the_reference_formula_bit_for_bit() -> None:
    agent = _agent()
    ac = agent.actor_critic
    online = ac.model.state_dict()
    target = copy.deepcopy(ac.target_model.state_dict())
    tau = ac.config.target_tau
    expected = {k: online[k] * (1 - tau) + target[k] * tau for k in target}
    ac.update_target()
    for k, v in ac.target_model.state_dict().items():
        assert torch.equal(v, expected[k]), k
