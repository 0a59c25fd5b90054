"""NumPy reference of the segment sampler (docs/algorithm.md section 6), shared semantics with ``csrc/replay``.

Everything random is drawn in one place, :func:`draw_uniforms`, from ``np.random.default_rng(seed)``; the
rest is a deterministic function of those uniforms, specified precisely so the C++ backend reproduces it
bit for bit:

* weights ``w_i = (1 / (1 + n_i)) ** alpha`` (float64), ``cdf = cumsum(w)`` summed left to right;
* segment ``b`` picks episode ``e = first i with cdf[i] > u[0, b] * cdf[-1]`` (clamped to ``N - 1``);
* timestep ``t = floor(u[1, b] * len_e)`` and offset ``k = floor(u[2, b] * L)`` (both clamped);
* ``pad_mode="both"``: ``start = t - k``, ``stop = start + L``;
  ``pad_mode="left"``: ``stop = min(len_e, t + 1 + k)``, ``start = stop - L``.

Gathering copies step ``start + j`` of the episode into position ``j`` when it lies inside the episode and
writes zeros (``mask_padding`` False) otherwise.
"""

from __future__ import annotations

import numpy as np

from deltairis.data.fields import STEP_FIELD_NAMES

PAD_MODES: dict[str, int] = {"both": 0, "left": 1}


def check_pad_mode(pad_mode: str) -> int:
    """Return the integer code of ``pad_mode`` or raise ``ValueError``."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    return PAD_MODES[pad_mode]


def draw_uniforms(rng: np.random.Generator, batch_size: int) -> np.ndarray:
    """The only random draws of a batch: float64 (3, B) in [0, 1) (episode, timestep, offset)."""
    return rng.random((3, batch_size))


def sampling_weights(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Unnormalised priorities ``(1 / (1 + n_i)) ** alpha`` as float64 (N,)."""
    base = 1.0 / (1.0 + counts.astype(np.float64))
    return np.power(base, float(alpha))


def sampling_probabilities(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Probability of drawing each episode, float64 (N,)."""
    w = sampling_weights(counts, alpha)
    total = float(np.add.accumulate(w)[-1]) if w.size else 0.0
    return w / total if w.size else w


def draw_segments(
    counts: np.ndarray,
    lengths: np.ndarray,
    alpha: float,
    uniforms: np.ndarray,
    seq_len: int,
    pad_mode: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the uniforms of :func:`draw_uniforms` into segment ids ``(episode_id, start, stop)``, int64 (B,)."""
    mode = check_pad_mode(pad_mode)
    n = lengths.shape[0]
    cdf = np.add.accumulate(sampling_weights(counts, alpha))  # sequential, like the C++ loop
    ep = np.searchsorted(cdf, uniforms[0] * cdf[-1], side="right")
    ep = np.minimum(ep, n - 1).astype(np.int64)
    ep_len = lengths[ep]
    t = np.minimum(np.floor(uniforms[1] * ep_len).astype(np.int64), ep_len - 1)
    k = np.minimum(np.floor(uniforms[2] * seq_len).astype(np.int64), seq_len - 1)
    if mode == PAD_MODES["both"]:
        start = t - k
        stop = start + seq_len
    else:
        stop = np.minimum(ep_len, t + 1 + k)
        start = stop - seq_len
    return ep, start.astype(np.int64), stop.astype(np.int64)


def segment_rows(
    ep: np.ndarray,
    start: np.ndarray,
    seq_len: int,
    lengths: np.ndarray,
    ep_chunk_begin: np.ndarray,
    chunk_offset: np.ndarray,
    chunk_row: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """File rows of every step of every segment: ``rows`` int64 (B, L) (undefined where padded), ``mask``.

    Chunks are sorted by (episode, offset); ``ep_chunk_begin[e]`` is the first chunk of episode ``e``.
    """
    steps = start[:, None] + np.arange(seq_len, dtype=np.int64)[None, :]  # (B, L)
    mask = (steps >= 0) & (steps < lengths[ep][:, None])
    # Position of each step in the "all episodes back to back" order; chunk starts are increasing in it.
    ep_vstart = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    chunk_ep = np.repeat(np.arange(lengths.shape[0]), np.diff(ep_chunk_begin))
    chunk_vstart = ep_vstart[chunk_ep] + chunk_offset
    vpos = ep_vstart[ep][:, None] + np.clip(steps, 0, np.maximum(lengths[ep][:, None] - 1, 0))
    chunk = np.searchsorted(chunk_vstart, vpos, side="right") - 1  # (B, L)
    rows = chunk_row[chunk] + (vpos - chunk_vstart[chunk])
    return rows, mask


def gather_numpy(
    arrays: dict[str, np.ndarray],
    rows: np.ndarray,
    mask: np.ndarray,
    out: dict[str, np.ndarray],
) -> None:
    """Copy rows of the stored arrays (the step fields) into ``out``; padding is zero."""
    valid_rows = rows[mask]
    for name in STEP_FIELD_NAMES:
        dst = out[name]
        dst[...] = 0
        dst[mask] = arrays[name][valid_rows]
    out["mask_padding"][...] = mask
