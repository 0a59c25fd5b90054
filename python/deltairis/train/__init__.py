"""Training pipeline: configuration, trainer loop, collector, checkpoints, metrics."""

from deltairis.errors import CorruptCheckpointError
from deltairis.train.configuration import ConfigError, compose_config

__all__ = ["ConfigError", "CorruptCheckpointError", "compose_config"]
