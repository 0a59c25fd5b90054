"""Experience storage and batching.

Typical use (collector and trainer in one process)::

    store = ReplayStore(run_dir / "checkpoints/dataset/train")      # C++ backend when built
    ep = store.add_episode(obs, act, rew, end, trunc)                # obs uint8 (T, 3, 64, 64), T >= 1
    store.extend_episode(ep, obs2, act2, rew2, end2, trunc2)         # the episode grows next round
    store.commit()                                                   # durable + visible to other processes
    batch = store.sample("tokenizer", 32, 21, pad_mode="both", alpha=5.0, seed=rng)  # -> Batch (uint8 obs)
    batch = batch.to("cuda", non_blocking=True)                      # obs become float in [0, 1]

``seed`` is an int or a ``np.random.Generator`` (advanced by the call); visit counts per consumer are
updated by ``sample`` (``update_counts=False`` to freeze them) and saved by ``commit``. Pinned buffers:
``store.allocate_batch(B, L, pin_memory=True)`` passed as ``out=``. Background prefetch (the trainer's
pipeline): ``StepPrefetcher(store, "world_model", 32, 21, steps, seed_of, device)`` draws step ``s`` with
``seed_of(s)`` while the previous batch trains (counted when taken, pinned buffers on CUDA). One rank of a
distributed run: ``store.sample(..., rows=slice(a, b))`` draws and counts the whole batch, gathers rows
``[a, b)``.
"""

from deltairis.data.batch import Batch
from deltairis.data.prefetch import StepPrefetcher
from deltairis.data.reference_import import import_reference_dataset
from deltairis.data.replay_store import ReplayStore, ReplayStoreError
from deltairis.data.episode_store import Episode

__all__ = [
    "Batch",
    "Episode",
    "ReplayStore",
    "ReplayStoreError",
    "StepPrefetcher",
    "import_reference_dataset",
]
