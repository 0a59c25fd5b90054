"""``episodes.jsonl``: one JSON line per finished training or test episode of a run.

Each record holds::

    {"split": "train" | "test", "epoch": E, "env_steps": S, "return": R, "length": L,
     "achievements": ["collect_wood", ...]}      # Crafter only: the achievements unlocked in the episode

``env_steps`` is the run's global env-step count at the episode's end, counted as the collector counts
them (every step of every train env; Atari's frame skip is inside one step). A test episode is played at
the end of its epoch's training, so its ``env_steps`` is the collector's total at that point.

The train episodes of an epoch are appended when its collection ends, the test episodes when its
evaluation ends, each batch with one ``write`` then ``fsync`` (as ``metrics.jsonl``). Only the main
process (rank 0) writes. When a run resumes, the file is cut back to what its checkpoint covers
(:meth:`EpisodeLog.truncate_to`), so the phases redone after a crash or a preemption never duplicate
a line. The records are what the Crafter protocol and ``deltairis-eval --aggregate`` read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deltairis.errors import ResumeError
from deltairis.train.collector import CollectStats
from deltairis.train.state import Position

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
SPLITS = ("train", "test")


def episode_records(
    stats: CollectStats, split: str, epoch: int, env_steps: int | Sequence[int]
) -> list[dict[str, Any]]:
    """The records of the episodes that ``stats`` finished.

    ``env_steps``: the global env-step count at each episode's end, or one count for all of them (the
    test episodes of an evaluation).

    Raises:
        ValueError: for an unknown split, or per-episode lists of different lengths.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = len(stats.episode_returns)
    steps = [int(env_steps)] * n if isinstance(env_steps, int) else [int(s) for s in env_steps]
    if len(steps) != n or len(stats.episode_lengths) != n:
        raise ValueError(
            f"{n} episode returns but {len(stats.episode_lengths)} lengths and {len(steps)} env-step counts"
        )
    achievements: list[Mapping[str, int] | None] = [None] * n
    if stats.achievements:
        if len(stats.achievements) != n:
            raise ValueError(f"{len(stats.achievements)} achievement records for {n} episodes")
        achievements = list(stats.achievements)
    out = []
    for k in range(n):
        record: dict[str, Any] = {
            "split": split,
            "epoch": int(epoch),
            "env_steps": steps[k],
            "return": float(stats.episode_returns[k]),
            "length": int(stats.episode_lengths[k]),
        }
        unlocked = achievements[k]
        if unlocked is not None:
            record["achievements"] = sorted(name for name, count in unlocked.items() if count > 0)
        out.append(record)
    return out


def _check_record(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise TypeError(f"a record is a JSON object, got {type(record).__name__}")
    if record.get("split") not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {record.get('split')!r}")
    for key in ("epoch", "env_steps", "length"):
        if not isinstance(record.get(key), int):
            raise TypeError(f"{key!r} must be an integer, got {record.get(key)!r}")
    ret = record.get("return")
    if not isinstance(ret, (int, float)) or not math.isfinite(float(ret)):
        raise ValueError(f"'return' must be a finite number, got {ret!r}")
    return record


def read_episodes(path: Path) -> list[dict[str, Any]]:
    """The records of an ``episodes.jsonl`` (none when the file does not exist).

    A torn last line (a crash mid-write) is dropped with a warning; any other damaged line raises
    ResumeError naming the file and the line (the file is left untouched).
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(_check_record(json.loads(line)))
        except (ValueError, TypeError) as exc:
            if i == len(lines) - 1:
                logger.warning("dropping the damaged last line of %s", path)
                continue
            raise ResumeError(
                f"{path} line {i + 1} is damaged ({type(exc).__name__}: {exc}); it was left untouched: repair "
                "or remove that line"
            ) from exc
    return out


def covered_by_checkpoint(record: Mapping[str, Any], epoch: int, position: Position | None) -> bool:
    """Whether a checkpoint at the end of ``epoch`` (and, for a mid-epoch one, ``position`` inside the
    next epoch) already covers ``record``: a resumed run redoes every phase it does not cover."""
    if int(record["epoch"]) <= epoch:
        return True
    if position is None or int(record["epoch"]) != position.epoch:
        return False
    # The collection comes first: a position past it covers its train episodes. An evaluation that was
    # interrupted is replayed from its start, so a mid-epoch checkpoint never covers test episodes.
    return record["split"] == "train" and position.phase != "collect"


class EpisodeLog:
    """Appends episode records to ``RUN/episodes.jsonl`` (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EPISODES_FILE

    @classmethod
    def opened(cls, run_dir: Path, epoch: int, position: Position | None, main: bool) -> EpisodeLog:
        """The log of a run starting (or resuming) at the end of ``epoch`` / at ``position``: the main
        process cuts the file back to what that checkpoint covers (:meth:`truncate_to`); the other ranks
        of a distributed run never touch it."""
        log = cls(run_dir)
        if main:
            log.truncate_to(epoch, position)
        return log

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append ``records`` (one line each), flushed and fsynced before this returns."""
        text = "".join(json.dumps(dict(r)) + "\n" for r in records)
        if not text:
            return
        with open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def log(self, stats: CollectStats, split: str, epoch: int, env_steps: int | Sequence[int]) -> None:
        """Append the records of the episodes ``stats`` finished (:func:`episode_records`)."""
        self.append(episode_records(stats, split, epoch, env_steps))

    def truncate_to(self, epoch: int, position: Position | None) -> int:
        """Keep only the records the checkpoint covers (:func:`covered_by_checkpoint`); returns how many
        were dropped. A fresh run (epoch 0, no position) starts from an empty file."""
        if not self.path.exists():
            return 0
        records = read_episodes(self.path)
        keep = [r for r in records if covered_by_checkpoint(r, epoch, position)]
        from deltairis.checkpoint import atomic_write_bytes

        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        dropped = len(records) - len(keep)
        if dropped:
            logger.info("%s: dropped %d episode records the checkpoint does not cover", self.path, dropped)
        return dropped


__all__ = [
    "EPISODES_FILE",
    "EpisodeLog",
    "covered_by_checkpoint",
    "episode_records",
    "read_episodes",
]
