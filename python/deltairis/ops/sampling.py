"""Categorical sampling by the Gumbel-max trick with counter-based random numbers.

A call is identified by ``(seed, offset)``: the same pair gives the same random words on every
backend and device. Element ``i`` of the flattened logits draws the 32-bit word
``counter_uint32(i, seed, offset)``; callers advance ``offset`` by one per call.

``offset`` may be a Python int (the keys are derived on the host) or a one-element integer tensor
on the logits' device (the keys are derived on the device from its value at run time). The tensor
form needs no host synchronisation and keeps a captured CUDA graph correct: the graph reads the
offset tensor when it replays, so the caller advances it in place (``offset_t += 1``) between
replays or inside the captured step.

``row_offset`` (a Python int >= 0, default 0) shifts the element index by ``row_offset * V`` (``V`` the
last dim): a call on rows ``[a, b)`` of the flattened ``(N, V)`` logits with ``row_offset=a`` draws the same
words, hence the same samples, as rows ``[a, b)`` of the call on all ``N`` rows. A rank that holds a
slice of a distributed batch samples exactly what the single process samples for those rows.
"""

from __future__ import annotations

import torch

from deltairis.ops._dispatch import choose

_M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
MUL1 = 0x7FEB352D
MUL2 = 0x846CA68B


def _lowbias32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * MUL1) & _M32
    x ^= x >> 15
    x = (x * MUL2) & _M32
    x ^= x >> 16
    return x


def seed_key(seed: int) -> int:
    """The 32-bit key of a 64-bit seed (first stage of :func:`stream_keys`)."""
    if not isinstance(seed, int):
        raise TypeError(f"seed must be a Python int, got {type(seed).__name__}")
    s = seed & 0xFFFFFFFFFFFFFFFF
    return _lowbias32_int((s & _M32) ^ _lowbias32_int(s >> 32))


def stream_keys(seed: int, offset: int) -> tuple[int, int]:
    """Two 32-bit keys derived from (seed, offset) on the host (Python integers, no device work)."""
    if not isinstance(seed, int) or not isinstance(offset, int):
        raise TypeError(
            f"seed and offset must be Python ints, got {type(seed).__name__}, {type(offset).__name__}"
        )
    o = offset & 0xFFFFFFFFFFFFFFFF
    k0 = _lowbias32_int(seed_key(seed) ^ (o & _M32))
    k1 = _lowbias32_int(k0 ^ _lowbias32_int((o >> 32) ^ GOLDEN))
    return k0, k1


def stream_keys_tensor(seed: int, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stream_keys` with the offset read on its device: two 0-dim int64 tensors (uint32 values)."""
    o = offset.reshape(()).to(torch.int64)
    o_lo = o & _M32
    o_hi = (o >> 32) & _M32  # arithmetic shift, then the two's-complement high word, as on the host
    k0 = _lowbias32_tensor(seed_key(seed) ^ o_lo)
    k1 = _lowbias32_tensor(k0 ^ _lowbias32_tensor(o_hi ^ GOLDEN))
    return k0, k1


def check_offset(offset: int | torch.Tensor, device: torch.device) -> None:
    """``offset`` must be a Python int or a one-element integer tensor on ``device``."""
    if isinstance(offset, torch.Tensor):
        if (
            offset.numel() != 1
            or offset.is_floating_point()
            or offset.is_complex()
            or offset.dtype == torch.bool
        ):
            raise ValueError(
                f"offset tensor must hold one integer, got {offset.dtype} of shape {tuple(offset.shape)}"
            )
        if offset.device != device:
            raise ValueError(f"offset tensor is on {offset.device}, the logits on {device}")
    elif not isinstance(offset, int) or isinstance(offset, bool):
        raise TypeError(f"offset must be a Python int or an integer tensor, got {type(offset).__name__}")


def _lowbias32_tensor(x: torch.Tensor) -> torch.Tensor:
    # x holds uint32 values in int64; products wrap mod 2^64, and masking keeps the low 32 bits exact.
    x = x ^ (x >> 16)
    x = (x * MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * MUL2) & _M32
    x = x ^ (x >> 16)
    return x


def check_row_offset(row_offset: int) -> int:
    """``row_offset`` must be a Python int >= 0."""
    if not isinstance(row_offset, int) or isinstance(row_offset, bool):
        raise TypeError(f"row_offset must be a Python int, got {type(row_offset).__name__}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be >= 0, got {row_offset}")
    return row_offset


def counter_uint32(
    numel: int,
    seed: int,
    offset: int | torch.Tensor,
    device: torch.device | str,
    first: int = 0,
) -> torch.Tensor:
    """The random 32-bit words (as int64) for elements first..first+numel-1 of the stream (seed, offset)."""
    if isinstance(offset, torch.Tensor):
        k0, k1 = stream_keys_tensor(seed, offset.to(device))
    else:
        k0, k1 = stream_keys(seed, offset)
    i = torch.arange(first, first + numel, device=device, dtype=torch.int64)
    x = ((i * GOLDEN) & _M32) ^ k0
    x = _lowbias32_tensor(x)
    x = _lowbias32_tensor(x ^ k1)
    return x


def counter_uniform(
    numel: int,
    seed: int,
    offset: int | torch.Tensor,
    device: torch.device | str,
    first: int = 0,
) -> torch.Tensor:
    """Uniform float32 numbers in the open interval (0, 1) with 24 random bits each (elements from ``first``)."""
    x = counter_uint32(numel, seed, offset, device, first)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def _check(logits: torch.Tensor, temperature: float) -> None:
    if logits.dim() < 1 or logits.size(-1) < 1:
        raise ValueError(f"logits must have a non-empty last dimension, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def sample_categorical_ref(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int,
    offset: int | torch.Tensor,
    row_offset: int = 0,
) -> torch.Tensor:
    """Reference: argmax(logits / temperature + Gumbel noise) over the last dim -> int64 indices."""
    _check(logits, temperature)
    check_offset(offset, logits.device)
    first = check_row_offset(row_offset) * logits.size(-1)
    u = counter_uniform(logits.numel(), seed, offset, logits.device, first).view(logits.shape)
    gumbel = -torch.log(-torch.log(u))
    scores = logits.float() / temperature + gumbel
    return scores.argmax(dim=-1)


def sample_categorical(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int,
    offset: int | torch.Tensor,
    row_offset: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """Sample one index per row of ``logits`` (..., V) from softmax(logits / temperature).

    ``offset``: a Python int, or a one-element integer tensor on the logits' device (read on the
    device; use it when the call is captured in a CUDA graph). ``row_offset``: the global index of the
    first row (of the flattened ``(N, V)`` view) when ``logits`` are a slice of a larger batch.
    """
    _check(logits, temperature)
    check_offset(offset, logits.device)
    check_row_offset(row_offset)

    def supported() -> str | None:
        if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"dtype {logits.dtype}"
        if logits.numel() + row_offset * logits.size(-1) >= 2**31:
            return "more than 2^31 elements (with the row offset)"
        return None

    fn = choose(
        "sample_categorical", (logits,), backend, supported, ("sampling", "sample_categorical_triton")
    )
    if fn is None:
        return sample_categorical_ref(
            logits, temperature=temperature, seed=seed, offset=offset, row_offset=row_offset
        )
    return fn(logits, temperature=temperature, seed=seed, offset=offset, row_offset=row_offset)
