"""Experience storage and batching."""

from deltairis.data.batch import Batch

__all__ = ["Batch"]
