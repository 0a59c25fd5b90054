"""What a run checks as it starts (deltairis.train.run_checks): the memory plan before the first
collection (stop with exit 2, or ``training.auto_grad_acc``), the preflight of the GPU fast paths (recorded,
failures switched off) and the one warning of an epoch that takes hours.

The in-process runs replace the plan's estimator by a fixed plan (the estimates themselves are checked in
test_memory.py) and force the CPU to count as a fast-path device where the preflight is tested, as
test_preflight.py does.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deltairis.train import preflight as pf
from deltairis.train import run_checks
from deltairis.train.configuration import typed_config
from deltairis.train.memory import ComponentPlan, GiB, MemoryPlan, MemoryPlanError, MiB, host_available_bytes
from deltairis.train.run_checks import (
    INFERENCE_PATHS,
    EpochEta,
    MemoryCheck,
    Preflight,
    check_memory,
    combine_over_ranks,
    preflight_for_inference,
)
from deltairis.train.trainer import Trainer, train

# -- helpers ---------------------------------------------------------------------------------------------


def _plan(**bad: tuple[int | None, int | None]) -> MemoryPlan:
    """A CPU plan where the components named in ``bad`` (-> (grad_acc_steps, micro_batch)) do not fit."""
    rows = {}
    for name, b in (("tokenizer", 2), ("world_model", 2), ("actor_critic", 2)):
        if name in bad:
            k, micro = bad[name]
            rows[name] = ComponentPlan(name, b, 30 * GiB, 20 * GiB, False, k, micro, 10 * GiB)
        else:
            rows[name] = ComponentPlan(name, b, 100 * MiB, 20 * GiB, True, 1, b, 100 * MiB)
    return MemoryPlan("cpu", 20 * GiB, 0.15, rows)


@pytest.fixture
def fixed_plan(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MemoryPlan]]:
    """The run's memory plan is the one the test puts in the list (the estimator is not run)."""
    box: list[MemoryPlan] = [_plan()]
    monkeypatch.setattr(run_checks, "plan_for_config", lambda cfg, num_actions, device, world_size=1: box[0])
    yield box


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def preflight_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_config
) -> Iterator[tuple[Path, Trainer, list]]:
    """One epoch with the CPU counted as a fast-path device, every check not applicable except
    bf16.tokenizer, which raises: (run folder, trainer, log records of the run)."""
    mp = pytest.MonkeyPatch()
    calls: list[str] = []

    def not_applicable(name: str, ctx: pf.Context) -> str:
        calls.append(name)
        raise pf.NotApplicable("not in this test")

    def broken(ctx: pf.Context) -> str:
        calls.append("bf16.tokenizer")
        raise RuntimeError("bf16 kernel exploded")

    checks = {name: functools.partial(not_applicable, name) for name in pf.FAST_PATHS}
    checks["bf16.tokenizer"] = broken
    mp.setattr(pf, "fast_paths_active", lambda device: True)
    mp.setattr(pf, "CHECKS", checks)
    handler = _Records()
    logging.getLogger("deltairis").addHandler(handler)
    run = tmp_path_factory.mktemp("runs") / "preflight"
    try:
        cfg = tiny_config(
            "common.epochs=1", "training.tokenizer.mixed_precision=true", "evaluation.should=false"
        )
        trainer = train(cfg, run)
    finally:
        logging.getLogger("deltairis").removeHandler(handler)
        mp.undo()
    assert calls == list(pf.FAST_PATHS)
    yield run, trainer, handler.records


# -- the memory plan ----------------------------------------------------------------------------------------


def test_default_crafter_run_on_this_cpu_stops_with_the_memory_message(tmp_path: Path) -> None:
    """`deltairis-train` with no arguments (Crafter preset) on a CPU machine whose RAM cannot hold the
    tokenizer's step: exit 2 with the message, before any collection or training step."""
    available = host_available_bytes()
    if available is None or available > 34 * GiB:  # the Crafter tokenizer step needs ~29 GiB
        pytest.skip(f"this machine has {available} bytes available: the Crafter preset may fit")
    exe = shutil.which("deltairis-train") or str(Path(sys.executable).parent / "deltairis-train")
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [exe, f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-4000:])
    err = proc.stderr
    assert "Not enough memory to train the tokenizer at batch_size 32 on cpu" in err, err[-3000:]
    assert "available" in err and "GiB" in err
    assert "training.tokenizer.grad_acc_steps=" in err and "training.tokenizer.batch_size=" in err
    assert "deltairis-train env=toy params=tiny" in err
    assert "Traceback" not in err
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "metrics.jsonl").exists()
    stored = [p for p in (run / "checkpoints").rglob("*") if p.is_file()]
    assert not stored, stored  # no store opened, nothing collected
    record = json.loads((run / "config" / "memory_plan.json").read_text())
    assert record["fits"] is False and record["components"]["tokenizer"]["fits"] is False


def test_a_plan_that_does_not_fit_stops_before_collecting(fixed_plan, tiny_config, run_dir: Path) -> None:
    fixed_plan[0] = _plan(tokenizer=(2, 1))
    with pytest.raises(MemoryPlanError) as info:
        Trainer(tiny_config("common.epochs=1"), run_dir)
    text = str(info.value)
    assert "tokenizer at batch_size 2" in text and "30.0 GiB" in text and "20.0 GiB" in text
    assert "training.tokenizer.grad_acc_steps=2 training.tokenizer.batch_size=1" in text
    assert "env=toy params=tiny" in text
    stored = [p for p in (run_dir / "checkpoints").rglob("*") if p.is_file()]
    assert not stored, stored  # no store opened, nothing collected
    assert json.loads((run_dir / "config" / "memory_plan.json").read_text())["fits"] is False
    # the run folder was let go: the plan fits now, and a trainer starts in the same folder
    fixed_plan[0] = _plan()
    Trainer(tiny_config("common.epochs=1"), run_dir).close()


def test_auto_grad_acc_trains_in_the_suggested_split(fixed_plan, tiny_config, run_dir: Path, caplog) -> None:
    fixed_plan[0] = _plan(tokenizer=(2, 1))
    caplog.set_level(logging.INFO, logger="deltairis")
    trainer = Trainer(tiny_config("common.epochs=1", "training.auto_grad_acc=true"), run_dir)
    try:
        c = trainer.cfg.training.tokenizer
        assert (c.grad_acc_steps, c.batch_size) == (2, 1)
        assert trainer.components["tokenizer"].grad_acc_steps == 2
        assert trainer.components["tokenizer"].config.batch_size == 1
        assert trainer.cfg.training.world_model.grad_acc_steps == 1  # fits: unchanged
    finally:
        trainer.close()
    said = [r.getMessage() for r in caplog.records if "training.auto_grad_acc" in r.getMessage()]
    assert len(said) == 1 and "training.tokenizer.grad_acc_steps=2 training.tokenizer.batch_size=1" in said[0]
    assert json.loads((run_dir / "config" / "memory_plan.json").read_text())["auto_grad_acc"] == ["tokenizer"]


def test_auto_grad_acc_cannot_help_when_not_even_one_row_fits(fixed_plan, tiny_config, run_dir: Path) -> None:
    fixed_plan[0] = _plan(tokenizer=(2, 1), world_model=(None, None))
    with pytest.raises(MemoryPlanError, match="(?s)world_model at batch_size 2.*Not even a batch of 1 fits"):
        Trainer(tiny_config("common.epochs=1", "training.auto_grad_acc=true"), run_dir)


def test_check_memory_keeps_the_given_config_and_multiplies_configured_steps(tiny_config) -> None:
    from deltairis.train.memory import plan_for_config

    cfg = typed_config(tiny_config("training.auto_grad_acc=true", "training.tokenizer.grad_acc_steps=2"))
    only = {"components": ("tokenizer",), "available": None}
    fits = plan_for_config(cfg, 5, "cpu", **only).components["tokenizer"]
    assert fits.fits and fits.grad_acc_steps == 2 and fits.micro_batch_size == 2  # the configured split
    one = plan_for_config(typed_config(tiny_config("training.tokenizer.batch_size=1")), 5, "cpu", **only)
    e1, e2 = one.components["tokenizer"].estimate_bytes, fits.estimate_bytes
    assert e1 < e2
    with pytest.MonkeyPatch.context() as mp:  # a batch of 2 does not fit, a batch of 1 does
        available = int((e1 + e2) / 2 / 0.85)
        mp.setattr(
            run_checks,
            "plan_for_config",
            functools.partial(plan_for_config, available=available, components=("tokenizer",)),
        )
        found = check_memory(cfg, 5, torch.device("cpu"))
    row = found.plan.components["tokenizer"]
    assert not row.fits and row.grad_acc_steps == 4 and row.micro_batch_size == 1  # 2 configured x 2
    assert found.ok and found.adjusted == ("tokenizer",)
    assert (found.cfg.training.tokenizer.grad_acc_steps, found.cfg.training.tokenizer.batch_size) == (4, 1)
    assert (cfg.training.tokenizer.grad_acc_steps, cfg.training.tokenizer.batch_size) == (2, 2)  # not changed


def test_plan_of_a_distributed_run_is_per_rank_and_names_global_overrides(tiny_config) -> None:
    from deltairis.train.memory import plan_for_config

    cfg = typed_config(tiny_config("training.tokenizer.batch_size=8"))
    single = plan_for_config(cfg, 5, "cpu", available=None, components=("tokenizer",))
    two = plan_for_config(cfg, 5, "cpu", available=None, components=("tokenizer",), world_size=2)
    assert two.world_size == 2 and two.components["tokenizer"].batch_size == 8
    # each of 2 ranks holds 4 rows: the estimate of a batch of 4 in one process
    half = typed_config(tiny_config("training.tokenizer.batch_size=4"))
    quarter = plan_for_config(half, 5, "cpu", available=None, components=("tokenizer",))
    assert two.components["tokenizer"].estimate_bytes == quarter.components["tokenizer"].estimate_bytes
    assert single.components["tokenizer"].estimate_bytes > two.components["tokenizer"].estimate_bytes
    budget = two.components["tokenizer"].estimate_bytes  # 4 rows per rank do not fit, 2 do
    small = plan_for_config(
        cfg, 5, "cpu", available=int(budget * 0.99 / 0.85), components=("tokenizer",), world_size=2
    )
    row = small.components["tokenizer"]
    assert not row.fits and row.grad_acc_steps == 2 and row.micro_batch_size == 4  # 2 x (2 rows on 2 ranks)
    assert "batch_size 8 (4 rows on each of 2 ranks)" in small.message()


def test_a_resumed_run_makes_its_plan_too(preflight_run, fixed_plan, tiny_config) -> None:
    run, _, _ = preflight_run
    before = (run / "checkpoints" / "last.pt").read_bytes()
    fixed_plan[0] = _plan(actor_critic=(2, 1))
    resumed = (run / "config" / "trainer.yaml").read_text()
    assert "auto_grad_acc: false" in resumed
    with pytest.raises(MemoryPlanError, match="actor_critic at batch_size 2"):
        train(tiny_config("common.epochs=2", "common.resume=true"), run)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_followers_raise_the_plan_of_rank_0() -> None:
    """A rank > 0 receives rank 0's plan in the start message and stops with the same error."""
    check = MemoryCheck(cfg=None, plan=_plan(tokenizer=(2, 1)))  # type: ignore[arg-type]
    with pytest.raises(MemoryPlanError, match="training.tokenizer.grad_acc_steps=2"):
        check.raise_if_not_ok()
    MemoryCheck(cfg=None, plan=_plan()).raise_if_not_ok()  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_ranks_all_stop_when_the_plan_does_not_fit(tmp_path: Path, tiny_overrides) -> None:
    """2 ranks (gloo, CPU) of a run whose tokenizer step cannot fit: both exit 2 at once, none hangs."""
    rows = 1 << 16  # 32768 rows a rank: terabytes of activations, beyond any machine's RAM
    args = [
        *tiny_overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        "common.epochs=1",
        f"training.tokenizer.batch_size={rows}",
        "distributed.timeout_s=60",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", "-m", "deltairis.cli.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False, env=env)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count("Not enough memory to train the tokenizer") >= 2, out[-4000:]  # rank 0 and rank 1
    assert "32768 rows on each of 2 ranks" in out
    assert "distributed error" not in out  # no rank waited for the other until the timeout


# -- the preflight ----------------------------------------------------------------------------------------------


def test_trainer_records_the_preflight_and_switches_failures_off(preflight_run) -> None:
    run, trainer, records = preflight_run
    assert trainer.cfg.training.tokenizer.mixed_precision is False  # the failed path is off for this run
    assert trainer.components["tokenizer"].config.mixed_precision is False
    assert [r.name for r in trainer.preflight.results] == list(pf.FAST_PATHS)
    assert trainer.preflight.switched_off == ["bf16.tokenizer"]
    warnings = [
        r.getMessage() for r in records if r.levelno == logging.WARNING and "fast path" in r.getMessage()
    ]
    assert len(warnings) == 1 and "bf16.tokenizer" in warnings[0] and "exploded" in warnings[0]
    saved = json.loads((run / "config" / "preflight.json").read_text())
    assert saved["enabled"] is True and saved["device"] == "cpu"
    by_name = {r["name"]: r for r in saved["preflight"]}
    assert by_name["bf16.tokenizer"]["status"].startswith("failed: RuntimeError: bf16 kernel exploded")
    assert by_name["frame_cnn"]["status"] == "not applicable"
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 1  # still one record per epoch: the preflight is part of the first
    assert first["preflight/bf16.tokenizer"] == 0.0 and first["preflight/num_failed"] == 1.0
    assert "preflight/frame_cnn" not in first  # not applicable
    # the saved config keeps the configured value: a resumed run checks its fast paths again
    assert "mixed_precision: true" in (run / "config" / "trainer.yaml").read_text()


def test_preflight_off_checks_nothing(monkeypatch: pytest.MonkeyPatch, tiny_config, run_dir: Path) -> None:
    monkeypatch.setattr(pf, "fast_paths_active", lambda device: True)
    monkeypatch.setattr(pf, "CHECKS", {})  # any check would raise KeyError
    trainer = Trainer(tiny_config("common.epochs=1", "common.preflight=false"), run_dir)
    trainer.close()
    assert trainer.preflight.results == () and trainer.preflight.metrics() == {}
    assert json.loads((run_dir / "config" / "preflight.json").read_text())["enabled"] is False


def test_a_cpu_run_records_no_preflight_metrics(tiny_config, run_dir: Path) -> None:
    trainer = Trainer(tiny_config("common.epochs=1"), run_dir)
    trainer.close()
    assert all(r.status == pf.NOT_APPLICABLE for r in trainer.preflight.results)
    assert trainer.preflight.metrics() == {}
    saved = json.loads((run_dir / "config" / "preflight.json").read_text())
    assert [r["name"] for r in saved["preflight"]] == list(pf.FAST_PATHS)


def test_failures_combine_over_ranks() -> None:
    ok = [pf.FastPathResult(n, pf.OK, "fine") for n in pf.FAST_PATHS]
    bad = list(ok)
    bad[2] = pf.FastPathResult(pf.FAST_PATHS[2], "failed: Mismatch on this GPU", "")
    merged = combine_over_ranks([ok, bad])
    assert [r.failed for r in merged] == [i == 2 for i in range(len(pf.FAST_PATHS))]
    assert merged[2].status == "failed: rank 1: Mismatch on this GPU"
    assert combine_over_ranks([ok]) == ok


def test_preflight_metrics_only_where_fast_paths_run() -> None:
    results = (pf.FastPathResult("frame_cnn", pf.OK), pf.FastPathResult("cuda_graphs", "failed: x"))
    assert Preflight(torch.device("cpu"), True, results).metrics() == {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pf, "fast_paths_active", lambda device: True)
        got = Preflight(torch.device("cpu"), True, results).metrics()
    assert got == {"preflight/frame_cnn": 1.0, "preflight/cuda_graphs": 0.0, "preflight/num_failed": 1.0}


# -- the ETA ----------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _eta(tiny_config, clock: FakeClock, *extra: str) -> EpochEta:
    cfg = typed_config(tiny_config("common.epochs=3", *extra))
    return EpochEta(cfg, torch.device("cpu"), clock=clock)


def _phase(eta: EpochEta, clock: FakeClock, phase: str, updates: int, units: int, seconds: float) -> None:
    eta.start(phase, 1)
    for _ in range(updates):
        clock.now += seconds
        eta.advance(phase, units)
    eta.end(phase)


def test_eta_warns_once_from_the_first_steps(tiny_config, caplog) -> None:
    caplog.set_level(logging.INFO, logger="deltairis")
    clock = FakeClock()
    # collection: 64 env steps (2 envs) at 1 s per update of 2 steps; tokenizer steps at 2 h each
    eta = _eta(tiny_config, clock, "training.tokenizer.steps_first_epoch=5")
    eta.begin_epoch(1)
    _phase(eta, clock, "collect", 32, 2, 1.0)
    assert not caplog.records  # 64 s of collection: fast
    _phase(eta, clock, "tokenizer", 5, 1, 7200.0)
    _phase(eta, clock, "world_model", 2, 1, 7200.0)
    eta.begin_epoch(2)
    _phase(eta, clock, "tokenizer", 5, 1, 7200.0)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    text = warned[0].getMessage()
    # measured after the warm-up update: 3 steps in 3 x 2 h -> 5 steps = 10 h; world model unmeasured
    assert "epoch 1 will take at least about 10.0 h" in text
    assert "collect 64 env steps x 0.5 s = 32 s" in text and "tokenizer 5 steps x 7.2e+03 s = 10.0 h" in text
    assert "not measured yet: world_model, actor_critic" in text
    assert "and epoch 2 at least about 4.0 h of 3 epochs" in text  # 2 tokenizer steps + 16 env steps
    assert "deltairis-train env=toy params=tiny" in text


def test_eta_stays_quiet_for_a_fast_run(tiny_config, caplog) -> None:
    caplog.set_level(logging.INFO, logger="deltairis")
    clock = FakeClock()
    eta = _eta(tiny_config, clock)
    eta.begin_epoch(1)
    for phase, updates, units in (
        ("collect", 32, 2),
        ("tokenizer", 2, 1),
        ("world_model", 2, 1),
        ("actor_critic", 2, 1),
    ):
        _phase(eta, clock, phase, updates, units, 0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    total, parts, unknown = eta.projection(1)
    # collection: 3 updates of 2 steps in 1.5 s after the warm-up; 2-step phases timed whole
    assert not unknown and total == pytest.approx(64 * 0.25 + 3 * 2 * 0.5)
    assert len(parts) == 4


def test_trainer_warns_once_when_the_epoch_is_slow(monkeypatch, tiny_config, run_dir: Path, caplog) -> None:
    """The real trainer and clock; the threshold below any run's duration: exactly one warning."""
    monkeypatch.setattr(run_checks, "ETA_WARN_SECONDS", 1e-9)
    caplog.set_level(logging.INFO, logger="deltairis")
    train(tiny_config("common.epochs=1", "evaluation.should=false"), run_dir)
    slow = [r.getMessage() for r in caplog.records if "this run is slow" in r.getMessage()]
    assert len(slow) == 1 and "epoch 1 will take" in slow[0] and "env=toy params=tiny" in slow[0]


def test_trainer_does_not_warn_for_a_fast_run(preflight_run) -> None:
    _, _, records = preflight_run
    assert not [r for r in records if "this run is slow" in r.getMessage()]


def test_play_and_eval_check_the_inference_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    from deltairis.agent import Agent
    from deltairis.cli.common import default_config
    from deltairis.config import make_agent_config
    from deltairis.models.convnet import set_frame_cnn_options

    agent = Agent(make_agent_config("tiny"))
    set_frame_cnn_options(agent, channels_last=True, fused_norm=True)
    assert pf._frame_cnn_flags(agent) == (True, True)
    cfg = default_config("tiny")
    assert preflight_for_inference(agent, cfg, "cpu") == []  # CPU: nothing runs
    calls: list[str] = []

    def not_applicable(name: str, ctx: pf.Context) -> str:
        calls.append(name)
        raise pf.NotApplicable("not in this test")

    def broken(ctx: pf.Context) -> str:
        calls.append("frame_cnn")
        raise RuntimeError("NHWC conv is wrong here")

    checks = {name: functools.partial(not_applicable, name) for name in pf.FAST_PATHS}
    checks["frame_cnn"] = broken
    monkeypatch.setattr(pf, "fast_paths_active", lambda device: True)
    monkeypatch.setattr(pf, "CHECKS", checks)
    results = preflight_for_inference(agent, cfg, "cpu")
    assert calls == list(INFERENCE_PATHS)  # no bf16 (training only), no CUDA graphs (not used to play)
    assert [r.name for r in results if r.failed] == ["frame_cnn"]
    assert pf._frame_cnn_flags(agent) == (False, False)  # switched off: the plain layers play
    off = typed_config(default_config("tiny"))
    off.common.preflight = False
    calls.clear()
    assert preflight_for_inference(agent, off, "cpu") == [] and calls == []


def test_memory_plan_off_skips_the_estimate(monkeypatch: pytest.MonkeyPatch, tiny_config, caplog) -> None:
    asked: list[tuple[str, ...]] = []

    def plan(cfg, num_actions, device, components=("tokenizer", "world_model", "actor_critic"), world_size=1):
        asked.append(tuple(components))
        return _plan(tokenizer=(2, 1)) if components else MemoryPlan("cpu", 20 * GiB, 0.15, {})

    monkeypatch.setattr(run_checks, "plan_for_config", plan)
    cfg = typed_config(tiny_config("common.memory_plan=false"))
    with caplog.at_level("WARNING"):
        check = check_memory(cfg, 5, torch.device("cpu"))
    assert asked == [()] and check.ok and check.cfg is cfg
    assert "common.memory_plan=false" in caplog.text
    # on (the default) the same estimate stops the run
    with pytest.raises(MemoryPlanError):
        check_memory(typed_config(tiny_config()), 5, torch.device("cpu")).raise_if_not_ok()
