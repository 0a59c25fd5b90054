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


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 12345])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_thread_pool_matches_formula(n: int, threads: int) -> None:
    assert core.parallel_sum_squares(n, threads) == sum(i * i for i in range(n))


def test_thread_count_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert core.default_num_threads() >= 1
    assert core.resolve_num_threads(3) == 3
    assert core.resolve_num_threads(0) == core.default_num_threads()
    assert core.resolve_num_threads(10_000) == 256
    with pytest.raises(ValueError, match="n must be"):
        core.parallel_sum_squares(-1, 1)


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


@pytest.mark.parametrize("spin_micros", [0, 50, 100_000])
@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 1001])
def test_thread_pool_repeated_calls(n: int, threads: int, spin_micros: int) -> None:
    """Many calls on one pool, with and without spinning, each index written exactly once per call."""
    rounds = 60
    sums, errors = core.thread_pool_selftest(n, threads, rounds, spin_micros)
    expected = [sum(i * (r + 1) + 1 for i in range(n)) for r in range(rounds)]
    assert sums == expected
    assert errors == [""] * rounds


@pytest.mark.parametrize("spin_micros", [0, 100_000])
@pytest.mark.parametrize("fail_index", [0, 5, 63])
def test_thread_pool_exception_is_rethrown_and_pool_survives(spin_micros: int, fail_index: int) -> None:
    rounds, fail_round, n = 20, 9, 64
    sums, errors = core.thread_pool_selftest(n, 3, rounds, spin_micros, fail_round, fail_index)
    assert errors[fail_round] == f"planted failure at index {fail_index}"
    assert all(e == "" for r, e in enumerate(errors) if r != fail_round)
    # Every other round ran completely on the same pool after the failure.
    for r, s in enumerate(sums):
        if r != fail_round:
            assert s == sum(i * (r + 1) + 1 for i in range(n))
    assert sums[fail_round] < sum(i * (fail_round + 1) + 1 for i in range(n))


def test_thread_pool_spin_env_var_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any DELTAIRIS_POOL_SPIN_US value, garbage included, leaves a working pool (garbage means the default)."""
    for value in ["0", "250", "not-a-number", "-3"]:
        monkeypatch.setenv("DELTAIRIS_POOL_SPIN_US", value)
        sums, errors = core.thread_pool_selftest(16, 2, 5, -1)
        assert sums == [sum(i * (r + 1) + 1 for i in range(16)) for r in range(5)]
        assert errors == [""] * 5


@pytest.mark.parametrize("spin_micros", [0, 50, 100_000])
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 7, 64, 1001])
def test_thread_pool_background_tasks_interleaved(n: int, threads: int, spin_micros: int) -> None:
    """Background tasks (some submitted from inside parallel_for, some long) never disturb the foreground
    jobs, every task runs exactly once unless cancelled before it started, and drain() waits for all."""
    rounds = 40
    d = core.thread_pool_task_selftest(n, threads, rounds, spin_micros, 3, 150, cancel_every=0)
    assert d["sums"] == [sum(i * (r + 1) + 1 for i in range(n)) for r in range(rounds)]
    assert d["mismatches"] == []
    assert d["drain_errors"] == []
    assert d["cancelled"] == 0
    assert d["executed"] == d["submitted"] == rounds * 3 + rounds * sum(1 for i in range(n) if i % 16 == 5)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_thread_pool_cancel_and_task_errors(threads: int) -> None:
    rounds = 30
    # 8 tasks a round (4 before parallel_for, 4 from inside); cancel_pending after rounds 2, 5, 8, ...,
    # drain after rounds 4, 9, ...: task 26 (round 3) is never cancelled, so its failure must surface.
    d = core.thread_pool_task_selftest(64, threads, rounds, 50, 4, 300, cancel_every=3, throw_task=26)
    assert d["sums"] == [sum(i * (r + 1) + 1 for i in range(64)) for r in range(rounds)]
    assert d["mismatches"] == []  # after every drain: executed == submitted - cancelled
    assert d["executed"] + d["cancelled"] == d["submitted"]
    if threads == 1:
        assert d["cancelled"] == 0  # no workers: tasks run inline in submit()
    # A task's exception reaches the next drain(), once, and the pool keeps working.
    assert d["drain_errors"] == ["planted task failure 26"]


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_thread_pool_destructor_with_pending_tasks(threads: int) -> None:
    """Destroying a pool with queued tasks drops them, waits for the running ones, and returns promptly."""
    import time

    start = time.perf_counter()
    ran = core.thread_pool_destroy_with_pending(threads, 200, 5000)
    elapsed = time.perf_counter() - start
    if threads == 1:
        assert ran == 200  # no workers: each ran inline
    else:
        assert 0 <= ran < 200
        assert elapsed < 0.5  # no hang (the workers finish at most one 5 ms task each)
