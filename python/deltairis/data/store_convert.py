"""Rewriting a replay store with another frame setting (``deltairis-store convert``).

:func:`convert_store` copies every committed episode (same ids, same steps) and every consumer's visit
counts into a new store with the other setting, built next to the old one (``<name>.converting``), then
swaps the folders: the old store becomes ``<name>.old`` and is deleted once the caller is done
(:func:`finish_conversion`). A crash leaves either the old store in place (the new one is rebuilt by the
next run of the command) or both folders, which :func:`convert_store` completes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from deltairis.data import frame_codec
from deltairis.data.episode_store import _fsync_dir
from deltairis.data.fields import STEP_FIELD_NAMES
from deltairis.data.replay_store import INDEX_NAME, ReplayStore

logger = logging.getLogger(__name__)


#: ``progress(steps_done, steps_total)``, called after every episode rewritten (for a progress bar)
ConvertProgress = Callable[[int, int], None]


def convert_store(directory: Path, compression: str, progress: ConvertProgress | None = None) -> bool:
    """Rewrite the store in ``directory`` with ``compression``; returns False when it already had it.

    The store must not be open for writing elsewhere (its lock is taken while it is read). On return
    the old store is in ``<directory>.old`` (when it was converted): call :func:`finish_conversion`.
    """
    compression = frame_codec.check_compression(compression)
    directory = Path(directory)
    new, old = (
        directory.with_name(directory.name + ".converting"),
        directory.with_name(directory.name + ".old"),
    )
    if not (directory / INDEX_NAME).exists() and old.exists() and (new / INDEX_NAME).exists():
        os.replace(new, directory)  # a conversion stopped between its two renames: complete it
        _fsync_dir(directory.parent)
    with ReplayStore(directory, backend="numpy", create=False) as src:  # the write lock: no run is using it
        if src.compression == compression:
            return False
        shutil.rmtree(new, ignore_errors=True)  # a conversion stopped before the swap
        with ReplayStore(new, backend="numpy", obs_shape=src.obs_shape, compression=compression) as dst:
            for i in range(src.num_episodes):
                e = src.load_episode(i)
                dst.add_episode(*(getattr(e, f) for f in STEP_FIELD_NAMES))
                if progress is not None:
                    progress(dst.num_steps, src.num_steps)
            for consumer in src.consumers:
                dst.counts_for(consumer)[:] = src.visit_counts(consumer)
            dst.commit()
        logger.info(
            "replay store %s: %d episodes, %d steps rewritten with compression %s",
            directory,
            src.num_episodes,
            src.num_steps,
            compression,
        )
    shutil.rmtree(old, ignore_errors=True)
    os.replace(directory, old)
    os.replace(new, directory)
    _fsync_dir(directory.parent)
    return True


def finish_conversion(directory: Path) -> None:
    """Delete the old store a conversion of ``directory`` left in ``<directory>.old``."""
    shutil.rmtree(Path(directory).with_name(Path(directory).name + ".old"), ignore_errors=True)


__all__ = ["ConvertProgress", "convert_store", "finish_conversion"]
