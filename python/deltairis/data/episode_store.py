"""The on-disk episode store: data files, write lock, index, commit and crash recovery.

Layout of a store directory::

    obs.u8      frames, raw uint8 rows of prod(obs_shape) bytes (3*64*64 = 12288 by default)
    act.i64     actions, int64 per step
    rew.f32     rewards, float32 per step
    end.u8      termination flags, uint8 per step
    trunc.u8    truncation (time limit) flags, uint8 per step
    index.npz   the committed state: rows in use, episode lengths, chunk table, visit counts
                (and, with compressed frames, the blocks and bytes of obs.lz4 / obs.blk in use)
    lock        held (flock) by the one process that has the store open for writing

(the data files are those of :data:`deltairis.data.fields.STEP_FIELDS`; a store created with
``compression="lz4"`` keeps its frames in LZ4 blocks instead, :mod:`deltairis.data.frame_codec`, and
reopening it with another setting is refused). Steps are appended at the end
of the data files in arrival order; an episode is a list of *chunks* (runs of consecutive file rows), so
an unfinished episode can grow across collection rounds while other episodes are appended in between.
``commit()`` fsyncs the data files, then replaces ``index.npz`` atomically (temp file, fsync, rename,
fsync of the directory). Reopening trims the data files to the rows the index names, so a crash at any
point gives back exactly the last committed state.

Within the process that writes, everything appended is visible at once (sampling, ``load_episode``);
other processes see the committed state. A *follower* (``follow=True``: read-only, the store of a writer in
another process) starts empty and shows the state of the writer's last commit as of its latest
:meth:`~EpisodeStore.refresh`: it never reads an index or a data row the writer has not committed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deltairis.checkpoint import free_space
from deltairis.data import frame_codec
from deltairis.data.fields import FIELDS_BY_NAME, STEP_FIELD_NAMES, STEP_FIELDS
from deltairis.errors import ReplayStoreError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: the format version of a store with compressed frames (earlier versions refuse it by its version)
COMPRESSED_FORMAT_VERSION = 2
INDEX_NAME = "index.npz"
LOCK_NAME = "lock"
# field -> (file name, dtype of one element), from the field table
DATA_FILES: dict[str, tuple[str, np.dtype]] = {f.name: (f.file, f.dtype) for f in STEP_FIELDS}  # type: ignore[misc]
FIELDS = STEP_FIELD_NAMES
DEFAULT_OBS_SHAPE = (3, 64, 64)


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


if tuple(f.name for f in fields(Episode)) != STEP_FIELD_NAMES:  # pragma: no cover - a programming error
    raise RuntimeError("Episode and deltairis.data.fields.STEP_FIELDS list different fields")


@dataclass(frozen=True)
class ChunkView:
    """An immutable snapshot of the episode table used by one sampling call."""

    n_rows: int
    lengths: np.ndarray  # int64 (N,)
    ep_chunk_begin: np.ndarray  # int64 (N + 1,): chunks of episode e are [begin[e], begin[e + 1])
    chunk_offset: np.ndarray  # int64 (C,) first episode step of each chunk
    chunk_row: np.ndarray  # int64 (C,) first file row of each chunk
    chunk_len: np.ndarray  # int64 (C,)
    n_blocks: int = 0  # compressed frames: blocks of obs.blk in use


def as_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array (a tensor is detached and moved to the host), or ``ValueError``."""
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


def _pread_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.preadv(fd, [data], offset)
        if n <= 0:  # pragma: no cover - the index never names rows past the end of a file
            raise OSError(errno.EIO, "short read")
        data = data[n:]
        offset += n


class EpisodeStore:
    """Episodes of (obs, act, rew, end, trunc) on disk, with per-consumer visit counts; no sampling.

    See :class:`~deltairis.data.ReplayStore` for the arguments. Every public method is thread safe
    (``self.lock``, reentrant); a caller holding ``lock`` sees a consistent episode table and counts.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        create: bool = True,
        read_only: bool = False,
        obs_shape: tuple[int, ...] | None = None,
        follow: bool = False,
        compression: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._wanted_compression = None if compression is None else frame_codec.check_compression(compression)
        self.read_only = read_only or follow
        self.follow = follow
        self._index_key: bytes | None = None  # a follower: the digest of the index it took
        self.lock = threading.RLock()
        self._fds: dict[str, int] = {}
        self._lock_fd: int | None = None
        self._view_cache: ChunkView | None = None
        self._closed = False

        index_path = self.directory / INDEX_NAME
        if follow:  # nothing is read before the first refresh(): the writer may not have committed yet
            self._init_empty(tuple(int(s) for s in (obs_shape or DEFAULT_OBS_SHAPE)), compression or "none")
            return
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
                self._check_compression()
            else:
                self._init_empty(
                    tuple(int(s) for s in (obs_shape or DEFAULT_OBS_SHAPE)), compression or "none"
                )
            self._open_data_files()
            if not read_only:  # left behind by a crash during commit
                (self.directory / (INDEX_NAME + ".tmp")).unlink(missing_ok=True)
        except BaseException:
            EpisodeStore.close(self)
            raise

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

    def _check_compression(self) -> None:
        wanted = self._wanted_compression
        if wanted is not None and wanted != self.compression:
            raise ReplayStoreError(
                f"replay store {self.directory} was written with compression '{self.compression}', not "
                f"'{wanted}': open it with compression='{self.compression}' (data.compression) or convert it "
                f"with `deltairis-store convert {self.directory} --compression {wanted}`"
            )

    def _init_empty(self, obs_shape: tuple[int, ...], compression: str) -> None:
        if len(obs_shape) == 0 or any(s < 1 for s in obs_shape):
            raise ValueError(f"obs_shape must be a non-empty tuple of positive sizes, got {obs_shape}")
        self.obs_shape = obs_shape
        self.compression = compression
        self._blocks = np.zeros((0, frame_codec.BLOCK_COLUMNS), dtype=np.int64)  # compressed frames
        self._n_blocks = 0
        self._obs_bytes = 0
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
        version = meta.get("format_version")
        if version not in (FORMAT_VERSION, COMPRESSED_FORMAT_VERSION):
            raise ReplayStoreError(
                f"replay index {path} has format version {version}, expected {FORMAT_VERSION} or "
                f"{COMPRESSED_FORMAT_VERSION}"
            )
        try:
            compression = str(meta.get("compression", "none"))
            if compression not in frame_codec.COMPRESSIONS or (compression != "none") != (
                version == COMPRESSED_FORMAT_VERSION
            ):
                raise ValueError(f"compression {compression!r} in a store of format version {version}")
            self._init_empty(tuple(int(s) for s in meta["obs_shape"]), compression)
            n_blocks, obs_bytes = int(meta.get("n_blocks", 0)), int(meta.get("obs_bytes", 0))
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
        self._n_blocks, self._obs_bytes = n_blocks, obs_bytes

    def _row_bytes(self, field: str) -> int:
        return FIELDS_BY_NAME[field].row_bytes(self.obs_shape)

    def data_files(self) -> dict[str, tuple[str, int]]:
        """Per data file key (a step field, or ``"blocks"``): its file name and the bytes in use."""
        out = {f.name: (str(f.file), self._n_rows * f.row_bytes(self.obs_shape)) for f in STEP_FIELDS}
        if self.compression != "none":
            out["obs"] = (frame_codec.FRAMES_FILE[self.compression], self._obs_bytes)
            out["blocks"] = (frame_codec.BLOCKS_FILE, self._n_blocks * frame_codec.BLOCK_COLUMNS * 8)
        return out

    def _open_data_files(self) -> None:
        for key, (name, want) in self.data_files().items():
            path = self.directory / name
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
            self._fds[key] = fd
            size = os.fstat(fd).st_size
            if size < want:
                raise ReplayStoreError(
                    f"replay store {self.directory} is corrupt: {name} holds {size} bytes, "
                    f"the index needs {want}"
                )
            if size > want and not self.read_only:
                # Rows appended after the last commit (a crash, or a close without commit): drop them.
                logger.warning(
                    "replay store %s: dropping %d uncommitted bytes of %s",
                    self.directory,
                    size - want,
                    name,
                )
                os.ftruncate(fd, want)
        if self.compression != "none":
            self._load_blocks()

    def _load_blocks(self) -> None:
        blocks = np.zeros((self._n_blocks, frame_codec.BLOCK_COLUMNS), dtype=np.int64)
        if self._n_blocks:
            _pread_all(self._fds["blocks"], memoryview(blocks).cast("B"), 0)
        frame_codec.check_blocks(blocks, self._n_rows, self._obs_bytes, str(self.directory))
        self._blocks = blocks

    def close(self) -> None:
        """Close the files and release the write lock; uncommitted appends are dropped at the next open."""
        if self._closed:
            return
        self._closed = True
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
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

    def refresh(self) -> bool:
        """A follower: take the writer's last commit (episodes, visit counts, frame shape) when the index
        changed since the last call. Returns whether it did; no commit yet leaves the store empty.

        The writer replaces its index atomically after the data it names is durable, so the state taken
        is always a complete commit. Raises :class:`ReplayStoreError` when the index is corrupt or names
        more rows than the data files hold."""
        with self.lock:
            self._check_open()
            if not self.follow:
                raise ReplayStoreError(
                    f"replay store {self.directory}: refresh() is for followers (follow=True)"
                )
            path = self.directory / INDEX_NAME
            try:
                key = hashlib.sha256(path.read_bytes()).digest()  # the commit, whatever its file times
            except FileNotFoundError:
                if self._index_key is None:
                    return False
                raise ReplayStoreError(
                    f"replay store {self.directory}: the index disappeared (was the store deleted?)"
                ) from None
            if key == self._index_key:
                return False
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}
            self._load_index(path)
            self._open_data_files()
            self._index_key = key
            self._view_cache = None
            self._forget_file_contents()
            return True

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

    # ------------------------------------------------------------------------------------------------
    # appending
    # ------------------------------------------------------------------------------------------------
    def _validate_steps(
        self, obs: Any, act: Any, rew: Any, end: Any, trunc: Any, allow_empty: bool
    ) -> dict[str, Any]:
        if isinstance(obs, frame_codec.PackedFrames):  # blocks of a compressed store, kept as they are
            if obs.frame_bytes != math.prod(self.obs_shape):
                raise ValueError(
                    f"packed frames of {obs.frame_bytes} bytes, the store's hold {self.obs_shape}"
                )
            packed = obs
            obs = np.zeros((obs.num_steps, *self.obs_shape), np.uint8)  # checked like frames, never written
            out = self._validate_steps(obs, act, rew, end, trunc, allow_empty)
            out["obs"] = packed if self.compression != "none" else packed.unpack(self.obs_shape)
            return out
        obs = as_numpy(obs, "obs")
        if obs.dtype != np.uint8:
            raise ValueError(f"obs must have dtype uint8, got {obs.dtype}")
        if obs.ndim != 1 + len(self.obs_shape) or tuple(obs.shape[1:]) != self.obs_shape:
            raise ValueError(
                f"obs must have shape (T, {', '.join(map(str, self.obs_shape))}), got {obs.shape}"
            )
        t = obs.shape[0]
        if t == 0 and not allow_empty:
            raise ValueError("obs must hold at least one step (T >= 1)")
        given = dict(zip(STEP_FIELD_NAMES, (obs, act, rew, end, trunc)))
        out = {"obs": np.ascontiguousarray(obs)}
        for f in STEP_FIELDS:
            if f.frame:
                continue
            x = as_numpy(given[f.name], f.name)
            if x.dtype.kind not in f.accepts:
                raise ValueError(f"{f.name} has dtype {x.dtype}, expected {f.dtype.name}")
            if x.shape != (t,):
                raise ValueError(f"{f.name} must have shape ({t},) to match obs, got {x.shape}")
            if f.flag and x.dtype.kind == "u" and t and int(x.max()) > 1:
                raise ValueError(f"{f.name} must hold only 0 and 1, got a {int(x.max())}")
            out[f.name] = np.ascontiguousarray(x, dtype=f.dtype)
        return out

    def _append_rows(self, data: dict[str, Any]) -> int:
        """Write the steps after the last row; on failure trims the files back and raises. Returns the row."""
        row = self._n_rows
        t = data["act"].shape[0]
        sizes = {key: size for key, (_, size) in self.data_files().items()}
        packed = data["obs"] if isinstance(data["obs"], frame_codec.PackedFrames) else None
        writes = {
            field: memoryview(data[field]).cast("B") for field in FIELDS if packed is None or field != "obs"
        }
        blocks = None
        if packed is not None:
            payload, blocks = b"".join(packed.blocks), packed.table(row, self._obs_bytes)
            writes["obs"] = memoryview(payload)
            writes["blocks"] = memoryview(blocks).cast("B")
        elif self.compression != "none":
            payload, blocks = frame_codec.encode(data["obs"], row, self._obs_bytes)
            writes["obs"] = memoryview(payload)
            writes["blocks"] = memoryview(blocks).cast("B")
        try:
            for key, buf in writes.items():
                _pwrite_all(self._fds[key], buf, sizes[key])
        except OSError as exc:
            for key, size in sizes.items():
                try:
                    os.ftruncate(self._fds[key], size)
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
                f"([Errno {exc.errno}] {exc.strerror}; {free_space(self.directory)}); nothing was appended and "
                "the committed state is intact"
            ) from exc
        if blocks is not None:
            n, k = self._n_blocks, blocks.shape[0]
            if n + k > self._blocks.shape[0]:  # grow by doubling: appends cost O(1) amortised
                grown = np.zeros((max(2 * self._blocks.shape[0], n + k), blocks.shape[1]), dtype=np.int64)
                grown[:n] = self._blocks[:n]
                self._blocks = grown
            self._blocks[n : n + k] = blocks
            self._n_blocks += k
            self._obs_bytes += len(writes["obs"])
        self._n_rows += t
        return row

    def add_episode(self, obs: Any, act: Any, rew: Any, end: Any, trunc: Any) -> int:
        """Append a new episode of T >= 1 steps; returns its id (ids are 0, 1, 2...)."""
        with self.lock:
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
        with self.lock:
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
        with self.lock:
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
                    f"cannot commit replay store {self.directory}: [Errno {exc.errno}] {exc.strerror} "
                    f"({free_space(self.directory)}); the previous committed state is intact and the appended "
                    "data is still pending"
                ) from exc
            self._committed_rows = self._n_rows

    def clear(self) -> None:
        """Remove every episode and visit count, durably (the reference empties its test store this way).

        The empty index is committed first, then the data files are truncated, so a crash in between
        reopens as an empty store (reopening trims rows the index does not name).
        """
        with self.lock:
            self._check_writable()
            consumers = list(self._counts)
            self._init_empty(self.obs_shape, self.compression)
            self._counts = {name: np.zeros(0, dtype=np.int64) for name in consumers}
            self._view_cache = None
            self._forget_file_contents()
            self.commit()
            try:
                for fd in self._fds.values():
                    os.ftruncate(fd, 0)
            except OSError as exc:
                raise ReplayStoreError(
                    f"cannot truncate the data files of replay store {self.directory}: "
                    f"[Errno {exc.errno}] {exc.strerror}; the committed (empty) index is intact"
                ) from exc

    def _forget_file_contents(self) -> None:
        """Hook of :meth:`clear`, called before the data files shrink: drop maps of their contents."""

    def _index_payload(self) -> dict[str, np.ndarray]:
        names = sorted(self._counts)
        n = self.num_episodes
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "obs_shape": list(self.obs_shape),
            "n_rows": self._n_rows,
            "consumers": names,
        }
        if self.compression != "none":
            meta.update(
                format_version=COMPRESSED_FORMAT_VERSION,
                compression=self.compression,
                n_blocks=self._n_blocks,
                obs_bytes=self._obs_bytes,
            )
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

    def view(self) -> ChunkView:
        """The current episode table, sorted by episode then offset (cached until the next append)."""
        with self.lock:
            if self._view_cache is None:
                lengths = np.asarray(self._lengths, dtype=np.int64)
                chunks = np.asarray(self._chunks, dtype=np.int64).reshape(-1, 4)
                order = np.lexsort((chunks[:, 1], chunks[:, 0]))  # by episode, then offset
                chunks = chunks[order]
                begin = np.searchsorted(chunks[:, 0], np.arange(lengths.shape[0] + 1), side="left").astype(
                    np.int64
                )
                self._view_cache = ChunkView(
                    n_rows=self._n_rows,
                    lengths=lengths,
                    ep_chunk_begin=begin,
                    chunk_offset=np.ascontiguousarray(chunks[:, 1]),
                    chunk_row=np.ascontiguousarray(chunks[:, 2]),
                    chunk_len=np.ascontiguousarray(chunks[:, 3]),
                    n_blocks=self._n_blocks,
                )
            return self._view_cache

    def load_episode(self, episode_id: int) -> Episode:
        """All steps of one episode as NumPy arrays (read from the data files, chunk by chunk)."""
        with self.lock:
            self._check_open()
            ep = self._check_episode_id(episode_id)
            view = self.view()
            chunks = range(int(view.ep_chunk_begin[ep]), int(view.ep_chunk_begin[ep + 1]))
            arrays = {}
            for f in STEP_FIELDS:
                arr = np.empty((self._lengths[ep], *f.step_shape(self.obs_shape)), f.dtype)
                row_bytes = f.row_bytes(self.obs_shape)
                for c in chunks:
                    offset, row, n = (
                        int(view.chunk_offset[c]),
                        int(view.chunk_row[c]),
                        int(view.chunk_len[c]),
                    )
                    if f.frame and self.compression != "none":
                        self._read_frames(row, n, arr[offset : offset + n])
                        continue
                    _pread_all(
                        self._fds[f.name], memoryview(arr[offset : offset + n]).cast("B"), row * row_bytes
                    )
                arrays[f.name] = arr
        return Episode(**arrays)

    def _read_frames(self, row: int, count: int, out: np.ndarray) -> None:
        """Frames of file rows [row, row + count) of a compressed store into ``out`` (count, *frame)."""
        flat = out.reshape(count, -1)
        for k in frame_codec.block_span(self._blocks[: self._n_blocks], row, count):
            first, n, off, size = (int(v) for v in self._blocks[k])
            data = bytearray(size)
            _pread_all(self._fds["obs"], memoryview(data), off)
            frames = frame_codec.decode(data, n, flat.shape[1])
            lo, hi = max(row, first), min(row + count, first + n)
            flat[lo - row : hi - row] = frames[lo - first : hi - first]

    def packed_frames(self, episode_id: int, start: int, stop: int) -> frame_codec.PackedFrames | None:
        """Steps [start, stop) of an episode's frames as the blocks this store holds them in, or None
        (frames not compressed, or the steps do not begin and end at block boundaries)."""
        with self.lock:
            if self.compression == "none" or not 0 <= start < stop:
                return None
            ep = self._check_episode_id(episode_id)
            view = self.view()
            blocks, data = [], []
            for c in range(int(view.ep_chunk_begin[ep]), int(view.ep_chunk_begin[ep + 1])):
                lo = max(start, int(view.chunk_offset[c]))
                hi = min(stop, int(view.chunk_offset[c] + view.chunk_len[c]))
                if lo >= hi:
                    continue
                row = int(view.chunk_row[c]) + lo - int(view.chunk_offset[c])
                span = frame_codec.block_span(self._blocks[: self._n_blocks], row, hi - lo)
                table = self._blocks[span.start : span.stop]
                if int(table[0, 0]) != row or int(table[-1, 0] + table[-1, 1]) != row + hi - lo:
                    return None
                for first, n, off, size in table.tolist():
                    buf = bytearray(size)
                    _pread_all(self._fds["obs"], memoryview(buf), off)
                    blocks.append(bytes(buf))
                    data.append(n)
            return frame_codec.PackedFrames(tuple(blocks), tuple(data), math.prod(self.obs_shape))

    def compressed_blocks(self) -> np.ndarray:
        """The block table of the compressed frames in use, int64 (K, 4) (a copy; empty without)."""
        with self.lock:
            return self._blocks[: self._n_blocks].copy()

    # ------------------------------------------------------------------------------------------------
    # visit counts
    # ------------------------------------------------------------------------------------------------
    def visit_counts(self, consumer: str) -> np.ndarray:
        """How often ``consumer`` sampled each episode, int64 (N,) (a copy; zeros for a new consumer)."""
        with self.lock:
            return self.counts_for(consumer).copy()

    def counts_for(self, consumer: str) -> np.ndarray:
        """The live counts of ``consumer``, int64 (N,), grown to the episodes stored (hold ``lock``)."""
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
