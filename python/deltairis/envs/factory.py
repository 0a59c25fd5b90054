"""``make_vector_env``: one entry point for every environment and backend."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from deltairis.envs.vector import VectorEnv

logger = logging.getLogger(__name__)

ENV_NAMES = ("crafter", "atari", "toy", "gymnasium")
BACKENDS = {
    "crafter": ("auto", "native", "python"),
    "atari": ("auto", "ale_vector", "python"),
    "toy": ("auto", "python"),
    "gymnasium": ("auto", "python"),
}


def _check_kwargs(name: str, kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for env {name!r}; allowed: {list(allowed)}")


def _load_native_crafter() -> tuple[type[VectorEnv] | None, str]:
    """The native Crafter vector env class, or ``None`` and the reason it is unavailable."""
    try:
        module = importlib.import_module("deltairis.envs.crafter_native")
    except ImportError as exc:
        return None, f"deltairis.envs.crafter_native cannot be imported ({exc})"
    cls = getattr(module, "NativeCrafterVectorEnv", None)
    if cls is None:
        return None, "deltairis.envs.crafter_native has no NativeCrafterVectorEnv"
    available = getattr(module, "native_available", None) or getattr(module, "is_available", None)
    if callable(available) and not available():
        return None, "the compiled extension deltairis._core has no native Crafter engine"
    return cls, ""


def make_vector_env(
    name: str,
    num_envs: int,
    seed: int = 0,
    backend: str = "auto",
    num_threads: int | None = None,
    **kwargs: Any,
) -> VectorEnv:
    """Create ``num_envs`` environments behind the :class:`~deltairis.envs.vector.VectorEnv` interface.

    Args:
        name: ``"crafter"``, ``"atari"``, ``"toy"`` or ``"gymnasium"`` (any registered pixel env with
            discrete actions, :mod:`deltairis.envs.gymnasium_env`).
        num_envs: number of environments (>= 1).
        seed: env ``i`` is seeded with ``seed + i`` at the first ``reset()``.
        backend: ``"auto"`` (crafter: the native engine when built, which is byte-identical to the
            crafter package; atari: the reference preprocessing ``"python"``), or per env: crafter
            ``"native"`` | ``"python"``;
            atari ``"ale_vector"`` | ``"python"``; toy ``"python"``.
        num_threads: worker threads of the native backends (``None``: their default). Ignored by the
            Python backends, which step in the calling thread.
        **kwargs: env options. Crafter: ``length`` (10,000), ``reward`` (True). Atari: ``id``
            (``"BreakoutNoFrameskip-v4"`` or an ALE name), ``train`` (True: training settings, False: test
            settings), ``noop_max``, ``max_episode_frames``. Toy: ``max_steps`` (30), ``respawn`` (True), ``grid`` (4).
            Gymnasium: ``id`` (required), ``frame_skip`` (1), ``max_pool`` (False),
            ``max_episode_steps`` (None).

    Raises:
        ValueError: unknown ``name``, ``backend`` or option, or a bad value.
        RuntimeError: an explicitly requested backend that is not available here.
    """
    if name not in ENV_NAMES:
        raise ValueError(f"unknown env name {name!r}; expected one of {list(ENV_NAMES)}")
    if backend not in BACKENDS[name]:
        raise ValueError(f"unknown backend {backend!r} for env {name!r}; expected one of {list(BACKENDS[name])}")
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")

    if name == "toy":
        from deltairis.envs.toy import ToyVectorEnv

        _check_kwargs(name, kwargs, ("max_steps", "respawn", "grid"))
        return ToyVectorEnv(num_envs, seed=seed, **kwargs)

    if name == "gymnasium":
        from deltairis.envs.gymnasium_env import GymnasiumVectorEnv

        _check_kwargs(name, kwargs, ("id", "frame_skip", "max_pool", "max_episode_steps", "make_kwargs"))
        return GymnasiumVectorEnv(num_envs, seed=seed, **kwargs)

    if name == "crafter":
        _check_kwargs(name, kwargs, ("length", "reward", "area", "view", "size"))
        for key, expected in (("area", (64, 64)), ("view", (9, 9)), ("size", (64, 64))):
            if key in kwargs and tuple(kwargs.pop(key)) != expected:
                raise ValueError(f"crafter option {key!r} must be {expected} (the paper's setting)")
        if backend in ("auto", "native"):
            cls, reason = _load_native_crafter()
            if cls is not None:
                return cls(num_envs, seed, num_threads, **kwargs)
            if backend == "native":
                raise RuntimeError(f"crafter backend 'native' is not available: {reason}")
            logger.info("native Crafter unavailable (%s); using the Python crafter package", reason)
        from deltairis.envs.crafter_python import CrafterPythonVectorEnv

        return CrafterPythonVectorEnv(num_envs, seed=seed, **kwargs)

    # atari
    from deltairis.envs.atari import AleVectorEnv, AtariPythonVectorEnv, ale_vector_available

    _check_kwargs(name, kwargs, ("id", "train", "noop_max", "max_episode_frames"))
    # ``auto`` is the reference preprocessing (the faithful default); ALE's vector env is opt-in because
    # its frames and reset rules differ (see deltairis.envs.atari).
    if backend == "ale_vector":
        if ale_vector_available():
            return AleVectorEnv(num_envs, seed=seed, num_threads=num_threads, **kwargs)
        raise RuntimeError("atari backend 'ale_vector' needs ale-py >= 0.10 (ale_py.vector_env)")
    return AtariPythonVectorEnv(num_envs, seed=seed, **kwargs)
