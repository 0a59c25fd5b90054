"""The compiled extension: it is built, importable, and its thread pool is correct."""

from __future__ import annotations

import subprocess
import sys

import pytest

import deltairis
from deltairis._native import core


def test_extension_is_built() -> None:
    assert deltairis.native_available(), "deltairis._core failed to import; `pip install .` must build it"
    assert core.__version__ == deltairis.__version__
    info = core.build_info()
    assert "C++" in info and "fast-math" not in info


def test_thread_count_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert core.default_num_threads() >= 1
    assert core.resolve_num_threads(3) == 3
    assert core.resolve_num_threads(0) == core.default_num_threads()
    assert core.resolve_num_threads(10_000) == 256


def test_import_does_not_pull_triton_or_cuda() -> None:
    code = (
        "import sys, deltairis, deltairis.ops, deltairis.models, deltairis.config;"
        "assert 'triton' not in sys.modules, 'triton imported';"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_kernels_are_shipped() -> None:
    import importlib.util

    assert importlib.util.find_spec("deltairis.kernels") is not None


# The thread pool's own tests (parallel_for, repeated calls, exceptions, background tasks, cancel, the
# destructor with pending tasks) are C++ unit tests: csrc/core/thread_pool_test.cc, run by tests/cpp.
