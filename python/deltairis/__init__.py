"""delta-iris: a fast, faithful implementation of the Delta-IRIS world-model agent.

``import deltairis`` is cheap: it never imports Triton and never queries CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Agent", "__version__", "load_agent", "native_available"]

if TYPE_CHECKING:  # pragma: no cover
    from deltairis.agent import Agent, load_agent


def native_available() -> bool:
    """True when the compiled extension ``deltairis._core`` can be imported."""
    from deltairis._native import core

    return core is not None


def __getattr__(name: str) -> Any:
    # Lazy so that ``import deltairis`` does not import torch-heavy modules until needed.
    if name in ("load_agent", "Agent"):
        from deltairis import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'deltairis' has no attribute {name!r}")
