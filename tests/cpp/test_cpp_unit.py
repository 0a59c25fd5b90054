"""Runs the C++ unit tests of csrc/ (csrc/**/*_test.cc, registered with CTest) as pytest tests.

The first test of a session configures and builds them (cmake, ninja; see cxx_build.py). Each CTest
test is one pytest test, and the list is checked against ``ctest -N`` so no test is silently dropped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cxx_build
import pytest

NAMES = cxx_build.ctest_names_without_building()


def test_every_cpp_test_is_registered_with_ctest(cxx_test_build: Path) -> None:
    assert NAMES, "no csrc/**/*_test.cc found"
    assert sorted(cxx_build.ctest_names(cxx_test_build)) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_cpp_unit(name: str, cxx_test_build: Path) -> None:
    out = subprocess.run(
        ["ctest", "--output-on-failure", "-R", f"^{name}$"],
        cwd=cxx_test_build,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.returncode == 0, f"ctest {name} failed:\n{out.stdout[-12000:]}\n{out.stderr[-4000:]}"
    assert "1/1 Test" in out.stdout and "Passed" in out.stdout, out.stdout
