"""The segment sampler behind :class:`~deltairis.data.ReplayStore`: one interface, two backends.

:class:`CppSampler` calls ``deltairis._core`` (``replay_*`` functions and a multi-threaded
``ReplayReader``); :class:`NumpySampler` is the reference of :mod:`deltairis.data.segment_rule`. Both give the
same results bit for bit. :func:`sampler_class` picks one when a store is opened; the store never
branches on the backend afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from deltairis import _native
from deltairis.data import frame_codec, segment_rule
from deltairis.data.episode_store import ChunkView
from deltairis.data.fields import GATHERED_FIELDS, STEP_FIELDS

Backend = Literal["auto", "cpp", "numpy"]


class Sampler(Protocol):
    """Draws and gathers segments of one store's data files (see :mod:`deltairis.data.segment_rule`)."""

    name: ClassVar[str]

    def __init__(
        self, directory: Path, obs_shape: tuple[int, ...], num_threads: int, compression: str = "none"
    ) -> None: ...

    @property
    def num_threads(self) -> int: ...

    def probabilities(self, counts: np.ndarray, alpha: float) -> np.ndarray:
        """Probability of drawing each episode, float64 (N,), for N >= 1 episodes."""
        ...

    def draw_segments(
        self,
        counts: np.ndarray,
        lengths: np.ndarray,
        alpha: float,
        uniforms: np.ndarray,
        seq_len: int,
        pad_mode: str,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment ids ``(episode_id, start, stop)``, int64 (B,), from the uniforms of one batch."""
        ...

    def add_counts(self, counts: np.ndarray, episode_id: np.ndarray) -> None:
        """Add one visit to ``counts`` per entry of ``episode_id`` (in place)."""
        ...

    def gather(
        self,
        view: ChunkView,
        episode_id: np.ndarray,
        start: np.ndarray,
        seq_len: int,
        out: dict[str, np.ndarray],
    ) -> None:
        """Write the steps of the segments into ``out``'s gathered fields; padding is zero."""
        ...

    def reset(self) -> None:
        """Forget what was mapped of the data files (they are about to shrink)."""
        ...


def cpp_available() -> bool:
    """Whether ``deltairis._core`` is built, with the replay sampler."""
    return _native.core is not None and hasattr(_native.core, "ReplayReader")


class CppSampler:
    """The C++ backend; ``deltairis._core`` is bound once, when the sampler is made."""

    name: ClassVar[str] = "cpp"

    def __init__(
        self, directory: Path, obs_shape: tuple[int, ...], num_threads: int, compression: str = "none"
    ) -> None:
        self._core = _native.require_core()
        self._paths = [str(directory / f.file) for f in STEP_FIELDS]  # type: ignore[operator]
        if compression != "none":  # the frames' blocks, then their table (the reader decodes them)
            self._paths[0] = str(directory / frame_codec.FRAMES_FILE[compression])
            self._paths.append(str(directory / frame_codec.BLOCKS_FILE))
        self._frame_bytes = math.prod(obs_shape)
        self._requested_threads = num_threads
        self._reader: Any = None

    def reader(self) -> Any:
        """The ``ReplayReader`` of the data files (opened on first use)."""
        if self._reader is None:
            self._reader = self._core.ReplayReader(self._paths, self._frame_bytes, self._requested_threads)
        return self._reader

    @property
    def num_threads(self) -> int:
        return int(self.reader().num_threads)

    def probabilities(self, counts: np.ndarray, alpha: float) -> np.ndarray:
        out = np.empty(counts.shape[0], dtype=np.float64)
        self._core.replay_sampling_probabilities(counts, alpha, out)
        return out

    def draw_segments(
        self,
        counts: np.ndarray,
        lengths: np.ndarray,
        alpha: float,
        uniforms: np.ndarray,
        seq_len: int,
        pad_mode: str,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = uniforms.shape[1]
        ep, start, stop = (np.empty(b, dtype=np.int64) for _ in range(3))
        mode = segment_rule.check_pad_mode(pad_mode)
        self._core.replay_draw_segments(counts, lengths, alpha, uniforms, seq_len, mode, ep, start, stop)
        return ep, start, stop

    def add_counts(self, counts: np.ndarray, episode_id: np.ndarray) -> None:
        self._core.replay_add_counts(counts, episode_id)

    def gather(
        self,
        view: ChunkView,
        episode_id: np.ndarray,
        start: np.ndarray,
        seq_len: int,
        out: dict[str, np.ndarray],
    ) -> None:
        self.reader().gather(
            view.n_rows,
            view.lengths,
            view.ep_chunk_begin,
            view.chunk_offset,
            view.chunk_row,
            view.chunk_len,
            np.ascontiguousarray(episode_id, dtype=np.int64),
            np.ascontiguousarray(start, dtype=np.int64),
            *(out[f.name] for f in GATHERED_FIELDS),  # the reader's output arguments, in table order
            num_blocks=view.n_blocks,
        )

    def reset(self) -> None:
        self._reader = None


class NumpySampler:
    """The NumPy reference backend, reading the data files through memory maps."""

    name: ClassVar[str] = "numpy"

    def __init__(
        self, directory: Path, obs_shape: tuple[int, ...], num_threads: int, compression: str = "none"
    ) -> None:
        self._directory = directory
        self._obs_shape = obs_shape
        self._compression = compression
        self._maps: dict[str, np.ndarray] = {}
        self._map_rows = -1

    @property
    def num_threads(self) -> int:
        return 1

    # The reference functions themselves (they take the same arguments).
    probabilities = staticmethod(segment_rule.sampling_probabilities)
    draw_segments = staticmethod(segment_rule.draw_segments)

    def add_counts(self, counts: np.ndarray, episode_id: np.ndarray) -> None:
        np.add.at(counts, episode_id, 1)

    def gather(
        self,
        view: ChunkView,
        episode_id: np.ndarray,
        start: np.ndarray,
        seq_len: int,
        out: dict[str, np.ndarray],
    ) -> None:
        rows, mask = segment_rule.segment_rows(
            episode_id, start, seq_len, view.lengths, view.ep_chunk_begin, view.chunk_offset, view.chunk_row
        )
        segment_rule.gather_numpy(self._arrays(view), rows, mask, out)

    def _arrays(self, view: ChunkView) -> dict[str, Any]:
        n_rows = view.n_rows
        if self._map_rows < n_rows:
            self._maps = {
                f.name: np.memmap(
                    self._directory / f.file,  # type: ignore[operator]
                    dtype=f.dtype,
                    mode="r",
                    shape=(n_rows, *f.step_shape(self._obs_shape)),
                )
                for f in STEP_FIELDS
                if not (f.frame and self._compression != "none")
            }
            if self._compression != "none":  # frames decoded from the blocks the rows touch
                blocks = np.fromfile(
                    self._directory / frame_codec.BLOCKS_FILE,
                    dtype=np.int64,
                    count=view.n_blocks * frame_codec.BLOCK_COLUMNS,
                ).reshape(view.n_blocks, frame_codec.BLOCK_COLUMNS)
                size = int(blocks[-1, 2] + blocks[-1, 3])
                data = np.memmap(
                    self._directory / frame_codec.FRAMES_FILE[self._compression], np.uint8, "r", shape=(size,)
                )
                self._maps["obs"] = frame_codec.CompressedFrames(data, blocks, self._obs_shape)
            self._map_rows = n_rows
        return self._maps

    def reset(self) -> None:
        self._maps, self._map_rows = {}, -1


def sampler_class(backend: Backend) -> type[Sampler]:
    """The sampler of ``backend``: ``"cpp"``, ``"numpy"`` or ``"auto"`` (C++ when built).

    Raises ``ValueError`` for another name and ``RuntimeError`` when ``"cpp"`` is asked for but not built.
    """
    if backend not in ("auto", "cpp", "numpy"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'numpy', got {backend!r}")
    if backend == "cpp":
        _native.require_core()
        if not cpp_available():
            raise RuntimeError("deltairis._core was built without the replay sampler; rebuild the package")
    if backend == "cpp" or (backend == "auto" and cpp_available()):
        return CppSampler
    return NumpySampler
