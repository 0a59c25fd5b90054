"""Shared test settings: CPU by default, GPU tests skipped cleanly without CUDA."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # One folder of cached memory estimates (deltairis.train.memory) for the whole session, inherited by
    # the runs the tests start as subprocesses: the first trainer of a configuration counts its steps,
    # the others read the estimate back. Never the user's own cache.
    if "DELTAIRIS_CACHE_DIR" not in os.environ:
        os.environ["DELTAIRIS_CACHE_DIR"] = tempfile.mkdtemp(prefix="deltairis-test-cache-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Decided at collection time, never at import time of the package.
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_kernel_switched_off() -> Iterator[None]:
    """A preflight fallback switches a kernel off for the rest of the process (deltairis.ops); a test's
    switches end with the test."""
    from deltairis.ops import _dispatch

    yield
    _dispatch._SWITCHED_OFF.clear()
