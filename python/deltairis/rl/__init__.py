"""RL pieces on top of the models: the world model as an environment, the imagination rollout in it,
λ-returns, the actor-critic loss and the policy step that acts in real environments."""

from deltairis.rl.imagination import ImaginationOutput, imagine
from deltairis.rl.losses import ActorCriticLoss, actor_critic_loss
from deltairis.rl.returns import lambda_returns
from deltairis.rl.world_model_env import WorldModelEnv, WorldModelState

__all__ = [
    "ActorCriticLoss",
    "ImaginationOutput",
    "WorldModelEnv",
    "WorldModelState",
    "actor_critic_loss",
    "imagine",
    "lambda_returns",
]
