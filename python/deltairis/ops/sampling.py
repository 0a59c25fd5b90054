"""Categorical sampling by the Gumbel-max trick with counter-based random numbers.

A call is identified by ``(seed, offset)``: the same pair gives the same samples on every backend
and device. Element ``i`` of the flattened logits draws the 32-bit word
``counter_uint32(i, seed, offset)``; callers advance ``offset`` by one per call.
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


def stream_keys(seed: int, offset: int) -> tuple[int, int]:
    """Two 32-bit keys derived from (seed, offset) on the host (Python integers, no device work)."""
    if not isinstance(seed, int) or not isinstance(offset, int):
        raise TypeError(f"seed and offset must be Python ints, got {type(seed).__name__}, {type(offset).__name__}")
    s = seed & 0xFFFFFFFFFFFFFFFF
    o = offset & 0xFFFFFFFFFFFFFFFF
    k0 = _lowbias32_int((s & _M32) ^ _lowbias32_int(s >> 32))
    k0 = _lowbias32_int(k0 ^ (o & _M32))
    k1 = _lowbias32_int(k0 ^ _lowbias32_int((o >> 32) ^ GOLDEN))
    return k0, k1


def _lowbias32_tensor(x: torch.Tensor) -> torch.Tensor:
    # x holds uint32 values in int64; products wrap mod 2^64, and masking keeps the low 32 bits exact.
    x = x ^ (x >> 16)
    x = (x * MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * MUL2) & _M32
    x = x ^ (x >> 16)
    return x


def counter_uint32(numel: int, seed: int, offset: int, device: torch.device | str) -> torch.Tensor:
    """The random 32-bit words (as int64) for elements 0..numel-1 of the stream (seed, offset)."""
    k0, k1 = stream_keys(seed, offset)
    i = torch.arange(numel, device=device, dtype=torch.int64)
    x = ((i * GOLDEN) & _M32) ^ k0
    x = _lowbias32_tensor(x)
    x = _lowbias32_tensor(x ^ k1)
    return x


def counter_uniform(numel: int, seed: int, offset: int, device: torch.device | str) -> torch.Tensor:
    """Uniform float32 numbers in the open interval (0, 1) with 24 random bits each."""
    x = counter_uint32(numel, seed, offset, device)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def _check(logits: torch.Tensor, temperature: float) -> None:
    if logits.dim() < 1 or logits.size(-1) < 1:
        raise ValueError(f"logits must have a non-empty last dimension, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def sample_categorical_ref(
    logits: torch.Tensor, *, temperature: float = 1.0, seed: int, offset: int
) -> torch.Tensor:
    """Reference: argmax(logits / temperature + Gumbel noise) over the last dim -> int64 indices."""
    _check(logits, temperature)
    u = counter_uniform(logits.numel(), seed, offset, logits.device).view(logits.shape)
    gumbel = -torch.log(-torch.log(u))
    scores = logits.float() / temperature + gumbel
    return scores.argmax(dim=-1)


def sample_categorical(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int,
    offset: int,
    backend: str | None = None,
) -> torch.Tensor:
    """Sample one index per row of ``logits`` (..., V) from softmax(logits / temperature)."""
    _check(logits, temperature)

    def supported() -> str | None:
        if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"dtype {logits.dtype}"
        if logits.numel() >= 2**31:
            return "more than 2^31 elements"
        return None

    fn = choose("sample_categorical", (logits,), backend, supported, ("sampling", "sample_categorical_triton"))
    if fn is None:
        return sample_categorical_ref(logits, temperature=temperature, seed=seed, offset=offset)
    return fn(logits, temperature=temperature, seed=seed, offset=offset)
