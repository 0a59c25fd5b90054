"""Atomic, crash-consistent checkpoint files.

Every file is written to a temporary name in the same directory, flushed and ``fsync``-ed, then
renamed over its final name (``os.replace`` is atomic on POSIX), and the directory is ``fsync``-ed.

A *checkpoint set* (``last.pt``, ``optimizer.pt``, ``trainer_state.pt``) must change together. The
set is written in two phases with a journal:

1. every member is written and synced under ``<name>.next``; then ``checkpoints/.journal.json``
   (listing the members and the epoch) is written atomically: from this instant the new set is
   *committed*;
2. the members are renamed over their final names and the journal is removed.

:func:`recover_checkpoint_set` (called before reading a run) completes phase 2 when a journal exists,
so a crash at any point leaves either the old set or the new one, never a mix. A file that cannot be
read is reported with :class:`CorruptCheckpointError` and is never overwritten by the trainer.

:class:`BackgroundWriter` runs such writes on a thread, one at a time, so that training goes on while
the files are written and synced; the caller serializes the members first (:func:`serialize_members`),
so nothing it changes afterwards reaches the files, and a failed write is raised by the next
:meth:`BackgroundWriter.wait`.

Reading is data only: :func:`load_safe` (and :func:`load_torch_file`) read with ``torch.load(...,
weights_only=True)``, which builds tensors, numbers, strings, bytes and plain containers and never calls
anything a file names. A file that names other callables is refused without loading it: as
:class:`UnsafeCheckpointError` (it would run code: crafted or damaged) or, when it only names the NumPy
types earlier versions pickled, as :class:`LegacyCheckpointError` (load it once with
``common.trust_checkpoint=true``; :func:`load_trusted` is that one unsafe read). :func:`to_plain` and
:func:`from_plain` turn NumPy arrays and scalars into such plain data and back, bit for bit.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickletools
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltairis.errors import CheckpointWriteError, CorruptCheckpointError

logger = logging.getLogger(__name__)

JOURNAL_NAME = ".journal.json"
NEXT_SUFFIX = ".next"


def free_space(path: Path) -> str:
    """Free space on the filesystem holding ``path`` (or its nearest existing parent), for messages."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free"


def describe_write_error(path: Path, exc: OSError) -> str:
    """``cannot write PATH: the disk is full ([Errno 28] ...); 0.0 MiB free on that filesystem``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
    elif exc.errno == errno.EFBIG:
        what = "the file size limit was reached"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "the folder is not writable"
    else:
        what = "write failed"
    return f"cannot write {path}: {what} ([Errno {exc.errno}] {exc.strerror}); {free_space(path)} on that filesystem"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename + directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write_bytes(path, torch_bytes(obj))


class UnsafeCheckpointError(CorruptCheckpointError):
    """A checkpoint file that is not plain data: loading it would call the functions it names (a crafted
    or damaged file). It is never loaded, and left untouched."""


class LegacyCheckpointError(CorruptCheckpointError):
    """A checkpoint file in the format of an earlier delta-iris version (pickled NumPy arrays and env
    objects), which only a full, code-running unpickling reads: ``common.trust_checkpoint=true`` loads it
    once and rewrites the set in the safe format."""


#: what ``torch.save`` of tensors and plain containers names (``torch.load(weights_only=True)`` reads these)
_PLAIN_NAMES = frozenset({"collections.OrderedDict", "_codecs.encode", "torch.Size", "torch.device"})
#: what earlier versions' trainer_state.pt also named: NumPy arrays, scalars and dtypes (NumPy 1 and 2
#: module names), and the paused collection's statistics and pending steps
_LEGACY_NAMES = frozenset(
    {
        f"numpy.{core}.multiarray.{name}"
        for core in ("core", "_core")
        for name in ("_reconstruct", "scalar")
    }
    | {"numpy.ndarray", "numpy.dtype", "deltairis.train.collector.CollectStats", "deltairis.train.collector._Pending"}
)


def _is_plain_name(name: str) -> bool:
    """A name ``torch.save`` writes for tensors: rebuild functions, storages, dtypes, containers."""
    if name in _PLAIN_NAMES or name.startswith("torch._utils._rebuild_"):
        return True
    module, _, attr = name.rpartition(".")
    return module == "torch" and (attr.endswith("Storage") or isinstance(getattr(torch, attr, None), torch.dtype))


def _is_legacy_name(name: str) -> bool:
    """A name an earlier version's checkpoint files held beyond plain tensors (NumPy values, collector records)."""
    return name in _LEGACY_NAMES or name.startswith("numpy.dtypes.") and name.endswith("DType")


TRUST_HINT = (
    "If you trust this run folder (you, or a job you trust, wrote it), resume it once with "
    "common.trust_checkpoint=true: that reads it with Python's full unpickling, which runs any code a "
    "crafted file holds, and rewrites the checkpoint set in the safe format"
)


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a torch file (``*/data.pkl`` of the zip format, else the file itself)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise ValueError("no data.pkl in the archive")
            return z.read(names[0])
    return path.read_bytes()


def pickle_globals(data: bytes) -> set[str]:
    """The ``module.name`` of every callable or class a pickle stream names, read without unpickling.

    (``GLOBAL``, and ``STACK_GLOBAL`` with its two strings, memoized or not; a name that cannot be told
    statically is reported as ``?``.) Raises ``ValueError`` for a stream that is not a pickle.
    """
    found: set[str] = set()
    stack: list[object] = []  # the last pushed strings (and placeholders), enough for STACK_GLOBAL
    memo: dict[int, object] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "GLOBAL":
                found.add(str(arg).replace(" ", "."))
                stack.append(None)
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                stack.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1] if stack else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg)))
            elif name == "STACK_GLOBAL":
                module, qual = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
                ok = isinstance(module, str) and isinstance(qual, str)
                found.add(f"{module}.{qual}" if ok else "?")
                stack.append(None)
            elif name == "STOP":
                break
            else:
                stack.append(None)
            del stack[:-8]
    except Exception as exc:  # pickletools raises ValueError and others on a stream that is no pickle
        raise ValueError(f"not a pickle stream ({exc})") from exc
    return found


def _unexpected_globals(path: Path) -> set[str] | None:
    """The names ``path`` holds beyond what plain tensors need (None: the file is no readable pickle)."""
    try:
        names = pickle_globals(_pickle_bytes(path))
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError):
        return None
    return {n for n in names if not _is_plain_name(n)}


def load_safe(path: Path | str, what: str = "checkpoint", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, numbers, strings, bytes, containers.

    Raises (each naming ``path``): ``FileNotFoundError``; :class:`UnsafeCheckpointError` for a file that
    would run code when loaded (never loaded); :class:`LegacyCheckpointError` for an earlier version's
    format (see :data:`TRUST_HINT`); :class:`CorruptCheckpointError` for a truncated or damaged file.
    ``mmap``: map the tensors instead of reading them (a quick check of a large file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        unexpected = _unexpected_globals(path)
        if unexpected and all(_is_legacy_name(n) for n in unexpected):
            raise LegacyCheckpointError(
                f"{what} at {path} was written by an earlier delta-iris version, in a format that can run code "
                f"when it is loaded; it was not loaded and was left untouched. {TRUST_HINT}."
            ) from None
        if unexpected:
            names = ", ".join(sorted(unexpected)[:5])
            raise UnsafeCheckpointError(
                f"{what} at {path} is not plain data: loading it would call {names}. A delta-iris checkpoint "
                "only holds tensors, numbers and strings, so this file was crafted or damaged; it was not "
                "loaded (nothing in it ran) and was left untouched. Restore it from a backup you trust."
            ) from None
        raise CorruptCheckpointError(
            f"{what} at {path} is corrupt or truncated ({type(exc).__name__}: {exc}); it was left untouched. "
            "Restore it from a backup or start a new run."
        ) from exc


def load_torch_file(path: Path, what: str) -> Any:
    """A checkpoint file read as data (:func:`load_safe`); unreadable files raise CorruptCheckpointError."""
    return load_safe(path, what)


def refuse_foreign_names(names: set[str], allowed: Callable[[str], bool], what: str) -> None:
    """Raise :class:`UnsafeCheckpointError` when a pickle names something ``allowed`` does not accept:
    even a trusted load only takes what an earlier delta-iris version wrote."""
    foreign = sorted(n for n in names if not allowed(n))
    if foreign:
        raise UnsafeCheckpointError(
            f"{what} names {', '.join(foreign[:5])}, which no delta-iris version wrote: it was crafted or "
            "damaged, and is not loaded even with common.trust_checkpoint=true; it was left untouched"
        )


def load_trusted(path: Path, what: str) -> Any:
    """The one code-running read of a file: ``torch.load(weights_only=False)`` of an earlier version's
    file, only when the user vouched for the run folder (``common.trust_checkpoint=true``). A file that
    names anything beyond tensors and the NumPy values earlier versions pickled is refused first."""
    path = Path(path)
    try:
        names = pickle_globals(_pickle_bytes(path))
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as exc:
        raise CorruptCheckpointError(f"{what} at {path} is not a readable torch file ({exc}); it was left untouched") from exc
    refuse_foreign_names(names, lambda n: _is_plain_name(n) or _is_legacy_name(n), f"{what} at {path}")
    logger.warning(
        "common.trust_checkpoint=true: loading %s with full unpickling, which runs any code the file holds", path
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user: see TRUST_HINT
    except Exception as exc:
        raise CorruptCheckpointError(
            f"{what} at {path} is corrupt or truncated ({type(exc).__name__}: {exc}); it was left untouched."
        ) from exc


_ND_KEY = "__ndarray__"
_NS_KEY = "__numpy_scalar__"
_PLAIN_KINDS = "biufcSU"  # NumPy dtype kinds stored as raw bytes (no objects, no structured types)


def _dtype(spec: object, where: str) -> np.dtype:
    try:
        dtype = np.dtype(str(spec))
    except TypeError as exc:
        raise CorruptCheckpointError(f"{where}: invalid dtype {spec!r}") from exc
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None:
        raise CorruptCheckpointError(f"{where}: dtype {spec!r} is not a plain numeric or string type")
    return dtype


def to_plain(obj: Any) -> Any:
    """``obj`` with every NumPy array and scalar replaced by bytes in a tagged dict (``weights_only``-loadable).

    Dicts, lists, tuples, tensors, strings, bytes, ints, floats, bools and None are kept; anything else
    raises ``TypeError`` (it would not be plain data). :func:`from_plain` gives the same values back,
    dtypes and bits included.
    """
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _PLAIN_KINDS or obj.dtype.fields is not None:
            raise TypeError(f"cannot store a NumPy array of dtype {obj.dtype} as plain data")
        return {_ND_KEY: obj.tobytes(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _PLAIN_KINDS:
            raise TypeError(f"cannot store a NumPy scalar of dtype {obj.dtype} as plain data")
        return {_NS_KEY: obj.tobytes(), "dtype": obj.dtype.str}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if type(obj) is list:
        return [to_plain(v) for v in obj]
    if type(obj) is tuple:  # not a named tuple: its class would be named in the file
        return tuple(to_plain(v) for v in obj)
    if obj is None or type(obj) in (bool, int, float, str, bytes) or isinstance(obj, torch.Tensor):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} as plain data")


def from_plain(obj: Any, where: str = "checkpoint") -> Any:
    """The inverse of :func:`to_plain` (``where`` names the file in errors about a damaged value)."""
    if isinstance(obj, dict):
        if _ND_KEY in obj:
            dtype = _dtype(obj.get("dtype"), where)
            shape = tuple(int(d) for d in obj.get("shape", ()))
            data = obj[_ND_KEY]
            if not isinstance(data, bytes) or len(data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise CorruptCheckpointError(f"{where}: an array of {dtype}{list(shape)} has the wrong size")
            return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        if _NS_KEY in obj:
            dtype = _dtype(obj.get("dtype"), where)
            data = obj[_NS_KEY]
            if not isinstance(data, bytes) or len(data) != dtype.itemsize:
                raise CorruptCheckpointError(f"{where}: a {dtype} scalar has the wrong size")
            return np.frombuffer(data, dtype=dtype)[0]
        return {k: from_plain(v, where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v, where) for v in obj)
    return obj


def non_finite_names(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, with one host synchronisation.

    Same answer as ``not torch.isfinite(t).all()`` per tensor, from one min/max reduction each (NaN
    propagates into both; no full-size boolean temporary): about 2.5x faster on a CPU.
    """
    names = [n for n, t in tensors.items() if t.is_floating_point() and t.numel() > 0]
    if not names:
        return []
    extremes = torch.stack([torch.stack(torch.aminmax(tensors[n].detach())).double() for n in names])
    finite = torch.isfinite(extremes).all(dim=1).cpu()  # the host sync
    return [n for n, ok in zip(names, finite.tolist()) if not ok]


def serialize_members(members: Mapping[str, Any]) -> dict[str, bytes]:
    """The ``torch.save`` bytes of every member (tensors on any device are saved as host copies)."""
    return {name: torch_bytes(obj) for name, obj in members.items()}


def write_checkpoint_set(directory: Path, members: Mapping[str, Any], epoch: int) -> None:
    """Write several torch files as one atomic set (see the module docstring).

    A member is any object ``torch.save`` accepts, or the ``bytes`` :func:`serialize_members` made of it
    (written as they are).

    A failed write (full disk, I/O error, read-only folder) raises :class:`CheckpointWriteError` naming
    the file and the free space. Before the journal is committed the new files are removed and the
    previous set is the checkpoint; after it, :func:`recover_checkpoint_set` (run on resume) completes
    the new set.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recover_checkpoint_set(directory)  # never start a new set on top of an unfinished one
    names = sorted(members)
    target = directory / JOURNAL_NAME
    try:
        for name in names:
            target = directory / f"{name}{NEXT_SUFFIX}"
            member = members[name]
            _write_synced(target, member if isinstance(member, bytes) else torch_bytes(member))
        _fsync_dir(directory)
        target = directory / JOURNAL_NAME
        atomic_write_bytes(target, json.dumps({"epoch": epoch, "members": names}).encode())
    except OSError as exc:
        for name in names:
            with contextlib.suppress(OSError):
                (directory / f"{name}{NEXT_SUFFIX}").unlink(missing_ok=True)
        raise CheckpointWriteError(
            describe_write_error(target, exc) + "; the previous checkpoint set is intact"
        ) from exc
    try:
        _finish(directory, names)
    except OSError as exc:
        raise CheckpointWriteError(
            describe_write_error(directory, exc)
            + "; the new checkpoint set is committed and resuming completes it"
        ) from exc


def _finish(directory: Path, names: list[str]) -> None:
    for name in names:
        nxt = directory / f"{name}{NEXT_SUFFIX}"
        if nxt.exists():
            os.replace(nxt, directory / name)
    _fsync_dir(directory)
    (directory / JOURNAL_NAME).unlink(missing_ok=True)
    _fsync_dir(directory)


class BackgroundWriter:
    """Runs checkpoint writes on a background thread, at most one at a time.

    :meth:`submit` first waits for the write in flight; :meth:`wait` joins it and raises the exception it
    failed with (a :class:`CheckpointWriteError` for a full disk), so an error is never lost: it comes
    out of the next ``submit`` or ``wait``. The thread is not a daemon: an interpreter that exits waits
    for the write to finish.
    """

    def __init__(self, name: str = "deltairis-checkpoint") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_write_seconds = 0.0  # wall time of the last finished write, on its thread

    @property
    def busy(self) -> bool:
        """True while a write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], None]) -> None:
        """Wait for the write in flight (raising its error), then start ``write()`` on a new thread."""
        self.wait()

        def run() -> None:
            t0 = time.perf_counter()
            try:
                write()
            except BaseException as exc:  # noqa: BLE001 - kept and raised by the caller's next wait()
                self._error = exc
            finally:
                self.last_write_seconds = time.perf_counter() - t0

        self._thread = threading.Thread(target=run, name=self.name, daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the error of a write that failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error


def recover_checkpoint_set(directory: Path) -> None:
    """Finish a set whose journal was committed, or discard the files of an uncommitted one."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    journal = directory / JOURNAL_NAME
    if journal.exists():
        try:
            names = list(json.loads(journal.read_text())["members"])
        except Exception as exc:
            raise CorruptCheckpointError(f"checkpoint journal {journal} is unreadable: {exc}") from exc
        logger.warning("completing an interrupted checkpoint write in %s", directory)
        _finish(directory, names)
    for leftover in directory.glob(f"*{NEXT_SUFFIX}"):
        # written before the journal: the set was never committed, the old files are authoritative
        logger.warning("discarding uncommitted checkpoint file %s", leftover)
        leftover.unlink()
    for leftover in directory.glob(".*.tmp-*"):
        leftover.unlink()


__all__ = [
    "TRUST_HINT",
    "BackgroundWriter",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "LegacyCheckpointError",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "describe_write_error",
    "free_space",
    "from_plain",
    "load_safe",
    "load_torch_file",
    "load_trusted",
    "non_finite_names",
    "pickle_globals",
    "recover_checkpoint_set",
    "refuse_foreign_names",
    "serialize_members",
    "to_plain",
    "write_checkpoint_set",
]
