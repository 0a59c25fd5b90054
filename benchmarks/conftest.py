"""Shared benchmark settings: every result records the machine it ran on.

Run with ``python -m pytest benchmarks --benchmark-only`` (add ``--benchmark-json=out.json`` to keep
the figures). Baselines run in the same session, next to the fast path, in the same group.
"""

from __future__ import annotations

import os
import platform

import pytest
import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs)"


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    """CUDA when available (override with DELTAIRIS_BENCH_DEVICE), else CPU."""
    name = os.environ.get("DELTAIRIS_BENCH_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _record_machine(request: pytest.FixtureRequest) -> None:
    if "benchmark" in request.fixturenames:
        bench = request.getfixturevalue("benchmark")
        dev = request.getfixturevalue("bench_device") if "bench_device" in request.fixturenames else "cpu"
        bench.extra_info["device"] = device_description(dev)
        bench.extra_info["torch"] = torch.__version__
        bench.extra_info["threads"] = torch.get_num_threads()
