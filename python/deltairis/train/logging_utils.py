"""Metrics sinks (JSON lines, TensorBoard, Weights & Biases) and media files (PNG, GIF, episodes)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltairis.config.schema import WandbConfig
from deltairis.data import ReplayStore
from deltairis.errors import ResumeError

logger = logging.getLogger(__name__)


class Progress:
    """A tqdm bar (rates and ETA) or nothing (``enabled=False``)."""

    def __init__(self, enabled: bool, total: int, desc: str, unit: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, smoothing=0.1)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_metrics_records(path: Path) -> list[tuple[int, str]]:
    """``(epoch, line)`` of every record of a ``metrics.jsonl``. A damaged line raises ResumeError naming
    the file and the line, except a torn last line (a crash mid-write), which is dropped."""
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            out.append((int(json.loads(line)["epoch"]), line))
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:
                logger.warning("dropping the damaged last line of %s", path)
                continue
            raise ResumeError(
                f"{path} line {i + 1} is damaged ({type(exc).__name__}: {exc}); it was left untouched: repair "
                "or remove that line, then resume"
            ) from exc
    return out


class MetricsLogger:
    """Writes one record per epoch to ``metrics.jsonl`` and TensorBoard, and to W&B when enabled.

    W&B is used when the ``wandb`` package is installed and ``wandb.mode`` is not ``disabled``; without
    credentials (no ``WANDB_API_KEY`` and no ``~/.netrc`` entry) an ``online`` run falls back to
    ``offline`` so training never blocks on a login prompt.
    """

    def __init__(self, run_dir: Path, wandb_cfg: WandbConfig, config: dict[str, Any], resume: bool) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except Exception as exc:  # tensorboard missing or broken: keep the JSON lines
            logger.warning("TensorBoard logging disabled: %s", exc)
        self._wandb = None
        if wandb_cfg.mode != "disabled":
            self._wandb = _init_wandb(self.run_dir, wandb_cfg, config, resume)

    def log(self, epoch: int, metrics: Mapping[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        record = {"epoch": epoch, **clean}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, epoch)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(record, step=epoch)

    def truncate_after(self, epoch: int) -> None:
        """Drop JSON records of epochs > ``epoch`` (a resumed run redoes them)."""
        if not self.jsonl_path.exists():
            return
        keep = [line for record_epoch, line in read_metrics_records(self.jsonl_path) if record_epoch <= epoch]
        from deltairis.checkpoint import atomic_write_bytes

        atomic_write_bytes(self.jsonl_path, ("\n".join(keep) + ("\n" if keep else "")).encode())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def _init_wandb(run_dir: Path, wandb_cfg: WandbConfig, config: dict[str, Any], resume: bool) -> Any:
    try:
        import wandb
    except ImportError:
        logger.info("wandb is not installed; logging to metrics.jsonl and TensorBoard only")
        return None
    mode = wandb_cfg.mode
    if mode == "online" and not _wandb_credentials_present():
        logger.warning(
            "no W&B credentials found: logging to W&B in offline mode (sync later with `wandb sync`)"
        )
        mode = "offline"
    run_id_file = run_dir / "wandb_run_id.txt"
    run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else None
    run = wandb.init(
        project=wandb_cfg.project,
        entity=wandb_cfg.entity,
        name=wandb_cfg.name,
        group=wandb_cfg.group,
        tags=list(wandb_cfg.tags) if wandb_cfg.tags else None,
        notes=wandb_cfg.notes,
        mode=mode,
        dir=str(run_dir),
        config=config,
        id=run_id,
        resume="allow" if run_id else None,
    )
    run_id_file.write_text(run.id)
    return run


# -- media ------------------------------------------------------------------------------------------------
def to_uint8_hwc(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames (..., 3, H, W) float in [0, 1] or uint8 -> uint8 (..., H, W, 3)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().float().cpu().numpy() if frames.is_floating_point() else frames.cpu().numpy()
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
    return np.moveaxis(frames, -3, -1)


def save_image_grid(rows: Sequence[np.ndarray], path: Path, pad: int = 2) -> None:
    """Save rows of uint8 (K, H, W, 3) images as one PNG grid."""
    from PIL import Image

    k = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:3]
    canvas = np.full((len(rows) * (h + pad) + pad, k * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c in range(row.shape[0]):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = row[c]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def save_gif(frames: np.ndarray, path: Path, fps: int = 15, scale: int = 4) -> None:
    """Save uint8 (T, H, W, 3) frames as an animated GIF (nearest-neighbour upscaled)."""
    from PIL import Image

    if frames.shape[0] == 0:
        raise ValueError("no frames to save")
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, 1000 // fps), loop=0)


def save_episode(
    path: Path, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, end: np.ndarray, trunc: np.ndarray
) -> None:
    """An episode for ``deltairis-play -e``: compressed NPZ with obs (T, 3, H, W) uint8 and the step arrays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, obs=obs, act=act, rew=rew, end=end, trunc=trunc)
    os.replace(tmp, path)


def save_episodes(episode_ids: Sequence[int], store: ReplayStore, folder: Path, epoch: int, limit: int) -> None:
    """The first ``limit`` of ``episode_ids`` from ``store`` as ``folder/epoch_EEEEE_episode_IIIIII.npz``."""
    for ep_id in list(episode_ids)[: max(0, limit)]:
        ep = store.load_episode(ep_id)
        save_episode(
            folder / f"epoch_{epoch:05d}_episode_{ep_id:06d}.npz", ep.obs, ep.act, ep.rew, ep.end, ep.trunc
        )


__all__ = ["MetricsLogger", "save_episode", "save_episodes", "save_gif", "save_image_grid", "to_uint8_hwc"]
