"""MP4 files of uint8 RGB frames, through the ffmpeg binary shipped in the ``imageio-ffmpeg`` wheel."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def save_mp4(frames: Iterable[np.ndarray] | np.ndarray, path: Path, fps: int = 5) -> Path:
    """Write uint8 (H, W, 3) frames as an H.264 MP4 (yuv420p; odd sizes are padded by one black pixel)."""
    import imageio_ffmpeg

    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise ValueError("no frames to save")
    h, w = frames[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    writer = imageio_ffmpeg.write_frames(
        str(tmp),
        (pw, ph),
        fps=max(1, int(fps)),
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=8,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start the ffmpeg process
    try:
        for f in frames:
            if f.shape[:2] != (h, w):
                raise ValueError(f"frame of shape {f.shape} in a video of {h}x{w} frames")
            if (ph, pw) != (h, w):
                f = np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)))
            writer.send(np.ascontiguousarray(f))
    finally:
        writer.close()
    tmp.replace(path)
    return path


def read_mp4(path: Path) -> np.ndarray:
    """All frames of an MP4 as uint8 (T, H, W, 3) (used by the tests)."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(b, dtype=np.uint8).reshape(h, w, 3) for b in gen]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


__all__ = ["read_mp4", "save_mp4"]
