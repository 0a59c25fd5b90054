"""The Δ-IRIS models: frame CNNs, delta tokenizer, world model, actor-critic."""

from deltairis.models.actor_critic import ActorCritic, ActorCriticModel
from deltairis.models.common import LossOutput, masked_mean
from deltairis.models.convnet import FrameDecoder, FrameEncoder, set_frame_cnn_options
from deltairis.models.kv_cache import KVCache
from deltairis.models.optim import configure_optimizer
from deltairis.models.quantizer import Quantizer
from deltairis.models.tokenizer import Tokenizer, quantize_frame_values
from deltairis.models.transformer import Transformer
from deltairis.models.world_model import WorldModel, WorldModelLogits

__all__ = [
    "ActorCritic",
    "ActorCriticModel",
    "FrameDecoder",
    "FrameEncoder",
    "KVCache",
    "LossOutput",
    "Quantizer",
    "Tokenizer",
    "Transformer",
    "WorldModel",
    "WorldModelLogits",
    "configure_optimizer",
    "masked_mean",
    "quantize_frame_values",
    "set_frame_cnn_options",
]
