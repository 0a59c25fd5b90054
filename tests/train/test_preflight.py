"""Preflight of the GPU fast paths (deltairis.train.preflight), on CPU.

On CPU the fast paths are off, so the preflight reports every path 'not applicable' and runs nothing. The
other tests force the CPU to count as a fast-path device (``fast_paths_active``) and make a path raise
or compute wrong values, then check the verdict, the one warning, the switch and that the reference path
runs afterwards. The Triton kernels themselves are checked through Triton's interpreter in a subprocess
(Triton fixes its mode when first imported).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from deltairis import ops
from deltairis.agent import Agent
from deltairis.cli.common import default_config
from deltairis.config import make_agent_config
from deltairis.config.schema import TrainerConfig
from deltairis.models.convnet import FrameDecoder, FrameEncoder, FrameLayers, _LayoutMixin
from deltairis.rl.losses import ActorCriticLoss
from deltairis.train import preflight as pf
from deltairis.train.configuration import typed_config

REPO = Path(__file__).resolve().parents[2]


def small_cfg(batch_size: int = 2) -> TrainerConfig:
    """The tiny preset's training config with small batches (and short segments)."""
    cfg = typed_config(default_config("tiny"))
    for name in ("tokenizer", "world_model", "actor_critic"):
        c = getattr(cfg.training, name)
        c.batch_size = batch_size
        if c.seq_len is not None:
            c.seq_len = 2
    return cfg


def small_agent(**actor_critic: object) -> Agent:
    torch.manual_seed(0)
    cfg = make_agent_config("tiny")
    ac = dataclasses.replace(cfg.actor_critic, burn_in=1, horizon=2, **actor_critic)
    return Agent(dataclasses.replace(cfg, actor_critic=ac))


@pytest.fixture
def on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU counts as a device with fast paths (the checks run)."""
    monkeypatch.setattr(pf, "fast_paths_active", lambda device: True)


def _layout_flags(agent: Agent) -> list[bool]:
    return [m.channels_last for m in agent.modules() if isinstance(m, (FrameEncoder, FrameDecoder))]


def _fused_flags(agent: Agent) -> list[bool]:
    return [m.fused_norm for m in agent.modules() if isinstance(m, FrameLayers)]


def test_cpu_run_is_free_and_every_path_not_applicable(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: pf.Context) -> str:
        raise AssertionError("a check ran on CPU")

    monkeypatch.setattr(pf, "CHECKS", {name: boom for name in pf.FAST_PATHS})
    agent, cfg = small_agent(), small_cfg()
    t0 = time.perf_counter()
    results = pf.run_preflight(agent, cfg, "cpu")
    assert time.perf_counter() - t0 < 0.5
    assert [r.name for r in results] == list(pf.FAST_PATHS)
    assert all(r.status == pf.NOT_APPLICABLE and "CUDA" in r.detail for r in results)
    assert pf.apply_fallbacks(results, agent, cfg) == []
    assert pf.summary(results)["preflight"][0] == {
        "name": "triton.attention",
        "status": "not applicable",
        "detail": results[0].detail,
    }


def test_unknown_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fast path 'bogus'"):
        pf.run_preflight(small_agent(), small_cfg(), "cpu", paths=["bogus"])


def test_raising_path_is_failed_switched_off_with_one_warning(
    on_gpu: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(ctx: pf.Context) -> str:
        raise RuntimeError("cuDNN exploded")

    monkeypatch.setitem(pf.CHECKS, "frame_cnn", broken)
    agent, cfg = small_agent(), small_cfg()
    (result,) = pf.run_preflight(agent, cfg, "cpu", paths=["frame_cnn"])
    assert result.failed and result.status == "failed: RuntimeError: cuDNN exploded"
    assert all(_layout_flags(agent)) and all(_fused_flags(agent))  # run_preflight itself changes nothing
    with caplog.at_level(logging.WARNING, logger="deltairis.train.preflight"):
        assert pf.apply_fallbacks([result], agent, cfg) == ["frame_cnn"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "frame_cnn" in warnings[0].getMessage() and "cuDNN exploded" in warnings[0].getMessage()
    assert not any(_layout_flags(agent)) and not any(_fused_flags(agent))
    # the reference path now runs even where channels_last would be used (forced on CPU here)
    monkeypatch.setattr(_LayoutMixin, "cuda_only", False)
    agent.tokenizer.encoder(torch.rand(2, 7, 64, 64))
    convs = [
        m
        for m in agent.tokenizer.encoder.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1
    ]
    assert not any(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)


def test_wrong_kernel_values_fail_and_the_reference_is_used(
    on_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def wrong(x: torch.Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5, backend=None):
        calls.append(x.shape)
        return ops.group_norm_silu_ref(x, num_groups, weight, bias, eps) * 1.01

    monkeypatch.setattr(pf, "_kernels_in_use", lambda op: None)
    monkeypatch.setattr(ops, "group_norm_silu", wrong)
    agent, cfg = small_agent(), small_cfg()
    (result,) = pf.run_preflight(agent, cfg, "cpu", paths=["triton.group_norm_silu"])
    assert result.failed and "output" in result.status and "not close" in result.status
    pf.apply_fallbacks([result], agent, cfg)
    assert not any(_fused_flags(agent)) and all(_layout_flags(agent))
    calls.clear()
    agent.tokenizer.compute_loss(pf.synthetic_batch(1, 2, agent.config.num_actions, torch.device("cpu")))
    assert calls == []  # the frame CNNs run nn.GroupNorm + nn.SiLU


def test_kernel_failure_switches_only_that_kernel_off(on_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltairis.ops import _dispatch

    kernels_in_use = pf._kernels_in_use
    monkeypatch.setattr(pf, "_kernels_in_use", lambda op: None)
    monkeypatch.setattr(
        ops, "twohot_expectation", lambda logits, **kw: ops.twohot_expectation_ref(logits, **kw) + 1
    )
    monkeypatch.delenv("DELTAIRIS_BACKEND", raising=False)
    monkeypatch.setattr(_dispatch, "_SWITCHED_OFF", set())  # this process's switches, put back afterwards
    agent, cfg = small_agent(), small_cfg()
    (result,) = pf.run_preflight(agent, cfg, "cpu", paths=["triton.twohot_expectation"])
    assert result.failed and "symlog" in result.status
    assert ops.kernels_switched_off() == frozenset()  # the check itself leaves nothing switched off
    pf.apply_fallbacks([result], agent, cfg)
    assert ops.kernels_switched_off() == {"twohot_expectation"}  # that kernel only ...
    assert ops.requested_backend(None) == "auto" and "DELTAIRIS_BACKEND" not in os.environ  # ... no global switch
    assert "switched off" in (kernels_in_use("twohot_expectation") or "")  # a later preflight skips it
    assert kernels_in_use("sample_categorical") is None


def test_later_checks_run_without_the_failed_paths(on_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def broken(ctx: pf.Context) -> str:
        raise ValueError("bad kernel")

    def spy(ctx: pf.Context) -> str:
        seen.append((_fused_flags(ctx.agent), ctx.cfg.training.tokenizer.mixed_precision))
        return "fine"

    monkeypatch.setitem(pf.CHECKS, "triton.group_norm_silu", broken)
    monkeypatch.setitem(pf.CHECKS, "bf16.tokenizer", broken)
    monkeypatch.setitem(pf.CHECKS, "frame_cnn", spy)
    monkeypatch.setitem(pf.CHECKS, "bf16.world_model", spy)
    agent, cfg = small_agent(), small_cfg()
    cfg.training.tokenizer.mixed_precision = True
    paths = ["triton.group_norm_silu", "frame_cnn", "bf16.tokenizer", "bf16.world_model"]
    results = pf.run_preflight(agent, cfg, "cpu", paths=paths)
    assert [r.failed for r in results] == [True, False, True, False]
    assert not any(seen[0][0]) and seen[0][1]  # frame_cnn ran without the fused norm
    assert not seen[1][1]  # bf16.world_model ran with the tokenizer's bf16 off
    assert all(_fused_flags(agent)) and cfg.training.tokenizer.mixed_precision  # all undone
    assert pf.apply_fallbacks(results, agent, cfg) == ["triton.group_norm_silu", "bf16.tokenizer"]
    assert not cfg.training.tokenizer.mixed_precision and not any(_fused_flags(agent))


def test_real_checks_pass_on_cpu_and_leave_the_agent_unchanged(
    on_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """frame_cnn (channels_last forced on CPU), cuda_graphs (the whole-rollout path, eager on CPU) and
    bf16 (CPU autocast) run for real at small shapes, and the agent is left as it was."""
    monkeypatch.setattr(_LayoutMixin, "cuda_only", False)
    agent, cfg = small_agent(cuda_graph_rollout=True), small_cfg(batch_size=1)
    cfg.training.world_model.mixed_precision = True
    agent.train()
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    rng = torch.get_rng_state()
    results = pf.run_preflight(agent, cfg, "cpu", paths=["frame_cnn", "cuda_graphs", "bf16.world_model"])
    assert [r.status for r in results] == ["ok", "ok", "ok"], results
    assert "whole-rollout graph" in results[1].detail
    assert all(torch.equal(v, agent.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert agent.training and all(p.grad is None for p in agent.parameters())


def test_bf16_wrong_loss_fails_and_turns_mixed_precision_off(
    on_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, cfg = small_agent(), small_cfg()
    cfg.training.tokenizer.mixed_precision = True
    real = agent.tokenizer.compute_loss

    def skewed(batch):
        out = real(batch)
        if torch.is_autocast_enabled("cpu"):
            return out._replace(loss=out.loss * 2)
        return out

    monkeypatch.setattr(agent.tokenizer, "compute_loss", skewed)
    (result,) = pf.run_preflight(agent, cfg, "cpu", paths=["bf16.tokenizer"])
    assert result.failed and "loss" in result.status
    pf.apply_fallbacks([result], agent, cfg)
    assert not cfg.training.tokenizer.mixed_precision


def test_cuda_graphs_fallback_makes_the_loss_eager(on_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pf.CHECKS, "cuda_graphs", lambda ctx: (_ for _ in ()).throw(RuntimeError("capture")))
    agent, cfg = small_agent(cuda_graph_rollout=True), small_cfg()
    loss = ActorCriticLoss(agent.actor_critic, agent.tokenizer, agent.world_model)
    assert loss.graph_rollout
    results = pf.run_preflight(agent, cfg, "cpu", paths=["cuda_graphs"])
    assert loss.graph_rollout  # the trainer's loss is only changed by apply_fallbacks
    assert pf.apply_fallbacks(results, agent, cfg, loss) == ["cuda_graphs"]
    assert not loss.graph_rollout and not loss.env.cuda_graphs


def test_out_of_memory_retries_on_a_smaller_batch(on_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = []

    def hungry(ctx: pf.Context) -> str:
        rows.append(ctx.rows(8))
        if rows[-1] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "done"

    monkeypatch.setitem(pf.CHECKS, "frame_cnn", hungry)
    (result,) = pf.run_preflight(small_agent(), small_cfg(), "cpu", paths=["frame_cnn"])
    assert rows == [8, 4, 2]
    assert result.status == "ok" and "1/4 of the batch" in result.detail


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, os, sys
    import torch
    sys.path.insert(0, os.path.join(sys.argv[1], "tests", "ops"))
    import conftest  # noqa: F401  (deltairis.kernels from the source tree)
    from deltairis.agent import Agent
    from deltairis.cli.common import default_config
    from deltairis.config import make_agent_config
    from deltairis.train import preflight as pf
    from deltairis.train.configuration import typed_config

    pf.fast_paths_active = lambda device: True
    cfg = typed_config(default_config("tiny"))
    for name in ("tokenizer", "world_model", "actor_critic"):
        c = getattr(cfg.training, name)
        c.batch_size = 1
        c.seq_len = 2 if c.seq_len is not None else None
    torch.manual_seed(0)
    acfg = make_agent_config("tiny")
    agent = Agent(dataclasses.replace(acfg, actor_critic=dataclasses.replace(acfg.actor_critic, burn_in=1)))
    paths = ["triton.attention_kvcache", "triton.sample_categorical", "triton.twohot_expectation"]
    out = {"good": [r.as_dict() for r in pf.run_preflight(agent, cfg, "cpu", paths=paths)]}
    import deltairis.kernels.twohot as kt
    from deltairis.ops import _dispatch
    real = kt.twohot_expectation_triton
    kt.twohot_expectation_triton = lambda *a, **k: real(*a, **k) * 1.5
    _dispatch._KERNELS.clear()  # the dispatcher caches the kernel it loaded
    bad = pf.run_preflight(agent, cfg, "cpu", paths=["triton.twohot_expectation"])
    out["bad"] = [r.as_dict() for r in bad]
    out["off"] = pf.apply_fallbacks(bad, agent, cfg)
    out["backend"] = os.environ["DELTAIRIS_BACKEND"]
    out["switched_off"] = sorted(_dispatch.kernels_switched_off())
    logits = torch.randn(3, 5)
    kw = dict(backend=None, supported=lambda: None)
    out["kernels"] = {  # the failed op runs its reference, the others keep their kernel
        op: _dispatch.choose(op, (logits,), kernel=kernel, **kw) is not None
        for op, kernel in (("twohot_expectation", ("twohot", "twohot_expectation_triton")),
                           ("sample_categorical", ("sampling", "sample_categorical_triton")))
    }
    print(json.dumps(out))
    """
)


def test_kernel_checks_run_in_the_triton_interpreter(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    script = tmp_path / "interp.py"
    script.write_text(_INTERPRETER_SCRIPT)
    env = {**os.environ, "TRITON_INTERPRET": "1", "DELTAIRIS_BACKEND": "triton", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(script), str(REPO)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in out["good"]] == ["ok"] * 3, out["good"]
    assert out["bad"][0]["status"].startswith("failed:") and "symlog" in out["bad"][0]["status"]
    assert out["off"] == ["triton.twohot_expectation"] and out["backend"] == "triton"  # no global switch
    assert out["switched_off"] == ["twohot_expectation"]
    assert out["kernels"] == {"twohot_expectation": False, "sample_categorical": True}
