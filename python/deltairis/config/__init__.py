"""Configuration: typed model configs and presets (Hydra config groups live beside this file)."""

from deltairis.config.models import (
    PRESETS,
    ActorCriticConfig,
    AgentConfig,
    FrameCnnConfig,
    TokenizerConfig,
    TransformerConfig,
    WorldModelConfig,
    make_agent_config,
)

__all__ = [
    "PRESETS",
    "ActorCriticConfig",
    "AgentConfig",
    "FrameCnnConfig",
    "TokenizerConfig",
    "TransformerConfig",
    "WorldModelConfig",
    "make_agent_config",
]
