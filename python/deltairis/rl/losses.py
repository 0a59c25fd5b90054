"""The actor-critic's loss (docs/algorithm.md section 5): imagine from real segments, λ-returns, REINFORCE with a
baseline, entropy bonus and a two-hot (or scalar) value regression.

:func:`actor_critic_loss` is the computation; :class:`ActorCriticLoss` binds it to one agent's three
networks and owns the :class:`~deltairis.rl.world_model_env.WorldModelEnv` it imagines in (with its KV
caches and CUDA graphs), so that the trainer calls every component the same way:
``loss, metrics = component_loss(batch, seed)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltairis.models.common import LossOutput, masked_mean, mean
from deltairis.ops.twohot import symlog, two_hot
from deltairis.rl.imagination import imagine
from deltairis.rl.returns import lambda_returns
from deltairis.rl.rollout import GraphedRollout, RolloutRunners, imagine_rollout
from deltairis.rl.world_model_env import WorldModelEnv


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (bf16/fp16 logits are widened; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def actor_critic_loss(
    actor_critic,
    batch,
    env: WorldModelEnv,
    seed: int,
    row_offset: int = 0,
    *,
    rollout: bool = False,
    rollout_runner: GraphedRollout | None = None,
) -> LossOutput:
    """Imagine in ``env`` from ``batch`` (burn_in + 1 real frames); return the actor-critic loss and metrics.

    ``row_offset``: the global index of the batch's first row when it is a rank's slice (see :func:`imagine`).
    ``rollout``: imagine with :func:`deltairis.rl.rollout.imagine_rollout` (the no-grad rollout body, replayed
    from one CUDA graph when ``rollout_runner`` is given, then the policy's forward with grad); same values.
    """
    cfg = actor_critic.config
    if rollout or rollout_runner is not None:
        out = imagine_rollout(batch, env, actor_critic, cfg.horizon, seed, row_offset, rollout_runner)
    else:
        out = imagine(batch, env, actor_critic, cfg.horizon, seed, row_offset)
    end = out.end.to(out.rew.dtype)
    # step i counts while no imagined end happened before it
    alive = torch.cat((torch.ones_like(end[:, :1]), torch.cumprod(1.0 - end, dim=1)[:, :-1]), dim=1) > 0
    with torch.no_grad():
        returns = lambda_returns(out.rew, out.target_values, out.end, cfg.gamma, cfg.lambda_)  # (B, H)
        advantage = returns - out.target_values[:, :-1]
    logp_all = F.log_softmax(_wide(out.logits), dim=-1)
    logp = logp_all.gather(-1, out.act.unsqueeze(-1)).squeeze(-1)
    loss_actions = -masked_mean(logp * advantage, alive)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    loss_entropy = -cfg.entropy_weight * masked_mean(entropy, alive)
    if cfg.two_hot_values:
        target = two_hot(symlog(returns), cfg.num_value_buckets, cfg.bucket_low, cfg.bucket_high)
        ce = -(target * F.log_softmax(_wide(out.value_logits), dim=-1)).sum(-1)
        loss_values = masked_mean(ce, alive)
    else:
        loss_values = masked_mean((_wide(out.value_logits.squeeze(-1)) - returns).pow(2), alive)
    loss = loss_actions + loss_entropy + loss_values
    metrics = {
        "actor_critic/loss": loss.detach(),
        "actor_critic/loss_actions": loss_actions.detach(),
        "actor_critic/loss_values": loss_values.detach(),
        "actor_critic/loss_entropy": loss_entropy.detach(),
        "actor_critic/policy_entropy": masked_mean(entropy.detach(), alive),
        "actor_critic/imagined_return": masked_mean(out.rew, alive) * out.rew.size(1),
        "actor_critic/imagined_ends": mean(end),
        "actor_critic/lambda_return": masked_mean(returns, alive),
    }
    return LossOutput(loss, metrics)


class ActorCriticLoss:
    """``loss_fn(batch, seed, row_offset=0) -> LossOutput`` for one agent's actor-critic.

    It owns the world-model env it imagines in (:attr:`env`). On CUDA, with ``cuda_graphs`` (default: the
    actor-critic config's), the env replays its step from CUDA graphs; both paths draw the same samples.

    ``graph_rollout`` (default: the config's ``cuda_graph_rollout``, off): imagine with
    :func:`deltairis.rl.rollout.imagine_rollout`, whose no-grad rollout is one CUDA graph on CUDA (runners
    owned here; the env then steps eagerly inside that graph) and the same body run eagerly on CPU; it
    takes precedence over ``cuda_graphs``. The config's ``imagination_bf16`` (opt-in, needs
    ``graph_rollout``) runs the env's step under bf16 autocast.
    """

    def __init__(
        self,
        actor_critic,
        tokenizer,
        world_model,
        cuda_graphs: bool | None = None,
        graph_rollout: bool | None = None,
    ) -> None:
        self.actor_critic = actor_critic
        cfg = actor_critic.config
        self.cuda_graphs = cfg.cuda_graphs if cuda_graphs is None else bool(cuda_graphs)
        self.graph_rollout = cfg.cuda_graph_rollout if graph_rollout is None else bool(graph_rollout)
        if cfg.imagination_bf16 and not self.graph_rollout:
            raise ValueError("actor_critic.imagination_bf16 needs actor_critic.cuda_graph_rollout=true")
        self.env = WorldModelEnv(
            tokenizer,
            world_model,
            cuda_graphs=self.cuda_graphs and not self.graph_rollout,
            bf16=cfg.imagination_bf16,
        )
        self.rollout_runners = RolloutRunners(self.env, actor_critic)

    def __call__(self, batch, seed: int, row_offset: int = 0) -> LossOutput:
        runner = None
        obs = batch.obs
        if self.graph_rollout and obs.is_cuda:
            runner = self.rollout_runners.get(obs.size(0), obs.device, obs.dtype)
        return actor_critic_loss(
            self.actor_critic,
            batch,
            self.env,
            seed,
            row_offset,
            rollout=self.graph_rollout,
            rollout_runner=runner,
        )


__all__ = ["ActorCriticLoss", "actor_critic_loss"]
