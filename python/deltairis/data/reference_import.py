"""Import experience saved by the reference implementation (one ``torch.save`` file per episode)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltairis.checkpoint import LegacyCheckpointError, load_safe
from deltairis.data.fields import STEP_FIELDS
from deltairis.data.replay_store import ReplayStore

logger = logging.getLogger(__name__)

INFO_NAME = "info.pt"


def _episode_files(src: Path) -> list[Path]:
    files = [p for p in src.rglob("*.pt") if p.name != INFO_NAME]
    if all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: int(p.stem))  # reference files are named <episode id>.pt
    return sorted(files)


def _to_numpy(x: Any, field: str, path: Path) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{path}: {field} must be a tensor, got {type(x).__name__}")


def _load(path: Path, what: str) -> Any:
    """A dataset file read as data (``weights_only``): a file that would run code is refused unread."""
    try:
        return load_safe(path, what)
    except LegacyCheckpointError:
        raise ValueError(
            f"{path}: {what} holds pickled Python objects (NumPy arrays?), which only a code-running load "
            "reads; save its arrays as torch tensors"
        ) from None


def _flags(x: np.ndarray, field: str, path: Path) -> np.ndarray:
    if x.dtype.kind not in "biuf" or not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{path}: {field} must hold only 0 and 1")
    return x.astype(np.uint8)


def import_reference_dataset(
    src_dir: str | os.PathLike[str], store: ReplayStore, commit: bool = True
) -> list[int]:
    """Append every episode of a reference dataset folder to ``store``; returns the new episode ids.

    The folder holds (at any depth) one ``<id>.pt`` file per episode, a dict with ``observations`` uint8
    (T, 3, 64, 64), ``actions`` (T,), ``rewards`` (T,), ``ends`` (T,) 0/1 and optionally ``truncations``,
    plus ``info.pt``; when ``info.pt`` names ``num_episodes`` the count is checked. Episodes are imported in
    id order. A bad file raises ``ValueError`` naming the file and field before anything is committed.
    Files are read as data (``torch.load(weights_only=True)``): one that would run code is refused unread.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"no reference dataset folder at {src}")
    files = _episode_files(src)
    info_path = src / INFO_NAME
    if info_path.exists():
        info = _load(info_path, "dataset info")
        expected = info.get("num_episodes") if isinstance(info, dict) else None
        if expected is not None and int(expected) != len(files):
            raise ValueError(
                f"{info_path} says num_episodes={int(expected)} but {len(files)} episode files exist"
            )
    ids: list[int] = []
    for path in files:
        data = _load(path, "reference episode")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
        arrays: dict[str, np.ndarray] = {}
        for field, keys in ((f.name, f.reference_keys) for f in STEP_FIELDS):
            key = next((k for k in keys if k in data), None)
            if key is None:
                if field == "trunc":
                    continue
                raise ValueError(f"{path}: missing {keys[0]!r}")
            arrays[field] = _to_numpy(data[key], keys[0], path)
        t = arrays["act"].shape[0]
        arrays["end"] = _flags(arrays["end"], "ends", path)
        arrays["trunc"] = (
            _flags(arrays["trunc"], "truncations", path) if "trunc" in arrays else np.zeros(t, np.uint8)
        )
        if arrays["rew"].dtype.kind == "f":
            arrays["rew"] = arrays["rew"].astype(np.float32)
        try:
            ids.append(store.add_episode(**arrays))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    if commit:
        store.commit()
    logger.info("imported %d reference episodes (%d steps) from %s", len(ids), store.num_steps, src)
    return ids
