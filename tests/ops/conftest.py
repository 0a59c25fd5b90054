"""Fixtures for the fused-op tests.

Triton picks compiled or interpreted mode once, when it is first imported (``TRITON_INTERPRET``);
kernels of the other mode cannot run in that process. So:

* on a machine without CUDA this conftest sets ``TRITON_INTERPRET=1`` before anything imports
  Triton (conftests are imported at collection, test bodies run later), and the ``interpret`` tests
  run the Triton kernels on CPU tensors through the interpreter with ``backend="triton"``;
* on a CUDA machine Triton stays compiled and the ``gpu`` tests run the real kernels; the
  interpreter tests then skip unless the session was started with ``TRITON_INTERPRET=1``
  (``benchmarks/gpu/run.sh`` runs both sessions).

In a source checkout ``deltairis.kernels.<name>`` resolves to ``<repo>/kernels/<name>.py`` first:
CMake copies kernels/ into site-packages at install time, and an editable install would otherwise
test a stale copy until the next ``pip install -e .``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_SOURCE_KERNELS = Path(__file__).resolve().parents[2] / "kernels"


class _SourceKernelFinder(importlib.abc.MetaPathFinder):
    """Resolves ``deltairis.kernels.<name>`` to ``<repo>/kernels/<name>.py`` (ahead of site-packages)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix = "deltairis.kernels."
        if not fullname.startswith(prefix) or "." in fullname[len(prefix) :]:
            return None
        source = _SOURCE_KERNELS / f"{fullname[len(prefix) :]}.py"
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _prefer_source_kernels() -> None:
    if (_SOURCE_KERNELS / "__init__.py").is_file() and not any(
        isinstance(f, _SourceKernelFinder) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _SourceKernelFinder())


_prefer_source_kernels()

if "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def triton_missing() -> bool:
    return importlib.util.find_spec("triton") is None


def _triton_interpreted() -> bool:
    from deltairis.ops._dispatch import triton_interpreted

    return triton_interpreted()


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run Triton kernels on CPU tensors through the interpreter for this test."""
    if triton_missing():
        pytest.skip("Triton is not installed")
    if not _triton_interpreted():
        if torch.cuda.is_available():
            pytest.skip(
                "Triton runs compiled in this session; rerun with TRITON_INTERPRET=1 for interpreter tests"
            )
        pytest.fail(
            "Triton was imported in compiled mode before tests/ops/conftest.py set TRITON_INTERPRET=1"
        )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("DELTAIRIS_BACKEND", raising=False)
    yield


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run compiled Triton kernels (GPU tests)."""
    if triton_missing():
        pytest.skip("Triton is not installed")
    if _triton_interpreted():
        pytest.skip("Triton runs in interpreter mode in this session (TRITON_INTERPRET=1)")
    monkeypatch.delenv("DELTAIRIS_BACKEND", raising=False)
    yield
