"""Compressed frames of the replay store (``data.compression``): LZ4 blocks of a few consecutive steps.

With ``compression="lz4"`` a store keeps its frames in two files instead of ``obs.u8``:

    obs.lz4   LZ4 blocks (the LZ4 *block* format, no frame header), one after the other
    obs.blk   the block table, int64 rows ``(first_row, num_rows, byte_offset, num_bytes)``

Every append is cut into blocks of at most :data:`BLOCK_STEPS` steps (a block never spans two appends),
so a sampled segment decodes only the blocks its rows touch. Both files only grow at the end, like the
other data files, and the index names how many blocks and bytes are committed; so the store's commit and
crash trimming cover them unchanged. Writers compress with the ``lz4`` package; the NumPy backend
decodes with it too and the C++ sampler with its own decoder of the block format (csrc/replay/lz4.cc),
in its gather threads: both give back the exact bytes appended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from deltairis.errors import ReplayStoreError

#: the settings of ``data.compression``
COMPRESSIONS = ("none", "lz4")
#: steps per compressed block (at most): a segment of L steps decodes at most ceil(L / 8) + 1 blocks
BLOCK_STEPS = 8
#: the frames file of each setting, and the block table of the compressed ones
FRAMES_FILE = {"none": "obs.u8", "lz4": "obs.lz4"}
BLOCKS_FILE = "obs.blk"
#: int64 columns of a block-table row
BLOCK_COLUMNS = 4


def check_compression(name: object) -> str:
    """``name`` when it is a known setting, else ``ValueError`` naming the choices."""
    if name not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {name!r}")
    return str(name)


def _lz4() -> Any:
    try:
        import lz4.block  # only compressed stores need it
    except ImportError as exc:  # pragma: no cover - lz4 is a dependency of the package
        raise ReplayStoreError(
            "a replay store with compression 'lz4' needs the lz4 package (pip install lz4)"
        ) from exc
    return lz4.block


def encode(frames: np.ndarray, first_row: int, first_byte: int) -> tuple[bytes, np.ndarray]:
    """LZ4 blocks of ``frames`` (T, *frame), uint8, appended at file row ``first_row`` and byte
    ``first_byte`` of ``obs.lz4``: the bytes to write and their block-table rows, int64 (K, 4)."""
    block = _lz4()
    t = frames.shape[0]
    parts, rows = [], np.zeros((math.ceil(t / BLOCK_STEPS), BLOCK_COLUMNS), dtype=np.int64)
    offset = first_byte
    for k, lo in enumerate(range(0, t, BLOCK_STEPS)):
        n = min(BLOCK_STEPS, t - lo)
        data = block.compress(
            memoryview(np.ascontiguousarray(frames[lo : lo + n])).cast("B"), store_size=False
        )
        parts.append(data)
        rows[k] = (first_row + lo, n, offset, len(data))
        offset += len(data)
    return b"".join(parts), rows


def decode(data: bytes | memoryview, num_rows: int, frame_bytes: int) -> np.ndarray:
    """One block back to its frames, uint8 (num_rows, frame_bytes); ``ReplayStoreError`` when damaged."""
    want = num_rows * frame_bytes
    try:
        raw = _lz4().decompress(data, uncompressed_size=want)
    except Exception as exc:
        raise ReplayStoreError(f"a compressed frame block does not decode: {exc}") from exc
    if len(raw) != want:
        raise ReplayStoreError(f"a compressed frame block does not decode: {len(raw)} bytes, expected {want}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(num_rows, frame_bytes)


def check_blocks(blocks: np.ndarray, num_rows: int, num_bytes: int, where: str) -> None:
    """The block table (K, 4) tiles rows [0, num_rows) and bytes [0, num_bytes) in order, or
    ``ReplayStoreError`` naming ``where``."""
    first, n, off, size = (blocks[:, i] for i in range(BLOCK_COLUMNS))
    ok = (
        bool(np.all(n >= 1))
        and bool(np.all(n <= BLOCK_STEPS))
        and bool(np.all(size >= 1))
        and np.array_equal(first, np.concatenate(([0], np.cumsum(n)[:-1])) if n.size else first)
        and np.array_equal(off, np.concatenate(([0], np.cumsum(size)[:-1])) if n.size else off)
        and int(n.sum()) == num_rows
        and int(size.sum()) == num_bytes
    )
    if not ok:
        raise ReplayStoreError(
            f"replay store {where}: the block table of the compressed frames is inconsistent"
        )


def block_span(blocks: np.ndarray, row: int, count: int) -> range:
    """Indices of the blocks holding rows [row, row + count)."""
    first = blocks[:, 0]
    lo = int(np.searchsorted(first, row, side="right")) - 1
    hi = int(np.searchsorted(first, row + count - 1, side="right"))
    return range(lo, hi)


@dataclass(frozen=True)
class PackedFrames:
    """Frames of consecutive steps as the LZ4 blocks of a store (a replica sync sends them as they are):
    ``add_episode``/``extend_episode`` of a compressed store take them in place of ``obs``."""

    blocks: tuple[bytes, ...]
    rows: tuple[int, ...]  # steps of each block
    frame_bytes: int

    @property
    def num_steps(self) -> int:
        return sum(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blocks)

    def table(self, first_row: int, first_byte: int) -> np.ndarray:
        """Block-table rows of these blocks appended at ``first_row`` and byte ``first_byte``."""
        rows = np.asarray(self.rows, dtype=np.int64)
        sizes = np.asarray([len(b) for b in self.blocks], dtype=np.int64)
        if rows.size == 0 or np.any(rows < 1) or np.any(rows > BLOCK_STEPS) or np.any(sizes < 1):
            raise ReplayStoreError("packed frames: every block must hold 1 to 8 steps and some bytes")
        first = first_row + np.concatenate(([0], np.cumsum(rows)[:-1]))
        offset = first_byte + np.concatenate(([0], np.cumsum(sizes)[:-1]))
        return np.stack([first, rows, offset, sizes], axis=1)

    def unpack(self, obs_shape: tuple[int, ...]) -> np.ndarray:
        """The frames, uint8 (T, *obs_shape)."""
        frames = [decode(b, n, self.frame_bytes) for b, n in zip(self.blocks, self.rows)]
        return np.concatenate(frames).reshape(self.num_steps, *obs_shape)


class CompressedFrames:
    """``frames[rows]`` of a compressed store for the NumPy backend: decodes each block the rows touch
    once. ``data``: the bytes of ``obs.lz4``; ``blocks``: its table (K, 4)."""

    def __init__(self, data: np.ndarray, blocks: np.ndarray, obs_shape: tuple[int, ...]) -> None:
        self._data = data
        self._blocks = blocks
        self._obs_shape = obs_shape
        self._frame_bytes = math.prod(obs_shape)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], self._frame_bytes), dtype=np.uint8)
        if rows.size:
            which = np.searchsorted(self._blocks[:, 0], rows, side="right") - 1
            for k in np.unique(which):
                first, n, off, size = (int(v) for v in self._blocks[k])
                frames = decode(memoryview(self._data[off : off + size]), n, self._frame_bytes)
                sel = which == k
                out[sel] = frames[rows[sel] - first]
        return out.reshape(rows.shape[0], *self._obs_shape)
