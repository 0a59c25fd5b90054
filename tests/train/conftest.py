"""Helpers for the training-pipeline tests: a tiny config that runs an epoch in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_run import TINY  # tests/ is on sys.path (as for identical.py)

from deltairis.train.configuration import compose_config


def _tiny_config(*extra: str):
    return compose_config([*TINY, *extra])


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(*overrides)`` -> a validated config of a seconds-long tiny run."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The tiny run's overrides (for tests that start deltairis-train in a subprocess)."""
    return list(TINY)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
