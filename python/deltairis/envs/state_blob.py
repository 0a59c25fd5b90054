"""An env's exact state as a versioned, checksummed blob of plain data (what a checkpoint holds).

A vector env that can be checkpointed exactly implements ``env_state()`` (a dict of plain data: NumPy
arrays, numbers, strings, bytes, lists) and ``load_env_state(state)`` (put that state into an env built
with the same settings), and names its kind in ``state_kind``. :func:`pack_env_state` wraps the state in a
blob::

    MAGIC (16 bytes) | version (u32) | kind length (u16) | kind (UTF-8) | SHA-256 of the payload (32 bytes)
    | payload: torch.save of the state made plain (deltairis.checkpoint.to_plain)

and :func:`restore_env_state` checks the magic, the version, the kind and the checksum before it reads the
payload with ``torch.load(weights_only=True)``: a blob from another version, of another env, or damaged is
refused with :class:`EnvStateError` naming where it came from, and nothing in it can run code.
Engine states keep their own checks inside the payload (the native Crafter engine's blob is versioned and
checksummed by the C++ code; ALE's ``cloneState`` bytes are read by ALE).
"""

from __future__ import annotations

import hashlib
import io
import struct
from typing import Any

import torch

from deltairis.checkpoint import from_plain, to_plain, torch_bytes
from deltairis.errors import CorruptCheckpointError

MAGIC = b"DELTAIRIS-ENVST\x00"
#: Format version of the blob (its layout and the meaning of the states inside).
ENV_STATE_VERSION = 1
_HEAD = struct.Struct("<16sIH")


class EnvStateError(CorruptCheckpointError):
    """An env state blob that cannot be restored: not a blob, another version, another env, or damaged."""


#: what earlier versions' pickled envs named (checked before ``common.trust_checkpoint=true`` unpickles
#: one): our env classes and their truncation rules, NumPy arrays and generators, ALE's state
_LEGACY_ENV_NAMES = frozenset(
    {
        "deltairis.envs.toy.ToyVectorEnv",
        "deltairis.envs.toy.GridGoalEnv",
        "deltairis.envs.vector._default_truncated",
        "deltairis.envs.crafter_native.NativeCrafterVectorEnv",
        "deltairis.envs.crafter_native.CrafterNative",
        "deltairis.envs.atari.AtariPythonVectorEnv",
        "deltairis.envs.atari.AtariPreprocessedEnv",
        "ale_py._ale_py.ALEState",
        "_codecs.encode",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.random._pcg64.PCG64",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    }
    | {
        f"numpy.{core}.{name}"
        for core in ("core", "_core")
        for name in ("multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer")
    }
)


def legacy_env_name_allowed(name: str) -> bool:
    """Whether an earlier version's env pickle could name ``name`` (anything else: crafted)."""
    return name in _LEGACY_ENV_NAMES or name.startswith("numpy.dtypes.") and name.endswith("DType")


def supports_env_state(env: Any) -> bool:
    """Whether ``env`` can save and restore its exact state (``env_state`` does not raise NotImplementedError)."""
    return isinstance(getattr(env, "state_kind", None), str) and callable(getattr(env, "env_state", None))


def pack_env_state(env: Any) -> bytes:
    """``env``'s exact state as a blob; ``NotImplementedError`` when it cannot be saved exactly."""
    kind = getattr(env, "state_kind", None)
    if not isinstance(kind, str):
        raise NotImplementedError(f"{type(env).__name__} cannot save its exact state")
    payload = torch_bytes(to_plain(env.env_state()))
    name = kind.encode()
    return _HEAD.pack(MAGIC, ENV_STATE_VERSION, len(name)) + name + hashlib.sha256(payload).digest() + payload


def read_env_state(blob: object, where: str) -> tuple[str, dict[str, Any]]:
    """(kind, state) of a blob, checked (see the module docstring); ``where`` names its origin in errors."""
    if not isinstance(blob, bytes) or len(blob) < _HEAD.size or not blob.startswith(MAGIC):
        raise EnvStateError(
            f"{where} is not a delta-iris env state (written by an earlier version, or crafted or damaged); "
            "it was not loaded"
        )
    _, version, n = _HEAD.unpack_from(blob)
    if version != ENV_STATE_VERSION:
        raise EnvStateError(
            f"{where} is an env state of format version {version}; this delta-iris reads version "
            f"{ENV_STATE_VERSION}. It was not loaded"
        )
    start = _HEAD.size
    kind_bytes, digest = blob[start : start + n], blob[start + n : start + n + 32]
    payload = blob[start + n + 32 :]
    if len(digest) != 32 or hashlib.sha256(payload).digest() != digest:
        raise EnvStateError(f"{where} is damaged (its checksum does not match); it was not loaded")
    try:
        kind = kind_bytes.decode()
        state = from_plain(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True), where)
    except EnvStateError:
        raise
    except Exception as exc:
        raise EnvStateError(
            f"{where} cannot be read ({type(exc).__name__}: {exc}); it was not loaded"
        ) from exc
    if not isinstance(state, dict):
        raise EnvStateError(f"{where} holds a {type(state).__name__}, not an env state")
    return kind, state


def restore_env_state(env: Any, blob: object, where: str) -> None:
    """Put the state of ``blob`` into ``env`` (built with the run's settings), or raise :class:`EnvStateError`."""
    kind, state = read_env_state(blob, where)
    expected = getattr(env, "state_kind", None)
    if kind != expected:
        raise EnvStateError(f"{where} is the state of a {kind!r} env, but this run's env is {expected!r}")
    try:
        env.load_env_state(state)
    except EnvStateError:
        raise
    except Exception as exc:  # a well-formed blob whose values do not fit this env
        raise EnvStateError(
            f"{where} does not fit this run's {kind!r} env ({type(exc).__name__}: {exc})"
        ) from exc


__all__ = [
    "ENV_STATE_VERSION",
    "MAGIC",
    "EnvStateError",
    "legacy_env_name_allowed",
    "pack_env_state",
    "read_env_state",
    "restore_env_state",
    "supports_env_state",
]
