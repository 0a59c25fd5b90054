"""Several processes on one run: rank, world size and the few collectives training needs.

Launch with ``torchrun`` (``torchrun --nproc_per_node=N -m deltairis.cli.train ...``): rank, world size
and local rank come from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
Without it, :func:`init` returns the single-process context and every helper here is a no-op, so one
process behaves exactly as without this module. The backend is NCCL on CUDA and gloo on CPU.

Equal results at any world size:

- the configured batch size is the global batch; rank ``r`` of ``W`` trains on rows
  ``[r*B//W, (r+1)*B//W)`` of it (:meth:`DistContext.row_slice`);
- inside :func:`sharded_losses`, a masked mean divides the rank's *sum* by the global count of valid
  entries times ``1/W`` (:func:`global_count`), so that averaging the ranks' gradients and metrics gives
  exactly the single-process mean over the whole batch, also when slices have different sizes;
- gradients are averaged over ranks by one all-reduce per step (:func:`average_gradients`);
- the tokenizer's codebook EMA gathers every rank's vectors (:func:`all_gather_rows`, rank order is the
  batch order) and applies the whole batch's update on every rank, with the same torch RNG state;
- the actor-critic's samplers take the slice's first global row as ``row_offset``, so each rank's
  imagination draws what the single process draws for its rows (:func:`deltairis.ops.sample_categorical`).

The step itself is :func:`deltairis.train.step.gradient_step`; README "What stays equal" lists every
averaged quantity.

This module is in the foundation layer: it imports nothing from the package but the errors.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from deltairis.errors import ConfigError, DistributedError

#: default time (seconds) a rank waits for the others at a collective before it gives up
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in its group (``world_size == 1``: a single process, no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: collects experience, evaluates, writes checkpoints and metrics."""
        return self.rank == 0

    def row_slice(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n`` rows (sizes differ by at most one)."""
        if n < self.world_size:
            raise ConfigError(
                f"a global batch of {n} rows cannot be split over {self.world_size} ranks (every rank needs "
                "at least one row): raise the batch size or use fewer processes"
            )
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)


SINGLE = DistContext()
_current: DistContext = SINGLE
_sharded: bool = False


def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None when not launched by it."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(
            f"torchrun environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc})"
        ) from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun environment: bad RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def init(device_type: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); make it :func:`current`.

    A process not started by torchrun (or with ``WORLD_SIZE=1``) gets the single-process context.
    """
    global _current
    world = env_world()
    if world is None or world[1] == 1:
        _current = DistContext(timeout_s=float(timeout_s))
        return _current
    rank, size, local = world
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not tdist.is_initialized():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            torch.cuda.set_device(local)
            kwargs["device_id"] = torch.device("cuda", local)
        try:
            tdist.init_process_group(
                backend,
                rank=rank,
                world_size=size,
                timeout=datetime.timedelta(seconds=float(timeout_s)),
                **kwargs,
            )
        except Exception as exc:  # rendezvous failures come as several exception types
            raise DistributedError(
                f"rank {rank} of {size}: could not join the process group ({exc})"
            ) from exc
    _current = DistContext(rank, size, local, backend, float(timeout_s))
    _start_heartbeat(_current)
    return _current


def set_timeout(timeout_s: float) -> DistContext:
    """Use ``timeout_s`` from now on for barriers and the waits of :func:`from_main` (e.g. the value of
    rank 0's config, which ranks > 0 learn only after joining)."""
    global _current
    _current = DistContext(
        _current.rank, _current.world_size, _current.local_rank, _current.backend, float(timeout_s)
    )
    return _current


def shutdown() -> None:
    """Leave the process group (if any) and go back to the single-process context."""
    global _current, _sequence, _client
    _stop_heartbeat()
    _sequence, _client = 0, None
    if tdist.is_available() and tdist.is_initialized():
        with contextlib.suppress(Exception):
            tdist.destroy_process_group()
    _current = SINGLE


def current() -> DistContext:
    """The context :func:`init` set (the single-process one by default)."""
    return _current


@contextlib.contextmanager
def use(ctx: DistContext) -> Iterator[DistContext]:
    """Make ``ctx`` current inside the block (tests, or a group initialised elsewhere)."""
    global _current
    previous, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = previous


@contextlib.contextmanager
def sharded_losses() -> Iterator[None]:
    """Inside: masked means use global denominators (:func:`global_count`), for a rank's slice of a batch."""
    global _sharded
    previous, _sharded = _sharded, current().is_distributed
    try:
        yield
    finally:
        _sharded = previous


def losses_are_sharded() -> bool:
    return _sharded


def _failed(what: str, exc: BaseException) -> DistributedError:
    ctx = current()
    return DistributedError(
        f"rank {ctx.rank} of {ctx.world_size}: {what} failed or timed out after {ctx.timeout_s:.0f}s "
        f"({_whose_fault()}): {exc}"
    )


# -- liveness: a heartbeat per rank in the group's store ---------------------------------------------
#
# Every rank's background thread adds 1 to ``deltairis/heartbeat/<rank>`` in the process group's key-value
# store a few times per timeout. A rank that waits for rank 0 (while rank 0 alone collects, evaluates or
# writes a checkpoint, which may take longer than the timeout) waits on the store (:func:`from_main`)
# and gives up only when rank 0's counter stops moving for ``timeout_s`` (rank 0 hung) or the store
# cannot be reached (rank 0, which hosts it outside torchrun, died). A failed collective names the ranks
# whose counters stand still.

_heartbeat: tuple[threading.Thread, threading.Event] | None = None
_sequence = 0  # the number of from_main calls so far (equal on every rank)
_client: Any = None  # this thread's own connection to the store (the heartbeat thread has another)


def heartbeat_interval(timeout_s: float) -> float:
    """Seconds between two heartbeats of a rank: a twentieth of the timeout, within [0.05, 1]."""
    return max(0.05, min(1.0, float(timeout_s) / 20.0))


def _connect(timeout_s: float) -> Any:
    """A new client of the group's store (torchrun's agent store, or rank 0's for a plain ``env://``
    start), under a prefix of this launch; each thread uses its own, so that one blocked call (a
    stopped store host) cannot hold up the others."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    timeout = datetime.timedelta(seconds=float(timeout_s))
    if host and port:
        base = tdist.TCPStore(host, int(port), is_master=False, timeout=timeout, wait_for_workers=False)
    else:  # pragma: no cover - a group started without env:// (the default store then)
        from torch.distributed import distributed_c10d

        base = distributed_c10d._get_default_store()
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return tdist.PrefixStore(f"deltairis/{run}/{restart}/", base)


def _store_op(fn: Any, timeout_s: float | None = None) -> Any:
    """``fn(store)`` on this thread's client, given up (TimeoutError) after ``timeout_s``: a store whose
    host is stopped accepts the connection but never answers."""
    limit = float(current().timeout_s if timeout_s is None else timeout_s)
    box: dict[str, Any] = {}

    def call() -> None:
        global _client
        try:
            if _client is None:
                _client = _connect(limit)
            box["value"] = fn(_client)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=call, name="deltairis-store-call", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise TimeoutError(f"the group's store did not answer for {limit:.0f}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _heartbeat_key(rank: int) -> str:
    return f"deltairis/heartbeat/{rank}"


def _start_heartbeat(ctx: DistContext) -> None:
    global _heartbeat
    _stop_heartbeat()
    stop = threading.Event()
    key = _heartbeat_key(ctx.rank)

    def beat() -> None:
        try:
            store = _connect(ctx.timeout_s)
            while not stop.is_set():
                store.add(key, 1)
                stop.wait(heartbeat_interval(current().timeout_s))
        except Exception:  # noqa: BLE001 - the store is gone: the collectives will say so
            return

    thread = threading.Thread(target=beat, name=f"deltairis-heartbeat-{ctx.rank}", daemon=True)
    thread.start()
    _heartbeat = (thread, stop)


def _stop_heartbeat() -> None:
    global _heartbeat
    if _heartbeat is not None:
        thread, stop = _heartbeat
        stop.set()
        thread.join(timeout=5.0)
        _heartbeat = None


def _heartbeats(ranks: Iterable[int], timeout_s: float | None = None) -> dict[int, int]:
    keys = {r: _heartbeat_key(r) for r in ranks}
    return _store_op(lambda s: {r: int(s.add(k, 0)) for r, k in keys.items()}, timeout_s)


def silent_ranks(wait_s: float | None = None) -> list[int] | None:
    """The other ranks whose heartbeat did not move within ``wait_s`` (default: three intervals);
    None when the store cannot be reached."""
    ctx = current()
    if not ctx.is_distributed:
        return []
    others = [r for r in range(ctx.world_size) if r != ctx.rank]
    wait = 3 * heartbeat_interval(ctx.timeout_s) if wait_s is None else float(wait_s)
    limit = min(10.0, ctx.timeout_s)
    try:
        before = _heartbeats(others, limit)
        time.sleep(wait)
        after = _heartbeats(others, limit)
    except Exception:  # noqa: BLE001 - any store failure means: unreachable
        return None
    return [r for r in others if after[r] == before[r]]


def _whose_fault() -> str:
    try:
        silent = silent_ranks()
    except Exception:  # noqa: BLE001 - only for the message
        silent = None
    if silent is None:
        return "the group's store does not answer: its host (rank 0 outside torchrun) died or hangs"
    if silent:
        return f"no heartbeat from rank {', '.join(map(str, silent))}: died or hung"
    return "every other rank still sends heartbeats: one of them is stuck or left this collective"


def from_main(what: str, payload: Any = None) -> Any:
    """Rank 0's ``payload`` on every rank, after rank 0 alone did something that may take long.

    Ranks > 0 wait on the store, not in a collective: they wait as long as rank 0's heartbeat moves and
    raise :class:`DistributedError` naming rank 0 when it stands still for ``timeout_s`` or the store is
    gone. Every rank must call this the same number of times, in the same order.
    """
    global _sequence
    ctx = current()
    if not ctx.is_distributed:
        return payload
    _sequence += 1
    key = f"deltairis/ready/{_sequence}"
    if ctx.is_main:
        try:
            _store_op(lambda s: s.set(key, what))
        except Exception as exc:
            raise _failed(f"announcing '{what}'", exc) from exc
    else:
        _wait_for_main(what, key, ctx)
    return broadcast_object(payload if ctx.is_main else None)


def _wait_for_main(what: str, key: str, ctx: DistContext) -> None:
    last, changed = None, time.monotonic()
    poll = min(0.2, heartbeat_interval(ctx.timeout_s))
    while True:
        try:
            done, beat = _store_op(lambda s: (s.check([key]), int(s.add(_heartbeat_key(0), 0))))
            if done:
                return
        except TimeoutError as exc:
            raise DistributedError(
                f"rank {ctx.rank} of {ctx.world_size}: no heartbeat from rank 0 for {ctx.timeout_s:.0f}s "
                f"(distributed.timeout_s) while waiting for {what}: the group's store, which rank 0 hosts "
                f"outside torchrun, does not answer: rank 0 hung or died ({exc})"
            ) from exc
        except Exception as exc:
            raise DistributedError(
                f"rank {ctx.rank} of {ctx.world_size}: lost rank 0 while waiting for {what}: the group's "
                f"store is unreachable (rank 0 died or the network failed): {exc}"
            ) from exc
        now = time.monotonic()
        if beat != last:
            last, changed = beat, now
        elif now - changed > ctx.timeout_s:
            raise DistributedError(
                f"rank {ctx.rank} of {ctx.world_size}: no heartbeat from rank 0 for {ctx.timeout_s:.0f}s "
                f"(distributed.timeout_s) while waiting for {what}: rank 0 hung or died"
            )
        time.sleep(poll)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (pickled), in rank order, on every rank."""
    ctx = current()
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    try:
        tdist.all_gather_object(out, obj)
    except Exception as exc:
        raise _failed("all_gather of objects", exc) from exc
    return out


def state_digest(named: Iterable[tuple[str, Any]]) -> str:
    """A SHA-256 over names and the bytes of tensors / arrays (another object: its ``repr``)."""
    h = hashlib.sha256()
    for name, value in named:
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif hasattr(value, "tobytes") and hasattr(value, "dtype"):
            h.update(str((value.dtype, value.shape)).encode())
            h.update(value.tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def check_in_sync(what: str, digest: str) -> None:
    """Raise :class:`DistributedError` naming the ranks whose ``digest`` differs from rank 0's."""
    ctx = current()
    if not ctx.is_distributed:
        return
    digests = gather_objects(digest)
    off = [r for r, d in enumerate(digests) if d != digests[0]]
    if off:
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: {what} of rank {', '.join(map(str, off))} differ from "
            "rank 0's (the ranks no longer train the same model; this is a bug, please report it)"
        )


def global_count(count: torch.Tensor, minimum: float | None = None) -> torch.Tensor:
    """Inside :func:`sharded_losses`: the count summed over ranks (at least ``minimum``), divided by the
    world size (so that a rank's ``sum / global_count`` averaged over ranks is the global mean); otherwise
    ``count`` (at least ``minimum``)."""
    if not _sharded:
        return count if minimum is None else count.clamp(min=minimum)
    ctx = current()
    total = count.detach().to(torch.float32).clone()  # float32: gloo has no bfloat16 sums
    try:
        tdist.all_reduce(total)
    except Exception as exc:
        raise _failed("all_reduce of a loss denominator", exc) from exc
    if minimum is not None:
        total = total.clamp(min=minimum)
    return (total / ctx.world_size).to(count.dtype)


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average each tensor over ranks in place (one flat all-reduce)."""
    ctx = current()
    tensors = [t for t in tensors if t is not None]
    if not ctx.is_distributed or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    try:
        tdist.all_reduce(flat)
    except Exception as exc:
        raise _failed("all_reduce", exc) from exc
    flat /= ctx.world_size
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[i : i + n].view_as(t))
        i += n


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks (a missing gradient counts as zero on that rank).

    A parameter without a gradient on every rank keeps ``grad=None``, as in a single process (the
    optimizer then skips it, weight decay included). One all-reduce.
    """
    ctx = current()
    if not ctx.is_distributed:
        return
    params = list(parameters)
    if not params:
        return
    missing = [p.grad is None for p in params]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    # a flag per parameter rides along: > 0 after the reduction where some rank had a gradient
    present = torch.tensor([0.0 if m else 1.0 for m in missing], device=params[0].grad.device)
    all_reduce_mean_([*(p.grad for p in params), present])
    if any(missing):
        for p, some in zip(params, (present > 0).tolist()):
            if not some:
                p.grad = None


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 in rank order (first dims may differ between ranks)."""
    ctx = current()
    if not ctx.is_distributed:
        return x
    try:
        n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
        sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
        tdist.all_gather(sizes, n)
        counts = [int(s) for s in sizes]
        m = max(counts)
        padded = torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        tdist.all_gather(parts, padded.contiguous())
    except Exception as exc:
        raise _failed("all_gather", exc) from exc
    return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    ctx = current()
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    try:
        tdist.broadcast_object_list(box, src=src)
    except Exception as exc:
        raise _failed(f"broadcast from rank {src}", exc) from exc
    return box[0]


def barrier(what: str, timeout_s: float | None = None) -> None:
    """Wait for every rank; raise :class:`DistributedError` naming the missing ranks after the timeout.

    On gloo this is a monitored barrier (it names the ranks that did not arrive).
    """
    ctx = current()
    if not ctx.is_distributed:
        return
    timeout = datetime.timedelta(seconds=float(ctx.timeout_s if timeout_s is None else timeout_s))
    try:
        if ctx.backend == "gloo":
            tdist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
        else:
            tdist.barrier()
    except Exception as exc:
        raise _failed(f"barrier '{what}'", exc) from exc


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "SINGLE",
    "DistContext",
    "all_gather_rows",
    "all_reduce_mean_",
    "average_gradients",
    "barrier",
    "broadcast_object",
    "check_in_sync",
    "current",
    "env_world",
    "from_main",
    "gather_objects",
    "global_count",
    "heartbeat_interval",
    "init",
    "losses_are_sharded",
    "set_timeout",
    "sharded_losses",
    "shutdown",
    "silent_ranks",
    "state_digest",
    "use",
]
