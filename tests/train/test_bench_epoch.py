"""benchmarks/bench_epoch.py runs in CI: the script at the tiny preset on CPU, a few steps of every phase,
writes a report with every field the GPU report and the README read (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_epoch.py"

# Small shapes so the run takes seconds on a 2-core CPU (the figures themselves do not matter here).
SMALL = [
    "collection.train.num_envs=2",
    "training.tokenizer.batch_size=2",
    "training.tokenizer.seq_len=3",
    "training.world_model.batch_size=2",
    "training.world_model.seq_len=4",
    "training.actor_critic.batch_size=2",
    "+agent.overrides.actor_critic.horizon=3",
]


def test_the_epoch_benchmark_reports_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "bench_epoch.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--preset=tiny",
            "--device=cpu",
            "--collect-steps=2",
            "--component-steps=1",
            "--warmup-steps=32",
            "--warmup-epochs=0",
            "--checkpoint-repeats=1",
            f"--json={out}",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["preset"] == "tiny" and r["device"] == "cpu" and r["device_name"] and r["num_envs"] == 2
    assert set(r["phases"]) == {"collection", "tokenizer", "world_model", "actor_critic", "checkpoint"}
    assert r["phases"]["collection"]["steps"] == 2 and r["phases"]["collection"]["full_steps"] == 200
    for name, full in (("tokenizer", 20), ("world_model", 60), ("actor_critic", 50)):
        p = r["phases"][name]
        assert p["steps"] == 1 and p["full_steps"] == full, name
        assert p["seconds"] > 0 and p["steps_per_s"] > 0
        assert abs(p["full_seconds_est"] - full / p["steps_per_s"]) < 1e-6 * max(1.0, p["full_seconds_est"])
    ck = r["phases"]["checkpoint"]
    assert ck["blocked_seconds"] > 0 and ck["sync_seconds"] > 0 and ck["write_seconds"] > 0
    assert ck["megabytes"] > 0 and ck["repeats"] == 1 and ck["epoch_blocked_seconds"] > 0
    assert r["collection_random"]["steps"] >= 2 and r["collection_random"]["steps_per_s"] > 0
    est = sum(p["full_seconds_est"] for p in r["phases"].values())
    assert abs(r["epoch"]["full_seconds_est"] - est) < 1e-6 * est
    assert r["epoch"]["seconds"] >= r["epoch"]["phases_seconds"] * 0.999
    assert r["peak_memory"] is None  # CPU
    assert "extrapolation" in r and "200 env steps on 2 envs" in r["extrapolation"]
    assert "tokenizer" in proc.stdout and "full epoch estimate" in proc.stdout
