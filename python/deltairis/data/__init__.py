"""Experience storage and batching."""

from deltairis.data.batch import Batch
from deltairis.data.reference_import import import_reference_dataset
from deltairis.data.replay import Episode, Prefetcher, ReplayStore, ReplayStoreError

__all__ = ["Batch", "Episode", "Prefetcher", "ReplayStore", "ReplayStoreError", "import_reference_dataset"]
