"""CNN-LSTM actor-critic with an EMA target network, trained in imagination (SPEC section 5).

Recurrent state ``(h, c)`` is always passed in and returned, never stored on the module.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from deltairis import ops
from deltairis.config.models import ActorCriticConfig
from deltairis.models.common import LossOutput, masked_mean
from deltairis.models.convnet import FlattenHWC, FrameEncoder
from deltairis.rl.returns import lambda_returns
from deltairis.rl.twohot import symlog, two_hot

State = tuple[torch.Tensor, torch.Tensor]


class PolicyOutput(NamedTuple):
    logits: torch.Tensor  # (N, A)
    value_logits: torch.Tensor  # (N, K) two-hot logits, or (N, 1) scalar value
    state: State


class ActorCriticModel(nn.Module):
    """One CNN-LSTM network: ``cnn.0.encoder.N``, ``lstm``, ``actor_linear``, ``critic_linear``."""

    def __init__(self, config: ActorCriticConfig) -> None:
        super().__init__()
        self.config = config
        fc = config.frame_cnn
        res = 64 // fc.downsampling
        self.cnn = nn.Sequential(FrameEncoder(fc), FlattenHWC())
        self.lstm = nn.LSTMCell(fc.latent_dim * res * res, config.lstm_dim)
        self.actor_linear = nn.Linear(config.lstm_dim, config.num_actions)
        out = config.num_value_buckets if config.two_hot_values else 1
        self.critic_linear = nn.Linear(config.lstm_dim, out)
        nn.init.zeros_(self.critic_linear.weight)
        nn.init.zeros_(self.critic_linear.bias)

    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        z = torch.zeros(batch_size, self.config.lstm_dim, device=device)
        return z, z.clone()

    def forward(self, obs: torch.Tensor, state: State) -> PolicyOutput:
        """obs float (N, 3, 64, 64) in [0, 1] -> logits, value logits, new state."""
        h, c = self.lstm(self.cnn(obs), state)
        return PolicyOutput(self.actor_linear(h), self.critic_linear(h), (h, c))

    def burn_in(
        self, obs: torch.Tensor, mask: torch.Tensor | None = None, state: State | None = None
    ) -> State:
        """Run the LSTM over (N, T, 3, 64, 64); steps where ``mask`` is False leave the state unchanged."""
        n, t = obs.shape[:2]
        if state is None:
            state = self.initial_state(n, obs.device)
        if t == 0:
            return state
        feats = self.cnn(obs)  # (N, T, F)
        h, c = state
        for i in range(t):
            h2, c2 = self.lstm(feats[:, i], (h, c))
            if mask is None:
                h, c = h2, c2
            else:
                m = mask[:, i].unsqueeze(-1)
                h, c = torch.where(m, h2, h), torch.where(m, c2, c)
        return h, c

    def value(self, value_logits: torch.Tensor) -> torch.Tensor:
        """Values as people read them: symexp of the two-hot expectation, or the raw scalar."""
        cfg = self.config
        if cfg.two_hot_values:
            return ops.twohot_expectation(value_logits, low=cfg.bucket_low, high=cfg.bucket_high)
        return value_logits.squeeze(-1).float()


class ImaginationOutput(NamedTuple):
    obs: torch.Tensor  # (B, H+1, 3, 64, 64) imagined frames (the first is the last real frame)
    act: torch.Tensor  # (B, H)
    logits: torch.Tensor  # (B, H, A) online policy logits (with grad)
    value_logits: torch.Tensor  # (B, H, K or 1) online critic (with grad)
    target_values: torch.Tensor  # (B, H+1) target critic values (no grad)
    rew: torch.Tensor  # (B, H)
    end: torch.Tensor  # (B, H) {0, 1}


class ActorCritic(nn.Module):
    def __init__(self, config: ActorCriticConfig) -> None:
        super().__init__()
        self.config = config
        self.model = ActorCriticModel(config)
        self.target_model = copy.deepcopy(self.model)
        self.target_model.requires_grad_(False)

    # -- acting -----------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        return self.model.initial_state(batch_size, device)

    @staticmethod
    def reset_state_rows(state: State, done: torch.Tensor) -> State:
        """Zero the recurrent state of rows where ``done`` (N,) is True."""
        keep = (~done.bool()).unsqueeze(-1).to(state[0].dtype)
        return state[0] * keep, state[1] * keep

    def burn_in(
        self, obs: torch.Tensor, mask: torch.Tensor | None = None, state: State | None = None
    ) -> State:
        return self.model.burn_in(obs, mask, state)

    def step(self, obs: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Online policy on one frame per row: (logits (N, A), value (N,), state)."""
        out = self.model(obs, state)
        return out.logits, self.model.value(out.value_logits), out.state

    @torch.no_grad()
    def act(
        self,
        obs: torch.Tensor,
        state: State,
        *,
        epsilon: float = 0.0,
        temperature: float = 1.0,
        seed: int,
        offset: int,
    ) -> tuple[torch.Tensor, State]:
        """ε-greedy sampling at ``temperature``; uses counter streams ``offset .. offset+2``.

        As in the reference collector, one ε coin per call decides for every row at once whether the
        actions are uniformly random.
        """
        out = self.model(obs, state)
        n, a = out.logits.shape
        actions = ops.sample_categorical(out.logits, temperature=temperature, seed=seed, offset=offset)
        if epsilon > 0:
            coin = ops.counter_uniform(1, seed, offset + 1, obs.device)  # (1,): one coin for all envs
            uniform = ops.sample_categorical(
                torch.zeros(n, a, device=obs.device), seed=seed, offset=offset + 2
            )
            actions = torch.where(coin < epsilon, uniform, actions)
        return actions, out.state

    # -- training -------------------------------------------------------------------------------
    @torch.no_grad()
    def update_target(self) -> None:
        """target <- online * (1 - tau) + target * tau for every parameter, rounded as the reference's.

        The trainer calls it where the reference does: after the imagination of an actor-critic step
        and before that step's optimizer update (the reference's ``compute_loss`` ends with it).
        """
        tau = self.config.target_tau
        target = list(self.target_model.parameters())
        online = torch._foreach_mul([p.detach() for p in self.model.parameters()], 1.0 - tau)
        torch._foreach_mul_(target, tau)
        torch._foreach_add_(target, online)

    def imagine(
        self,
        batch,
        tokenizer,
        world_model,
        seed: int,
        horizon: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> ImaginationOutput:
        from deltairis.rl.imagination import imagine

        return imagine(batch, tokenizer, world_model, self, horizon or self.config.horizon, seed, cuda_graphs)

    def compute_loss(
        self, batch, tokenizer, world_model, seed: int, cuda_graphs: bool | None = None
    ) -> LossOutput:
        """Imagine from ``batch`` (burn_in + 1 real frames) and return the actor-critic loss.

        ``cuda_graphs`` overrides the config's choice of replaying the imagined step from CUDA graphs.
        """
        cfg = self.config
        out = self.imagine(batch, tokenizer, world_model, seed, cuda_graphs=cuda_graphs)
        end = out.end.float()
        # step i counts while no imagined end happened before it
        alive = torch.cat((torch.ones_like(end[:, :1]), torch.cumprod(1.0 - end, dim=1)[:, :-1]), dim=1) > 0
        with torch.no_grad():
            returns = lambda_returns(out.rew, out.target_values, out.end, cfg.gamma, cfg.lambda_)  # (B, H)
            advantage = returns - out.target_values[:, :-1]
        logp_all = F.log_softmax(out.logits.float(), dim=-1)
        logp = logp_all.gather(-1, out.act.unsqueeze(-1)).squeeze(-1)
        loss_actions = -masked_mean(logp * advantage, alive)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        loss_entropy = -cfg.entropy_weight * masked_mean(entropy, alive)
        if cfg.two_hot_values:
            target = two_hot(symlog(returns), cfg.num_value_buckets, cfg.bucket_low, cfg.bucket_high)
            ce = -(target * F.log_softmax(out.value_logits.float(), dim=-1)).sum(-1)
            loss_values = masked_mean(ce, alive)
        else:
            loss_values = masked_mean((out.value_logits.squeeze(-1).float() - returns).pow(2), alive)
        loss = loss_actions + loss_entropy + loss_values
        metrics = {
            "actor_critic/loss": loss.detach(),
            "actor_critic/loss_actions": loss_actions.detach(),
            "actor_critic/loss_values": loss_values.detach(),
            "actor_critic/loss_entropy": loss_entropy.detach(),
            "actor_critic/policy_entropy": masked_mean(entropy.detach(), alive),
            "actor_critic/imagined_return": masked_mean(out.rew, alive) * out.rew.size(1),
            "actor_critic/imagined_ends": out.end.float().mean(),
            "actor_critic/lambda_return": masked_mean(returns, alive),
        }
        return LossOutput(loss, metrics)
