"""Backend selection shared by every fused op.

Each op ``f`` has a pure-PyTorch reference ``f_ref`` and, optionally, a Triton kernel in
``deltairis.kernels``. The backend is chosen per call (``backend=``) or for the whole process with
``DELTAIRIS_BACKEND=auto|torch|triton``:

* ``torch``: always the reference;
* ``triton``: the kernel; raises if Triton is missing, if the tensors are not on CUDA (unless
  ``TRITON_INTERPRET=1`` was set before Triton was imported: its interpreter then runs the kernels
  on CPU tensors), or if the op does not support the shape/dtype;
* ``auto`` (default): the kernel only for CUDA tensors of supported shape and dtype, else the reference;
  ops whose kernel measured slower than PyTorch on the GPU (full-sequence ``attention``: PyTorch's
  flash / memory-efficient SDPA is 2-4x faster than our Triton kernel on an H200, see
  ``benchmarks/bench_ops.py``) pass ``auto_uses_kernel=False`` and get the reference under ``auto``.

A kernel can also be switched off for the rest of the process, one op at a time
(:func:`switch_off_kernel`: the run's preflight does this for a kernel that failed its check); that op then
always runs its reference, whatever the backend, and the other kernels stay on.

Nothing here imports Triton or queries CUDA at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch

BACKENDS = ("auto", "torch", "triton")

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton can be imported (checked once, lazily)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001  # pragma: no cover - broken installs
        return False
    return True


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors (slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_backend(backend: str | None) -> str:
    """The backend named per call or by ``DELTAIRIS_BACKEND`` (default ``auto``), validated."""
    name = backend if backend is not None else os.environ.get("DELTAIRIS_BACKEND", "auto")
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; expected one of {BACKENDS} (DELTAIRIS_BACKEND or backend=)"
        )
    return name


@lru_cache(maxsize=1)
def triton_interpreted() -> bool:
    """Whether the imported Triton runs kernels in its interpreter.

    Triton fixes the mode when it is first imported: ``triton.language``'s own helpers (``tl.max``,
    ...) are decorated then, in the mode ``TRITON_INTERPRET`` selected at that moment, and kernels of
    the other mode cannot call them. Imports Triton if needed; call only after ``triton_available()``.
    Cached: the mode cannot change once Triton is imported.
    """
    import triton.language as tl

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - layout of other Triton versions
        return interpreter_enabled()
    return isinstance(getattr(tl, "max", None), InterpretedFunction)


@contextmanager
def _interpret_env(interpreted: bool) -> Iterator[None]:
    """Temporarily set TRITON_INTERPRET so kernels get decorated in the mode Triton runs in."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpreted else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


#: ops whose kernel is switched off for this process (:func:`switch_off_kernel`)
_SWITCHED_OFF: set[str] = set()


def switch_off_kernel(op: str) -> Callable[[], None]:
    """Make ``op`` (e.g. ``"twohot_expectation"``) run its PyTorch reference from now on, under every
    backend, leaving the other ops' kernels on; returns what switches it back (a no-op when it was off)."""
    if op in _SWITCHED_OFF:
        return lambda: None
    _SWITCHED_OFF.add(op)
    logger.debug("kernel of %s switched off", op)
    return lambda: _SWITCHED_OFF.discard(op)


def kernels_switched_off() -> frozenset[str]:
    """The ops whose kernel :func:`switch_off_kernel` switched off."""
    return frozenset(_SWITCHED_OFF)


# (module, name) -> (kernel module, callable): skips the import machinery on the hot path.
_KERNELS: dict[tuple[str, str], tuple[ModuleType, Callable[..., Any]]] = {}


def load_kernel(module: str, name: str) -> Callable[..., Any] | None:
    """The Triton implementation ``deltairis.kernels.<module>.<name>``, or None if not shipped.

    Kernel modules record the mode they were decorated in (``INTERPRETED``). They are imported (or
    re-imported, when an earlier import used the other mode) with ``TRITON_INTERPRET`` matching the
    mode Triton itself runs in, so a kernel can always call Triton's own helpers.
    """
    if not triton_available():
        return None
    interpreted = triton_interpreted()
    full = f"deltairis.kernels.{module}"
    hit = _KERNELS.get((module, name))
    if (
        hit is not None
        and sys.modules.get(full) is hit[0]
        and getattr(hit[0], "INTERPRETED", None) == interpreted
    ):
        return hit[1]
    try:
        with _interpret_env(interpreted):
            mod = importlib.import_module(full)
            if getattr(mod, "INTERPRETED", interpreted) != interpreted:
                logger.debug("re-importing %s for interpreted=%s", full, interpreted)
                mod = importlib.reload(mod)
    except ImportError as err:
        if err.name is not None and (err.name == full or full.startswith(err.name + ".")):
            return None  # kernel module not shipped
        raise  # a broken kernel module must not silently fall back
    fn = getattr(mod, name, None)
    if fn is not None:
        _KERNELS[(module, name)] = (mod, fn)
    return fn


def choose(
    op: str,
    tensors: Iterable[torch.Tensor],
    backend: str | None,
    supported: Callable[[], str | None],
    kernel: tuple[str, str],
    auto_uses_kernel: bool = True,
) -> Callable[..., Any] | None:
    """Return the Triton callable to use, or None for the PyTorch reference.

    ``supported()`` returns None when the kernel handles these inputs, else a reason string.
    ``auto_uses_kernel=False``: ``auto`` always picks the reference (the kernel only on request).
    """
    name = requested_backend(backend)
    if name == "torch" or op in _SWITCHED_OFF:
        return None
    tensors = list(tensors)
    on_cuda = all(t.is_cuda for t in tensors)
    if name == "auto":
        if not auto_uses_kernel or not on_cuda or not triton_available():
            return None
        if supported() is not None:
            return None
        return load_kernel(*kernel)
    # explicit triton
    if not triton_available():
        raise RuntimeError(f"{op}: backend 'triton' requested but Triton is not installed")
    if not on_cuda:
        if not interpreter_enabled():
            raise RuntimeError(
                f"{op}: backend 'triton' requested for CPU tensors; use CUDA tensors or set TRITON_INTERPRET=1"
            )
        if not triton_interpreted():
            raise RuntimeError(
                f"{op}: backend 'triton' on CPU tensors needs Triton's interpreter, but Triton was imported "
                "before TRITON_INTERPRET=1 was set; set it before anything imports triton"
            )
    reason = supported()
    if reason is not None:
        raise RuntimeError(f"{op}: backend 'triton' does not support these inputs: {reason}")
    fn = load_kernel(*kernel)
    if fn is None:
        raise RuntimeError(
            f"{op}: backend 'triton' requested but deltairis.kernels.{kernel[0]} is not available"
        )
    return fn
