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
- gradients are averaged over ranks by one all-reduce per step (:func:`average_gradients`).

This module is in the foundation layer: it imports nothing from the package but the errors.
"""

from __future__ import annotations

import contextlib
import datetime
import os
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
    return _current


def shutdown() -> None:
    """Leave the process group (if any) and go back to the single-process context."""
    global _current
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
        f"(another rank died or hangs?): {exc}"
    )


def global_count(count: torch.Tensor) -> torch.Tensor:
    """Inside :func:`sharded_losses`: the count summed over ranks, divided by the world size (so that a
    rank's ``sum / global_count`` averaged over ranks is the global mean); otherwise ``count``."""
    if not _sharded:
        return count
    ctx = current()
    total = count.detach().clone()
    try:
        tdist.all_reduce(total)
    except Exception as exc:
        raise _failed("all_reduce of a loss denominator", exc) from exc
    return total / ctx.world_size


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
    """Average ``.grad`` over ranks (a missing gradient counts as zero on that rank)."""
    ctx = current()
    if not ctx.is_distributed:
        return
    params = list(parameters)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params])


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
    "current",
    "env_world",
    "global_count",
    "init",
    "losses_are_sharded",
    "sharded_losses",
    "shutdown",
    "use",
]
