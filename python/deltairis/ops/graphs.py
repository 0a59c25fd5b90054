"""Capture a device step once as a CUDA graph and replay it without per-kernel launch overhead.

Generic helper for loops of many small kernels (the imagination step). Replaying a graph re-runs
the captured kernels on the *same memory*: inputs are copied into static buffers, outputs are
static tensors overwritten by each replay, and scalars (Python ints and floats) are frozen at
capture. So anything that changes per step must live in a device tensor that the step reads, e.g.
``KVCache.lens`` for :func:`deltairis.ops.attention_kvcache` (read on the device) and an offset
tensor for :func:`deltairis.ops.sample_categorical` (``offset=`` accepts a one-element tensor,
advanced in place with ``offset += 1`` inside the step).

Example::

    step = CapturedStep(imagine_step, obs, act)      # warm-up runs, then capture
    next_obs, rew, end = step(obs_t, act_t)           # copy inputs, replay, static outputs

Warm-up runs execute ``fn`` for real (``warmup`` times, on a side stream, as CUDA requires before
capture), so in-place state it touches (caches, counters) advances; reset it afterwards if needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _tensors(tree: Any) -> list[torch.Tensor]:
    """Tensors in a (nested) tuple / list / dict, in order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


class CapturedStep:
    """``fn(*inputs)`` captured once as a CUDA graph; calling it copies new inputs in and replays.

    ``inputs`` must be CUDA tensors (their shapes, dtypes and devices are fixed by the capture). The
    returned outputs are the same static tensors after every replay: clone them to keep a result.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *inputs: torch.Tensor,
        warmup: int = 2,
        pool: Any | None = None,
    ) -> None:
        if not inputs:
            raise ValueError("CapturedStep needs at least one input tensor")
        for i, x in enumerate(inputs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(
                    f"input {i} must be a tensor, got {type(x).__name__} (scalars are frozen at capture)"
                )
            if not x.is_cuda:
                raise ValueError(f"input {i} is on {x.device}; CUDA graphs need CUDA tensors")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (kernels must compile before capture), got {warmup}")
        self.fn = fn
        self.static_inputs = tuple(x.detach().clone() for x in inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_outputs = fn(*self.static_inputs)
        logger.debug("captured %s with %d inputs", getattr(fn, "__name__", fn), len(inputs))

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"expected {len(self.static_inputs)} inputs, got {len(inputs)}")
        for i, (dst, src) in enumerate(zip(self.static_inputs, inputs)):
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(
                    f"input {i}: captured for {tuple(dst.shape)} {dst.dtype}, got {tuple(src.shape)} {src.dtype}"
                )
            if src.data_ptr() != dst.data_ptr():
                dst.copy_(src)
        self.graph.replay()
        return self.static_outputs

    def outputs(self) -> list[torch.Tensor]:
        """The static output tensors (overwritten by each replay)."""
        return _tensors(self.static_outputs)


def parameter_fingerprint(*modules: torch.nn.Module) -> tuple[int, ...]:
    """The storage addresses of the modules' parameters and buffers: a captured graph reads these
    addresses, so it must be recaptured once the fingerprint changes (e.g. after ``.to(device)``)."""
    return tuple(t.data_ptr() for m in modules for t in list(m.parameters()) + list(m.buffers()))
