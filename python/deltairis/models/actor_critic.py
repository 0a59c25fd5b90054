"""CNN-LSTM actor-critic with an EMA target network, trained in imagination (docs/algorithm.md section 5).

Recurrent state ``(h, c)`` is always passed in and returned, never stored on the module. The
imagination rollout and the loss that trains this network live in :mod:`deltairis.rl`.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from deltairis import ops
from deltairis.config.models import ActorCriticConfig
from deltairis.models.convnet import FlattenHWC, FrameEncoder

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
        """Zero LSTM state (h, c) in the LSTM's parameter dtype."""
        z = torch.zeros(batch_size, self.config.lstm_dim, device=device, dtype=self.lstm.weight_hh.dtype)
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
        return value_logits.squeeze(-1).to(torch.promote_types(value_logits.dtype, torch.float32))


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
        """Online policy on one frame per row: (logits (N, A), value (N,), state).

        Sampling actions from it is :mod:`deltairis.rl.policy`'s job."""
        out = self.model(obs, state)
        return out.logits, self.model.value(out.value_logits), out.state

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
