"""Fixtures of the C++ unit tests: the CMake test build (see cxx_build.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import cxx_build


@pytest.fixture(scope="session")
def cxx_test_build() -> Path:
    """The configured and built C++ test folder (build/cxx-tests)."""
    return cxx_build.build()
