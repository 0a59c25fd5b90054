"""deltairis-doctor: the JSON report of a quick CPU run, exit statuses, the memory section and the table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deltairis.cli import doctor
from deltairis.train.preflight import FAST_PATHS, FastPathResult

MEMORY_KEYS = {"estimate_bytes", "available_bytes", "fits", "grad_acc_steps", "batch_size"}


def _command() -> list[str]:
    exe = shutil.which("deltairis-doctor") or str(Path(sys.executable).parent / "deltairis-doctor")
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "deltairis.cli.doctor"]


def test_quick_cpu_report_in_json() -> None:
    args = ["--json", "--quick", "--preset", "tiny", "--device", "cpu"]
    proc = subprocess.run([*_command(), *args], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert {"versions", "devices", "fast_paths", "memory", "timings"} <= set(report)
    assert report["ok"] is True and report["device"] == "cpu"
    for key in (
        "python",
        "torch",
        "cuda",
        "cudnn",
        "triton",
        "ale-py",
        "crafter",
        "gymnasium",
        "deltairis._core",
    ):
        assert report["versions"][key]
    assert report["devices"][0]["name"] == "cpu" and report["devices"][0]["total_bytes"] > 0
    assert [p["name"] for p in report["fast_paths"]] == list(FAST_PATHS)
    assert all(
        p["status"] == "not applicable" and set(p) == {"name", "status", "detail"}
        for p in report["fast_paths"]
    )
    mem = report["memory"]  # the tiny preset's plan on this CPU: every component fits, in one step
    assert set(mem) == {"tokenizer", "world_model", "actor_critic"}, mem
    assert all(set(m) == MEMORY_KEYS for m in mem.values())
    assert all(m["fits"] and m["grad_acc_steps"] == 1 and m["estimate_bytes"] > 0 for m in mem.values())
    assert [m["batch_size"] for m in mem.values()] == [32, 8, 32]  # the tiny preset's batches
    assert [t["component"] for t in report["timings"]] == ["tokenizer", "world_model", "actor_critic"]
    assert all(t["ok"] and t["fast_s"] > 0 and t["reference_s"] > 0 for t in report["timings"])
    assert report["crafter"]["num_envs"] == 16
    if report["versions"]["deltairis._core"].startswith("built"):
        assert report["crafter"]["ok"] and report["crafter"]["steps_per_s"] > 0


def _cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stub the slow sections (timed steps, Crafter) of an in-process run."""
    monkeypatch.setattr(
        doctor,
        "timings",
        lambda agent, cfg, device, warmup: [
            {"component": c, "fast_s": 0.1, "reference_s": 0.2, "same_path": False, "ok": True}
            for c in doctor.COMPONENTS
        ],
    )
    monkeypatch.setattr(
        doctor, "crafter_speed", lambda steps: {"ok": True, "num_envs": 16, "steps": 16, "steps_per_s": 1.0}
    )


def test_a_failed_fast_path_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cheap(monkeypatch)
    failed = FastPathResult(
        "triton.sample_categorical", "failed: 3 of 86 samples differ from the reference's", ""
    )
    monkeypatch.setattr(doctor, "run_preflight", lambda agent, cfg, device: [failed])
    assert doctor.main(["--quick", "--preset", "tiny", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "triton.sample_categorical" in out and "FAILED" in out and "3 of 86 samples differ" in out
    assert "same path" not in out and "2.00x" in out


def test_all_passing_exits_0_and_prints_tables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cheap(monkeypatch)
    assert doctor.main(["--quick", "--preset", "tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for title in (
        "Versions",
        "Devices",
        "Fast paths (preflight)",
        "Memory plan",
        "One training step",
        "Native Crafter",
    ):
        assert title in out
    assert "All checks passed." in out


def test_memory_section_reads_the_plan_and_a_misfit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from deltairis.train import memory as mm

    rows = {
        "tokenizer": mm.ComponentPlan("tokenizer", 32, 10, 100, True, 1, 32, 10),
        "world_model": mm.ComponentPlan("world_model", 32, 300, 100, False, 4, 8, 80),
        "actor_critic": mm.ComponentPlan("actor_critic", 86, 300, 100, False, None, None, 200),
    }
    plan = mm.MemoryPlan("cpu", 100, 0.15, rows)
    monkeypatch.setattr(mm, "plan_for_config", lambda cfg, num_actions, device: plan)
    mem = doctor.memory(doctor.preset_config("tiny"), doctor.resolve_device("cpu"))
    assert mem == {
        "tokenizer": {
            "estimate_bytes": 10,
            "available_bytes": 100,
            "fits": True,
            "grad_acc_steps": 1,
            "batch_size": 32,
        },
        "world_model": {
            "estimate_bytes": 300,
            "available_bytes": 100,
            "fits": False,
            "grad_acc_steps": 4,
            "batch_size": 8,
        },
        "actor_critic": {
            "estimate_bytes": 300,
            "available_bytes": 100,
            "fits": False,
            "grad_acc_steps": None,
            "batch_size": None,
        },
    }
    report = {
        "fast_paths": [],
        "versions": {"deltairis._core": "built"},
        "memory": mem,
        "timings": [],
        "crafter": {"ok": True},
    }
    assert doctor.failures(report) == [
        "memory: world_model does not fit",
        "memory: actor_critic does not fit",
    ]
    monkeypatch.setattr(mm, "plan_for_config", lambda cfg, num_actions, device: 1 / 0)
    broken = doctor.memory(doctor.preset_config("tiny"), doctor.resolve_device("cpu"))
    assert broken["status"] == "unavailable" and "ZeroDivisionError" in broken["reason"]


def test_cuda_device_without_cuda_is_a_command_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert doctor.main(["--json", "--preset", "tiny", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
