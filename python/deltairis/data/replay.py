"""Disk-backed episode store with a batched segment sampler (C++ backend, NumPy reference).

Layout of a store directory::

    obs.u8      frames, raw uint8 rows of prod(obs_shape) bytes (3*64*64 = 12288 by default)
    act.i64     actions, int64 per step
    rew.f32     rewards, float32 per step
    end.u8      termination flags, uint8 per step
    trunc.u8    truncation (time limit) flags, uint8 per step
    index.npz   the committed state: rows in use, episode lengths, chunk table, visit counts
    lock        held (flock) by the one process that has the store open for writing

Steps are appended at the end of the data files in arrival order; an episode is a list of *chunks*
(runs of consecutive file rows), so an unfinished episode can grow across collection rounds while other
episodes are appended in between. ``commit()`` fsyncs the data files, then replaces ``index.npz``
atomically (temp file, fsync, rename, fsync of the directory). Reopening trims the data files to the rows
the index names, so a crash at any point gives back exactly the last committed state.

Within the process that writes, everything appended is visible at once (sampling, ``load_episode``);
other processes see the committed state.
"""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from deltairis import _native
from deltairis.data import sampling
from deltairis.data.batch import Batch
from deltairis.errors import ReplayStoreError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.npz"
LOCK_NAME = "lock"
# field -> (file name, dtype of one element)
DATA_FILES: dict[str, tuple[str, np.dtype]] = {
    "obs": ("obs.u8", np.dtype(np.uint8)),
    "act": ("act.i64", np.dtype(np.int64)),
    "rew": ("rew.f32", np.dtype(np.float32)),
    "end": ("end.u8", np.dtype(np.uint8)),
    "trunc": ("trunc.u8", np.dtype(np.uint8)),
}
FIELDS = tuple(DATA_FILES)
_BATCH_FIELDS = ("obs", "act", "rew", "end", "trunc", "mask_padding", "episode_id", "start", "stop")
DEFAULT_OBS_SHAPE = (3, 64, 64)

Backend = Literal["auto", "cpp", "numpy"]


@dataclass
class Episode:
    """One stored episode as NumPy arrays: obs uint8 (T, 3, 64, 64), act int64, rew float32, end/trunc uint8."""

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    end: np.ndarray
    trunc: np.ndarray

    def __len__(self) -> int:
        return int(self.act.shape[0])


@dataclass(frozen=True)
class _View:
    """An immutable snapshot of the episode table used by one sampling call."""

    n_rows: int
    lengths: np.ndarray  # int64 (N,)
    ep_chunk_begin: np.ndarray  # int64 (N + 1,): chunks of episode e are [begin[e], begin[e + 1])
    chunk_offset: np.ndarray  # int64 (C,) first episode step of each chunk
    chunk_row: np.ndarray  # int64 (C,) first file row of each chunk
    chunk_len: np.ndarray  # int64 (C,)


def _cpp_available() -> bool:
    return _native.core is not None and hasattr(_native.core, "ReplayReader")


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    return x


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        if n <= 0:  # pragma: no cover - the kernel reports errors by raising
            raise OSError(errno.EIO, "short write")
        data = data[n:]
        offset += n


class ReplayStore:
    """Episodes of (obs, act, rew, end, trunc) on disk, with prioritised segment sampling.

    Args:
        directory: where the store lives (created when missing and ``create`` is True).
        backend: ``"cpp"`` (``deltairis._core``), ``"numpy"`` (reference) or ``"auto"`` (C++ when built).
        num_threads: threads of the C++ gather (None: ``DELTAIRIS_NUM_THREADS`` or all cores).
            Results never depend on it.
        create: create an empty store when ``directory`` holds none.
        read_only: open without the write lock; appends and commits raise.
        obs_shape: shape of one frame, fixed when the store is created (default (3, 64, 64)); reopening
            with a different explicit shape raises ``ValueError``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        backend: Backend = "auto",
        num_threads: int | None = None,
        create: bool = True,
        read_only: bool = False,
        obs_shape: tuple[int, ...] | None = None,
    ) -> None:
        if backend not in ("auto", "cpp", "numpy"):
            raise ValueError(f"backend must be 'auto', 'cpp' or 'numpy', got {backend!r}")
        if backend == "cpp":
            _native.require_core()
            if not _cpp_available():
                raise RuntimeError(
                    "deltairis._core was built without the replay sampler; rebuild the package"
                )
        self.backend: str = "cpp" if backend == "cpp" or (backend == "auto" and _cpp_available()) else "numpy"
        self.directory = Path(directory)
        self.read_only = read_only
        self._num_threads = 0 if num_threads is None else int(num_threads)
        self._lock = threading.RLock()
        self._fds: dict[str, int] = {}
        self._lock_fd: int | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader: Any = None
        self._memmaps: dict[str, np.ndarray] = {}
        self._memmap_rows = -1
        self._view_cache: _View | None = None
        # id(out batch) -> (its tensors, NumPy views of them): validating caller buffers once per buffer.
        self._out_cache: dict[int, tuple[tuple[torch.Tensor, ...], tuple, dict[str, np.ndarray]]] = {}
        self._closed = False

        index_path = self.directory / INDEX_NAME
        if not self.directory.is_dir():
            if not create or read_only:
                raise FileNotFoundError(f"no replay store at {self.directory}")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReplayStoreError(
                    f"cannot create replay store directory {self.directory}: {exc}"
                ) from exc
        if not index_path.exists() and not create:
            raise FileNotFoundError(f"no replay store index at {index_path}")

        if not read_only:
            self._acquire_write_lock()
        try:
            if index_path.exists():
                self._load_index(index_path)
                if obs_shape is not None and tuple(obs_shape) != self.obs_shape:
                    raise ValueError(
                        f"obs_shape {tuple(obs_shape)} does not match the store's frames {self.obs_shape}"
                    )
            else:
                self._init_empty(tuple(int(s) for s in (obs_shape or DEFAULT_OBS_SHAPE)))
            self._open_data_files()
            if not read_only:  # left behind by a crash during commit
                (self.directory / (INDEX_NAME + ".tmp")).unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise
        logger.info(
            "replay store %s: %d episodes, %d steps (backend %s)",
            self.directory,
            self.num_episodes,
            self.num_steps,
            self.backend,
        )

    # ------------------------------------------------------------------------------------------------
    # opening, closing, index
    # ------------------------------------------------------------------------------------------------
    def _acquire_write_lock(self) -> None:
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ReplayStoreError(
                f"replay store directory {self.directory} is not writable ({exc.strerror}); "
                "open it with read_only=True to sample from it"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ReplayStoreError(
                f"replay store {self.directory} is already open for writing by another process"
            ) from exc
        self._lock_fd = fd

    def _init_empty(self, obs_shape: tuple[int, ...]) -> None:
        if len(obs_shape) == 0 or any(s < 1 for s in obs_shape):
            raise ValueError(f"obs_shape must be a non-empty tuple of positive sizes, got {obs_shape}")
        self.obs_shape = obs_shape
        self._n_rows = 0
        self._committed_rows = 0
        self._lengths: list[int] = []
        self._chunks: list[list[int]] = []  # [episode, offset, row, length] in arrival order
        self._last_chunk: list[int] = []  # per episode: index of its last chunk in self._chunks
        self._counts: dict[str, np.ndarray] = {}

    def _load_index(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode("utf-8"))
                arrays = {k: np.asarray(z[k]) for k in z.files if k != "meta"}
        except Exception as exc:
            raise ReplayStoreError(f"corrupt replay index {path}: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise ReplayStoreError(
                f"replay index {path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        try:
            self._init_empty(tuple(int(s) for s in meta["obs_shape"]))
            n_rows = int(meta["n_rows"])
            lengths = arrays["lengths"].astype(np.int64)
            chunks = arrays["chunks"].astype(np.int64).reshape(-1, 4)  # (C, 4)
            counts = arrays["counts"].astype(np.int64).reshape(len(meta["consumers"]), lengths.shape[0])
        except (KeyError, ValueError, TypeError) as exc:
            raise ReplayStoreError(f"corrupt replay index {path}: {exc}") from exc
        n = lengths.shape[0]
        ep = chunks[:, 0]
        ok = (
            n_rows >= 0
            and bool(np.all(lengths >= 1))
            and bool(np.all((ep >= 0) & (ep < n)))
            and bool(np.all(chunks[:, 2] >= 0))
            and bool(np.all(chunks[:, 3] >= 1))
            and bool(np.all(chunks[:, 2] + chunks[:, 3] <= n_rows))
            and np.array_equal(np.bincount(ep, weights=chunks[:, 3], minlength=n).astype(np.int64), lengths)
        )
        if not ok:
            raise ReplayStoreError(f"corrupt replay index {path}: episode table is inconsistent")
        self._n_rows = self._committed_rows = n_rows
        self._lengths = [int(x) for x in lengths]
        self._chunks = [[int(v) for v in c] for c in chunks]
        self._last_chunk = [-1] * n
        for i, c in enumerate(self._chunks):
            self._last_chunk[c[0]] = i
        self._counts = {name: counts[i].copy() for i, name in enumerate(meta["consumers"])}

    def _row_bytes(self, field: str) -> int:
        itemsize = DATA_FILES[field][1].itemsize
        return itemsize * (math.prod(self.obs_shape) if field == "obs" else 1)

    def _open_data_files(self) -> None:
        for field, (name, _) in DATA_FILES.items():
            path = self.directory / name
            want = self._n_rows * self._row_bytes(field)
            if self.read_only:
                if not path.exists():
                    if want:
                        raise ReplayStoreError(f"replay store {self.directory} is missing {name}")
                    continue
                fd = os.open(path, os.O_RDONLY)
            else:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as exc:
                    raise ReplayStoreError(f"cannot open {path} for writing: {exc.strerror}") from exc
            self._fds[field] = fd
            size = os.fstat(fd).st_size
            if size < want:
                raise ReplayStoreError(
                    f"replay store {self.directory} is corrupt: {name} holds {size} bytes, "
                    f"the index needs {want}"
                )
            if size > want and not self.read_only:
                # Rows appended after the last commit (a crash, or a close without commit): drop them.
                logger.warning(
                    "replay store %s: dropping %d uncommitted bytes of %s", self.directory, size - want, name
                )
                os.ftruncate(fd, want)

    def close(self) -> None:
        """Close the files and release the write lock; uncommitted appends are dropped at the next open."""
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._reader = None
        self._memmaps = {}
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        if "_closed" not in self.__dict__:  # the constructor failed before opening anything
            return
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to report to
            logger.debug("replay store %s: error while closing", self.directory, exc_info=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"replay store {self.directory} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReplayStoreError(f"replay store {self.directory} was opened read-only")

    # ------------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._lengths)

    @property
    def num_steps(self) -> int:
        return self._n_rows

    @property
    def lengths(self) -> np.ndarray:
        """Length of every episode, int64 (N,) (a copy)."""
        return np.asarray(self._lengths, dtype=np.int64)

    @property
    def consumers(self) -> list[str]:
        return sorted(self._counts)

    @property
    def num_threads(self) -> int:
        if self.backend == "cpp":
            return int(self._get_reader().num_threads)
        return 1

    # ------------------------------------------------------------------------------------------------
    # appending
    # ------------------------------------------------------------------------------------------------
    def _validate_steps(
        self, obs: Any, act: Any, rew: Any, end: Any, trunc: Any, allow_empty: bool
    ) -> dict[str, np.ndarray]:
        obs = _as_numpy(obs, "obs")
        if obs.dtype != np.uint8:
            raise ValueError(f"obs must have dtype uint8, got {obs.dtype}")
        if obs.ndim != 1 + len(self.obs_shape) or tuple(obs.shape[1:]) != self.obs_shape:
            raise ValueError(
                f"obs must have shape (T, {', '.join(map(str, self.obs_shape))}), got {obs.shape}"
            )
        t = obs.shape[0]
        if t == 0 and not allow_empty:
            raise ValueError("obs must hold at least one step (T >= 1)")
        out = {"obs": np.ascontiguousarray(obs)}
        for name, x, kinds, dtype in (
            ("act", act, "iu", np.int64),
            ("rew", rew, "f", np.float32),
            ("end", end, "bu", np.uint8),
            ("trunc", trunc, "bu", np.uint8),
        ):
            x = _as_numpy(x, name)
            if x.dtype.kind not in kinds:
                raise ValueError(f"{name} has dtype {x.dtype}, expected {np.dtype(dtype).name}")
            if x.shape != (t,):
                raise ValueError(f"{name} must have shape ({t},) to match obs, got {x.shape}")
            if name in ("end", "trunc") and x.dtype.kind == "u" and t and int(x.max()) > 1:
                raise ValueError(f"{name} must hold only 0 and 1, got a {int(x.max())}")
            out[name] = np.ascontiguousarray(x, dtype=dtype)
        return out

    def _append_rows(self, data: dict[str, np.ndarray]) -> int:
        """Write the steps after the last row; on failure trims the files back and raises. Returns the row."""
        row = self._n_rows
        t = data["act"].shape[0]
        try:
            for field in FIELDS:
                buf = memoryview(data[field]).cast("B")
                _pwrite_all(self._fds[field], buf, row * self._row_bytes(field))
        except OSError as exc:
            for field in FIELDS:
                try:
                    os.ftruncate(self._fds[field], row * self._row_bytes(field))
                except OSError:
                    pass
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                what = "the disk is full"
            elif exc.errno == errno.EFBIG:
                what = "the file size limit was reached"
            else:
                what = "write failed"
            raise ReplayStoreError(
                f"cannot append {t} steps to replay store {self.directory}: {what} "
                f"([Errno {exc.errno}] {exc.strerror}); nothing was appended and the committed state is intact"
            ) from exc
        self._n_rows += t
        return row

    def add_episode(self, obs: Any, act: Any, rew: Any, end: Any, trunc: Any) -> int:
        """Append a new episode of T >= 1 steps; returns its id (ids are 0, 1, 2...)."""
        with self._lock:
            self._check_writable()
            data = self._validate_steps(obs, act, rew, end, trunc, allow_empty=False)
            row = self._append_rows(data)
            ep = len(self._lengths)
            t = int(data["act"].shape[0])
            self._lengths.append(t)
            self._chunks.append([ep, 0, row, t])
            self._last_chunk.append(len(self._chunks) - 1)
            self._view_cache = None
            return ep

    def extend_episode(self, episode_id: int, obs: Any, act: Any, rew: Any, end: Any, trunc: Any) -> None:
        """Append steps to episode ``episode_id`` (an unfinished episode growing across rounds)."""
        with self._lock:
            self._check_writable()
            ep = self._check_episode_id(episode_id)
            data = self._validate_steps(obs, act, rew, end, trunc, allow_empty=True)
            t = int(data["act"].shape[0])
            if t == 0:
                return
            row = self._append_rows(data)
            last = self._chunks[self._last_chunk[ep]]
            if last[2] + last[3] == row:  # nothing else was appended in between: grow the chunk
                last[3] += t
            else:
                self._chunks.append([ep, self._lengths[ep], row, t])
                self._last_chunk[ep] = len(self._chunks) - 1
            self._lengths[ep] += t
            self._view_cache = None

    def commit(self) -> None:
        """Make everything appended so far (and the visit counts) durable and visible to other processes."""
        with self._lock:
            self._check_writable()
            tmp = self.directory / (INDEX_NAME + ".tmp")
            try:
                for fd in self._fds.values():
                    os.fsync(fd)
                payload = self._index_payload()
                with open(tmp, "wb") as f:
                    np.savez(f, **payload)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.directory / INDEX_NAME)
                _fsync_dir(self.directory)
            except OSError as exc:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                raise ReplayStoreError(
                    f"cannot commit replay store {self.directory}: [Errno {exc.errno}] {exc.strerror}; "
                    "the previous committed state is intact and the appended data is still pending"
                ) from exc
            self._committed_rows = self._n_rows

    def clear(self) -> None:
        """Remove every episode and visit count, durably (the reference empties its test store this way).

        The empty index is committed first, then the data files are truncated, so a crash in between
        reopens as an empty store (reopening trims rows the index does not name).
        """
        with self._lock:
            self._check_writable()
            consumers = list(self._counts)
            self._init_empty(self.obs_shape)
            self._counts = {name: np.zeros(0, dtype=np.int64) for name in consumers}
            self._view_cache = None
            self._reader = None
            self._memmaps = {}
            self._memmap_rows = -1
            self._out_cache.clear()
            self.commit()
            try:
                for fd in self._fds.values():
                    os.ftruncate(fd, 0)
            except OSError as exc:
                raise ReplayStoreError(
                    f"cannot truncate the data files of replay store {self.directory}: "
                    f"[Errno {exc.errno}] {exc.strerror}; the committed (empty) index is intact"
                ) from exc

    def _index_payload(self) -> dict[str, np.ndarray]:
        names = sorted(self._counts)
        n = self.num_episodes
        meta = {
            "format_version": FORMAT_VERSION,
            "obs_shape": list(self.obs_shape),
            "n_rows": self._n_rows,
            "consumers": names,
        }
        counts = np.zeros((len(names), n), dtype=np.int64)
        for i, name in enumerate(names):
            c = self._counts[name]
            counts[i, : c.shape[0]] = c[:n]
        return {
            "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            "lengths": np.asarray(self._lengths, dtype=np.int64),
            "chunks": np.asarray(self._chunks, dtype=np.int64).reshape(-1, 4),
            "counts": counts,
        }

    # ------------------------------------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------------------------------------
    def _check_episode_id(self, episode_id: Any) -> int:
        if isinstance(episode_id, bool) or not isinstance(episode_id, (int, np.integer)):
            raise ValueError(f"episode_id must be an int, got {type(episode_id).__name__}")
        ep = int(episode_id)
        if not 0 <= ep < len(self._lengths):
            raise KeyError(f"unknown episode id {ep} (the store holds {len(self._lengths)} episodes)")
        return ep

    def _view(self) -> _View:
        if self._view_cache is None:
            lengths = np.asarray(self._lengths, dtype=np.int64)
            chunks = np.asarray(self._chunks, dtype=np.int64).reshape(-1, 4)
            order = np.lexsort((chunks[:, 1], chunks[:, 0]))  # by episode, then offset
            chunks = chunks[order]
            begin = np.searchsorted(chunks[:, 0], np.arange(lengths.shape[0] + 1), side="left").astype(
                np.int64
            )
            self._view_cache = _View(
                n_rows=self._n_rows,
                lengths=lengths,
                ep_chunk_begin=begin,
                chunk_offset=np.ascontiguousarray(chunks[:, 1]),
                chunk_row=np.ascontiguousarray(chunks[:, 2]),
                chunk_len=np.ascontiguousarray(chunks[:, 3]),
            )
        return self._view_cache

    def _get_reader(self) -> Any:
        if self._reader is None:
            core = _native.require_core()
            paths = [str(self.directory / DATA_FILES[f][0]) for f in FIELDS]
            self._reader = core.ReplayReader(paths, math.prod(self.obs_shape), self._num_threads)
        return self._reader

    def _numpy_arrays(self, n_rows: int) -> dict[str, np.ndarray]:
        if self._memmap_rows < n_rows:
            maps = {}
            for field, (name, dtype) in DATA_FILES.items():
                shape = (n_rows, *self.obs_shape) if field == "obs" else (n_rows,)
                maps[field] = np.memmap(self.directory / name, dtype=dtype, mode="r", shape=shape)
            self._memmaps, self._memmap_rows = maps, n_rows
        return self._memmaps

    def visit_counts(self, consumer: str) -> np.ndarray:
        """How often ``consumer`` sampled each episode, int64 (N,) (a copy; zeros for a new consumer)."""
        with self._lock:
            return self._counts_for(consumer).copy()

    def _counts_for(self, consumer: str) -> np.ndarray:
        if not isinstance(consumer, str) or not consumer:
            raise ValueError(f"consumer must be a non-empty string, got {consumer!r}")
        n = self.num_episodes
        c = self._counts.get(consumer)
        if c is None or c.shape[0] < n:
            grown = np.zeros(max(n, 2 * (0 if c is None else c.shape[0])), dtype=np.int64)
            if c is not None:
                grown[: c.shape[0]] = c
            self._counts[consumer] = c = grown
        return c[:n]

    def sampling_probabilities(self, consumer: str, alpha: float) -> np.ndarray:
        """Probability that ``sample(consumer, ..., alpha)`` picks each episode, float64 (N,)."""
        alpha = self._check_alpha(alpha)
        with self._lock:
            counts = self._counts_for(consumer)
            if counts.shape[0] == 0:
                return np.zeros(0, dtype=np.float64)
            if self.backend == "cpp":
                out = np.empty(counts.shape[0], dtype=np.float64)
                _native.core.replay_sampling_probabilities(counts, alpha, out)
                return out
            return sampling.sampling_probabilities(counts, alpha)

    @staticmethod
    def _check_alpha(alpha: float) -> float:
        alpha = float(alpha)
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        return alpha

    @staticmethod
    def _check_positive(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        return int(value)

    def allocate_batch(self, batch_size: int, seq_len: int, pin_memory: bool = False) -> Batch:
        """Host buffers for one batch (pinned when asked, for asynchronous copies to the GPU)."""
        b = self._check_positive("batch_size", batch_size)
        t = self._check_positive("seq_len", seq_len)

        def empty(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, pin_memory=pin_memory)

        return Batch(
            obs=empty(b, t, *self.obs_shape, dtype=torch.uint8),
            act=empty(b, t, dtype=torch.int64),
            rew=empty(b, t, dtype=torch.float32),
            end=empty(b, t, dtype=torch.uint8),
            trunc=empty(b, t, dtype=torch.uint8),
            mask_padding=empty(b, t, dtype=torch.bool),
            episode_id=empty(b, dtype=torch.int64),
            start=empty(b, dtype=torch.int64),
            stop=empty(b, dtype=torch.int64),
        )

    def _out_arrays(self, out: Batch | None, b: int, t: int) -> tuple[Batch, dict[str, np.ndarray]]:
        if out is None:
            arrays = {
                "obs": np.empty((b, t, *self.obs_shape), np.uint8),
                "act": np.empty((b, t), np.int64),
                "rew": np.empty((b, t), np.float32),
                "end": np.empty((b, t), np.uint8),
                "trunc": np.empty((b, t), np.uint8),
                "mask_padding": np.empty((b, t), bool),
                "episode_id": np.empty(b, np.int64),
                "start": np.empty(b, np.int64),
                "stop": np.empty(b, np.int64),
            }
            return Batch(**{k: torch.from_numpy(v) for k, v in arrays.items()}), arrays
        cached = self._out_cache.get(id(out))
        if cached is not None:
            tensors, signature, arrays = cached
            if (
                all(getattr(out, f) is x for f, x in zip(_BATCH_FIELDS, tensors))
                and tuple((x.data_ptr(), x.shape, x.dtype) for x in tensors) == signature
                and arrays["act"].shape == (b, t)
            ):
                return out, arrays
        expect = {
            "obs": ((b, t, *self.obs_shape), torch.uint8),
            "act": ((b, t), torch.int64),
            "rew": ((b, t), torch.float32),
            "end": ((b, t), torch.uint8),
            "trunc": ((b, t), torch.uint8),
            "mask_padding": ((b, t), torch.bool),
            "episode_id": ((b,), torch.int64),
            "start": ((b,), torch.int64),
            "stop": ((b,), torch.int64),
        }
        arrays = {}
        for name, (shape, dtype) in expect.items():
            x = getattr(out, name)
            if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
                raise ValueError(f"out.{name} must be a CPU tensor")
            if x.dtype != dtype or tuple(x.shape) != shape:
                raise ValueError(
                    f"out.{name} must be {dtype} of shape {shape}, got {x.dtype} {tuple(x.shape)}"
                )
            if not x.is_contiguous():
                raise ValueError(f"out.{name} must be contiguous")
            arrays[name] = x.numpy()
        if len(self._out_cache) > 8:  # a few prefetch buffers at most
            self._out_cache.clear()
        tensors = tuple(getattr(out, f) for f in _BATCH_FIELDS)
        self._out_cache[id(out)] = (tensors, tuple((x.data_ptr(), x.shape, x.dtype) for x in tensors), arrays)
        return out, arrays

    def _gather_locked(
        self, view: _View, ep: np.ndarray, start: np.ndarray, seq_len: int, out: Batch | None
    ) -> Batch:
        return self._gather_into(view, ep, start, seq_len, *self._out_arrays(out, ep.shape[0], seq_len))

    def _gather_into(
        self,
        view: _View,
        ep: np.ndarray,
        start: np.ndarray,
        seq_len: int,
        batch: Batch,
        arrays: dict[str, np.ndarray],
    ) -> Batch:
        arrays["episode_id"][...] = ep
        arrays["start"][...] = start
        arrays["stop"][...] = start + seq_len
        if self.backend == "cpp":
            self._get_reader().gather(
                view.n_rows,
                view.lengths,
                view.ep_chunk_begin,
                view.chunk_offset,
                view.chunk_row,
                view.chunk_len,
                np.ascontiguousarray(ep, dtype=np.int64),
                np.ascontiguousarray(start, dtype=np.int64),
                arrays["obs"],
                arrays["act"],
                arrays["rew"],
                arrays["end"],
                arrays["trunc"],
                arrays["mask_padding"],
            )
        else:
            rows, mask = sampling.segment_rows(
                ep, start, seq_len, view.lengths, view.ep_chunk_begin, view.chunk_offset, view.chunk_row
            )
            sampling.gather_numpy(self._numpy_arrays(view.n_rows), rows, mask, arrays)
        return batch

    def gather(self, episode_id: Any, start: Any, stop: Any, out: Batch | None = None) -> Batch:
        """Segments given explicitly: episode ids, starts and stops, int64 (B,), all of one length L >= 1.

        Steps outside the episode are zero with ``mask_padding`` False.
        """
        ep = np.asarray(
            _as_numpy(episode_id, "episode_id") if isinstance(episode_id, torch.Tensor) else episode_id
        )
        start_a = np.asarray(_as_numpy(start, "start") if isinstance(start, torch.Tensor) else start)
        stop_a = np.asarray(_as_numpy(stop, "stop") if isinstance(stop, torch.Tensor) else stop)
        for name, x in (("episode_id", ep), ("start", start_a), ("stop", stop_a)):
            if x.ndim != 1 or x.dtype.kind not in "iu":
                raise ValueError(f"{name} must be a 1-d integer array, got {x.dtype} {x.shape}")
        if not ep.shape == start_a.shape == stop_a.shape or ep.shape[0] == 0:
            raise ValueError(
                f"episode_id, start and stop must have the same non-zero length, got "
                f"{ep.shape[0]}, {start_a.shape[0]}, {stop_a.shape[0]}"
            )
        seq = stop_a.astype(np.int64) - start_a.astype(np.int64)
        if np.any(seq != seq[0]) or seq[0] < 1:
            raise ValueError("stop - start must be the same for every segment and >= 1")
        with self._lock:
            self._check_open()
            n = self.num_episodes
            if np.any((ep < 0) | (ep >= n)):
                bad = int(ep[(ep < 0) | (ep >= n)][0])
                raise KeyError(f"unknown episode id {bad} (the store holds {n} episodes)")
            return self._gather_locked(
                self._view(), ep.astype(np.int64), start_a.astype(np.int64), int(seq[0]), out
            )

    def load_episode(self, episode_id: int) -> Episode:
        """All steps of one episode as NumPy arrays."""
        with self._lock:
            self._check_open()
            ep = self._check_episode_id(episode_id)
            length = self._lengths[ep]
            batch = self._gather_locked(self._view(), np.array([ep]), np.array([0]), length, None)
        return Episode(*(getattr(batch, f)[0].numpy() for f in FIELDS))

    def sample(
        self,
        consumer: str,
        batch_size: int,
        seq_len: int,
        pad_mode: str = "both",
        alpha: float = 0.0,
        seed: int | np.random.Generator | None = None,
        update_counts: bool = True,
        out: Batch | None = None,
    ) -> Batch:
        """Draw ``batch_size`` segments of ``seq_len`` steps (SPEC section 6) for ``consumer``.

        Episodes are picked with probability ∝ (1 / (1 + n_i)) ** alpha, where n_i counts the segments
        ``consumer`` already drew from episode i (incremented here when ``update_counts``). ``seed`` is an
        int (``np.random.default_rng(seed)``) or a Generator that is advanced. ``out`` receives the batch
        (see :meth:`allocate_batch`); it is returned.
        """
        b = self._check_positive("batch_size", batch_size)
        t = self._check_positive("seq_len", seq_len)
        mode = sampling.check_pad_mode(pad_mode)
        alpha = self._check_alpha(alpha)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        with self._lock:
            self._check_open()
            counts = self._counts_for(consumer)
            if self.num_episodes == 0:
                raise ValueError(f"cannot sample from an empty replay store ({self.directory})")
            view = self._view()
            batch, arrays = self._out_arrays(out, b, t)  # checked before anything is drawn or counted
            uniforms = sampling.draw_uniforms(rng, b)  # (3, B)
            if self.backend == "cpp":
                core = _native.core
                ep = np.empty(b, dtype=np.int64)
                start = np.empty(b, dtype=np.int64)
                stop = np.empty(b, dtype=np.int64)
                core.replay_draw_segments(counts, view.lengths, alpha, uniforms, t, mode, ep, start, stop)
                if update_counts:
                    core.replay_add_counts(counts, ep)
            else:
                ep, start, stop = sampling.draw_segments(counts, view.lengths, alpha, uniforms, t, pad_mode)
                if update_counts:
                    np.add.at(counts, ep, 1)
            return self._gather_into(view, ep, start, t, batch, arrays)

    def sample_async(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Batch]:
        """:meth:`sample` on a background thread (the gather releases the GIL); returns a Future.

        Calls run one at a time in submission order, so a sequence of ``sample_async`` calls gives the same
        batches and counts as the same ``sample`` calls.
        """
        with self._lock:
            self._check_open()
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="replay-prefetch"
                )
            return self._executor.submit(self.sample, *args, **kwargs)


class Prefetcher:
    """Iterator over batches of one consumer, keeping the next batch in flight while the caller trains.

    Seeds of successive batches come from ``np.random.default_rng(seed)``. With ``num_buffers`` > 0 the
    batches are written into that many (>= 2) preallocated, optionally pinned, buffers used round robin: a
    yielded batch stays valid until ``num_buffers - 1`` further batches were taken. With ``num_buffers=0``
    every batch gets fresh buffers.
    """

    def __init__(
        self,
        store: ReplayStore,
        consumer: str,
        batch_size: int,
        seq_len: int,
        pad_mode: str = "both",
        alpha: float = 0.0,
        seed: int | None = None,
        update_counts: bool = True,
        num_buffers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if num_buffers == 1 or num_buffers < 0:
            raise ValueError(f"num_buffers must be 0 or >= 2 (one batch is in flight), got {num_buffers}")
        self.store = store
        self._kwargs = {
            "consumer": consumer,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "pad_mode": pad_mode,
            "alpha": alpha,
            "update_counts": update_counts,
        }
        self._rng = np.random.default_rng(seed)
        self._buffers = [store.allocate_batch(batch_size, seq_len, pin_memory) for _ in range(num_buffers)]
        self._next_buffer = 0
        self._pending: concurrent.futures.Future[Batch] | None = None

    def _submit(self) -> concurrent.futures.Future[Batch]:
        out = None
        if self._buffers:
            out = self._buffers[self._next_buffer]
            self._next_buffer = (self._next_buffer + 1) % len(self._buffers)
        seed = int(self._rng.integers(0, 2**63 - 1))
        return self.store.sample_async(seed=seed, out=out, **self._kwargs)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self._pending is None:
            self._pending = self._submit()
        batch = self._pending.result()
        self._pending = self._submit()
        return batch

    def close(self) -> None:
        """Wait for the batch in flight (its counts are already applied)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
