"""RL pieces on top of the models: the imagination rollout, λ-returns, the actor-critic loss and the
policy step that acts in real environments."""

from deltairis.rl.losses import ActorCriticLoss, actor_critic_loss
from deltairis.rl.imagination import ImaginationOutput, imagine, world_model_burn_in, world_model_step
from deltairis.rl.returns import lambda_returns

__all__ = [
    "ActorCriticLoss",
    "ImaginationOutput",
    "actor_critic_loss",
    "imagine",
    "lambda_returns",
    "world_model_burn_in",
    "world_model_step",
]
