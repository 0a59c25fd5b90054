"""Fixtures for the fused-op tests.

* ``interpret``: runs a test with ``TRITON_INTERPRET=1`` so ``backend="triton"`` executes the Triton
  kernels on CPU tensors. The interpreter is chosen when a kernel is decorated; the dispatcher
  (:func:`deltairis.ops._dispatch.load_kernel`) re-imports a kernel module whose mode differs from
  the environment, so the order in which tests import Triton does not matter, and GPU tests in the
  same session still get compiled kernels.
* In a source checkout, ``deltairis.kernels`` resolves to ``<repo>/kernels`` first: CMake copies
  kernels/ into site-packages at install time, and an editable install would otherwise test a stale
  copy until the next ``pip install -e .``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_SOURCE_KERNELS = Path(__file__).resolve().parents[2] / "kernels"


class _SourceKernelFinder(importlib.abc.MetaPathFinder):
    """Resolves ``deltairis.kernels.<name>`` to ``<repo>/kernels/<name>.py`` (ahead of site-packages)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix = "deltairis.kernels."
        if not fullname.startswith(prefix) or "." in fullname[len(prefix) :]:
            return None
        source = _SOURCE_KERNELS / f"{fullname[len(prefix):]}.py"
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _prefer_source_kernels() -> None:
    if (_SOURCE_KERNELS / "__init__.py").is_file() and not any(
        isinstance(f, _SourceKernelFinder) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _SourceKernelFinder())


_prefer_source_kernels()


def triton_missing() -> bool:
    return importlib.util.find_spec("triton") is None


needs_triton = pytest.mark.skipif(triton_missing(), reason="Triton is not installed")


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run Triton kernels on CPU through the interpreter for this test."""
    if triton_missing():
        pytest.skip("Triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("DELTAIRIS_BACKEND", raising=False)
    yield


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run Triton kernels compiled (GPU tests): the interpreter is switched off for this test."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("DELTAIRIS_BACKEND", raising=False)
    yield
