"""Environments behind one :class:`VectorEnv` interface: Crafter (native C++ or Python), Atari (ALE's C++
vector env or gymnasium + ale-py) and a built-in toy env.

Importing this package registers ``deltairis/Crafter-v1`` with gymnasium when the native Crafter module
is present (guarded: a missing or unbuilt module is not an error here): ``gymnasium.make`` gives the
single env, ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")`` the C++ vector stepper
as a ``gymnasium.vector.VectorEnv`` (SAME_STEP auto-reset).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from deltairis.envs.crafter_metrics import achievement_success_rates, crafter_metrics, crafter_score
from deltairis.envs.factory import make_vector_env
from deltairis.envs.toy import GridGoalEnv, ToyVectorEnv, oracle_policy_return, random_policy_return
from deltairis.envs.vector import OBS_SHAPE, SyncVectorEnv, VectorEnv, validate_actions

logger = logging.getLogger(__name__)

__all__ = [
    "OBS_SHAPE",
    "CrafterNative",
    "GridGoalEnv",
    "SyncVectorEnv",
    "ToyVectorEnv",
    "VectorEnv",
    "achievement_success_rates",
    "crafter_metrics",
    "crafter_score",
    "make_vector_env",
    "oracle_policy_return",
    "random_policy_return",
    "validate_actions",
]


def _register_native_crafter() -> None:
    try:
        importlib.import_module("deltairis.envs.crafter_gym").register_gymnasium()
    except (ImportError, RuntimeError, AttributeError) as exc:  # module absent or extension unbuilt
        logger.debug("deltairis/Crafter-v1 not registered: %s", exc)


_register_native_crafter()


def __getattr__(name: str) -> Any:
    # The native single-env class lives in the native-Crafter engineer's module; resolve it lazily.
    if name == "CrafterNative":
        return importlib.import_module("deltairis.envs.crafter_native").CrafterNative
    raise AttributeError(f"module 'deltairis.envs' has no attribute {name!r}")
