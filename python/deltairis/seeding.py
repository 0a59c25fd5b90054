"""Seeds and random streams, in one place.

Two kinds of randomness drive a run:

- **Seeds** for whole parts of a run (an epoch's collection, a batch's segments, an env's resets) are
  derived from the run seed and a few names/numbers with :func:`derive_seed`, so they are stable across
  runs, processes and platforms and independent of the order things happen in.
- **Counter streams** feed the on-device samplers (:func:`deltairis.ops.sample_categorical`,
  :func:`deltairis.ops.counter_uniform`): a draw is identified by ``(seed, offset)``. Which offsets a
  piece of code uses is declared here by name (:class:`StreamBlock`), never written as literals where
  the draws happen.

Layouts:

- The policy's action draw (collection, test episodes, the play tool) uses the block
  :data:`POLICY_STREAMS` once per env step: step ``t`` draws ``action``, ``epsilon_coin`` and
  ``epsilon_action`` at offsets ``3t``, ``3t + 1`` and ``3t + 2`` of the call's seed.
- An imagination call with seed ``s`` uses the fixed sampler seed :data:`SAMPLER_SEED` and offsets
  from ``stream_base(s)``: world-model samples at ``stream_base(s) + k``, policy samples at
  ``stream_base(s) + POLICY_STREAM + i``. Keeping the sampler seed fixed and varying only offsets lets a
  captured CUDA graph read the offset from a device tensor and reproduce the eager path's samples.

This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

SAMPLER_SEED = 0x5EED1D15
STREAM_BITS = 24  # offsets available to one imagination call
POLICY_STREAM = 1 << (STREAM_BITS - 1)  # imagined policy samples live in the upper half of a call's offsets


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed determined by ``parts`` (stable across runs, processes and platforms)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def derive_env_seed(*parts: int | str) -> int:
    """Like :func:`derive_seed`, but small enough for env backends that take 32-bit seeds (seed + i)."""
    return derive_seed(*parts) % (2**31 - 2**16)


def stream_base(seed: int) -> int:
    """First offset of the streams of the imagination call identified by ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"imagination seed must be a non-negative Python int, got {seed!r}")
    return (seed % (1 << 39)) << STREAM_BITS


class StreamBlock:
    """Named counter streams drawn in a fixed block per step: ``offset(step, name)``.

    Example: ``StreamBlock("action", "coin")`` gives step ``t`` the offsets ``2t`` (action) and
    ``2t + 1`` (coin).
    """

    def __init__(self, *names: str) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a stream block needs distinct names, got {names!r}")
        self.names = names
        self.width = len(names)

    def offset(self, step: int, name: str) -> int:
        if step < 0:
            raise ValueError(f"stream step must be >= 0, got {step}")
        try:
            k = self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown stream {name!r}; this block has {', '.join(self.names)}") from None
        return step * self.width + k

    def __repr__(self) -> str:
        return f"StreamBlock{self.names!r}"


#: The policy's draws per env step (ε-greedy at a temperature; one ε coin for all envs).
POLICY_STREAMS = StreamBlock("action", "epsilon_coin", "epsilon_action")


def global_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators (CUDA's too when initialised)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = [
    "POLICY_STREAM",
    "POLICY_STREAMS",
    "SAMPLER_SEED",
    "STREAM_BITS",
    "StreamBlock",
    "derive_env_seed",
    "derive_seed",
    "global_rng_state",
    "set_global_rng_state",
    "stream_base",
]
