"""The actor-critic's loss (docs/algorithm.md section 5): imagine from real segments, λ-returns, REINFORCE with a
baseline, entropy bonus and a two-hot (or scalar) value regression.

:func:`actor_critic_loss` is the computation; :class:`ActorCriticLoss` binds it to one agent's three
networks and owns the CUDA-graph runners of the imagined world-model step, so that the trainer calls
every component the same way: ``loss, metrics = component_loss(batch, seed)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltairis.models.common import LossOutput, masked_mean, mean
from deltairis.ops.twohot import symlog, two_hot
from deltairis.rl.graphs import GraphedWorldModelStep, GraphRunners
from deltairis.rl.imagination import imagine
from deltairis.rl.returns import lambda_returns
from deltairis.rl.rollout import GraphedRollout, RolloutRunners, imagine_rollout


def actor_critic_loss(
    actor_critic,
    batch,
    tokenizer,
    world_model,
    seed: int,
    runner: GraphedWorldModelStep | None = None,
    row_offset: int = 0,
    *,
    rollout: bool = False,
    rollout_runner: GraphedRollout | None = None,
) -> LossOutput:
    """Imagine from ``batch`` (burn_in + 1 real frames) and return the actor-critic loss and metrics.

    ``runner``: replay the imagined world-model step from CUDA graphs (see :func:`imagine`).
    ``row_offset``: the global index of the batch's first row when it is a rank's slice (see :func:`imagine`).
    ``rollout``: imagine with :func:`deltairis.rl.rollout.imagine_rollout` (the no-grad rollout body, replayed
    from one CUDA graph when ``rollout_runner`` is given, then the policy's forward with grad); same values.
    """
    cfg = actor_critic.config
    if rollout or rollout_runner is not None:
        out = imagine_rollout(
            batch, tokenizer, world_model, actor_critic, cfg.horizon, seed, rollout_runner, row_offset
        )
    else:
        out = imagine(batch, tokenizer, world_model, actor_critic, cfg.horizon, seed, runner, row_offset)
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
        "actor_critic/imagined_ends": mean(out.end.float()),
        "actor_critic/lambda_return": masked_mean(returns, alive),
    }
    return LossOutput(loss, metrics)


class ActorCriticLoss:
    """``loss_fn(batch, seed) -> LossOutput`` for one agent's actor-critic.

    On CUDA, with ``cuda_graphs`` (default: the actor-critic config's), the imagined world-model step is
    replayed from CUDA graphs whose runners this object owns (one per batch size); both paths draw the
    same samples.

    ``graph_rollout`` (default: the config's ``cuda_graph_rollout``, off): imagine with
    :func:`deltairis.rl.rollout.imagine_rollout`, whose no-grad rollout is one CUDA graph on CUDA (runners
    owned here) and the same body run eagerly on CPU; it takes precedence over ``cuda_graphs``.
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
        self.tokenizer = tokenizer
        self.world_model = world_model
        cfg = actor_critic.config
        self.cuda_graphs = cfg.cuda_graphs if cuda_graphs is None else bool(cuda_graphs)
        self.graph_rollout = cfg.cuda_graph_rollout if graph_rollout is None else bool(graph_rollout)
        if cfg.imagination_bf16 and not self.graph_rollout:
            raise ValueError("actor_critic.imagination_bf16 needs actor_critic.cuda_graph_rollout=true")
        self.runners = GraphRunners(tokenizer, world_model)
        self.rollout_runners = RolloutRunners(tokenizer, world_model, actor_critic)

    def runner_for(self, batch) -> GraphedWorldModelStep | None:
        obs = batch.obs
        if not (self.cuda_graphs and obs.is_cuda):
            return None
        return self.runners.get(obs.size(0), obs.device)

    def __call__(self, batch, seed: int, row_offset: int = 0) -> LossOutput:
        if self.graph_rollout:
            obs = batch.obs
            runner = self.rollout_runners.get(obs.size(0), obs.device) if obs.is_cuda else None
            return actor_critic_loss(
                self.actor_critic,
                batch,
                self.tokenizer,
                self.world_model,
                seed,
                row_offset=row_offset,
                rollout=True,
                rollout_runner=runner,
            )
        return actor_critic_loss(
            self.actor_critic,
            batch,
            self.tokenizer,
            self.world_model,
            seed,
            self.runner_for(batch),
            row_offset,
        )


__all__ = ["ActorCriticLoss", "actor_critic_loss"]
