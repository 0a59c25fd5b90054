"""Forward+backward steps of the three models at the presets' shapes: the baselines that later
performance work (Triton kernels, CUDA graphs) is measured against.

On CPU the batch sizes are reduced to fit a 2-core, 24 GiB machine; on CUDA the presets' own batch
sizes are used (docs/algorithm.md section 6). Override with DELTAIRIS_BENCH_SCALE=full|cpu.
"""

from __future__ import annotations

import os

import pytest
import torch

from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.data import Batch
from deltairis.models import configure_optimizer, set_frame_cnn_options
from deltairis.rl import ActorCriticLoss

# (tokenizer B, T), (world model B, T), actor-critic B  -- full preset shapes from docs/algorithm.md section 6
FULL = {
    "crafter": ((32, 21), (32, 21), 86),
    "atari": ((16, 21), (64, 26), 64),
    "tiny": ((16, 21), (16, 21), 32),
}
CPU = {"crafter": ((2, 21), (4, 21), 4), "atari": ((2, 21), (4, 26), 4), "tiny": ((8, 21), (8, 21), 16)}


def _scale(device: torch.device) -> dict:
    scale = os.environ.get("DELTAIRIS_BENCH_SCALE", "full" if device.type == "cuda" else "cpu")
    return FULL if scale == "full" else CPU


def _batch(b: int, t: int, a: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        obs=torch.randint(0, 256, (b, t, 3, 64, 64), dtype=torch.uint8, generator=g),
        act=torch.randint(0, a, (b, t), generator=g),
        rew=torch.randn(b, t, generator=g),
        end=torch.zeros(b, t, dtype=torch.uint8),
        trunc=torch.zeros(b, t, dtype=torch.uint8),
        mask_padding=torch.ones(b, t, dtype=torch.bool),
        episode_id=torch.zeros(b, dtype=torch.long),
        start=torch.zeros(b, dtype=torch.long),
        stop=torch.full((b,), t, dtype=torch.long),
    ).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(loss_fn, params, opt, device: torch.device, autocast: bool, after=None):
    params = list(params)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and device.type == "cuda"):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        if after is not None:
            after()
        _sync(device)

    return step


@pytest.mark.parametrize("preset", ["tiny", "crafter", "atari"])
def test_tokenizer_step(benchmark, bench_device: torch.device, preset: str) -> None:
    cfg = make_agent_config(preset)
    agent = Agent(cfg).to(bench_device).train()
    (b, t), _, _ = _scale(bench_device)[preset]
    batch = _batch(b, t, cfg.num_actions, bench_device)
    tok = agent.tokenizer
    opt = configure_optimizer(tok, 1e-4, 0.01)
    benchmark.group = f"model-step-{preset}"
    benchmark.extra_info["shape"] = f"B={b} T={t}"
    step = _train_step(
        lambda: tok.compute_loss(batch).loss, tok.parameters(), opt, bench_device, autocast=True
    )
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("preset", ["tiny", "crafter", "atari"])
def test_world_model_step(benchmark, bench_device: torch.device, preset: str) -> None:
    cfg = make_agent_config(preset)
    agent = Agent(cfg).to(bench_device).train()
    _, (b, t), _ = _scale(bench_device)[preset]
    batch = _batch(b, t, cfg.num_actions, bench_device)
    wm = agent.world_model
    opt = configure_optimizer(wm, 1e-4, 0.01)
    benchmark.group = f"model-step-{preset}"
    benchmark.extra_info["shape"] = f"B={b} T={t}"
    step = _train_step(
        lambda: wm.compute_loss(batch, agent.tokenizer).loss,
        wm.parameters(),
        opt,
        bench_device,
        autocast=True,
    )
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


AC_MODES = ["pytorch", "pytorch-rollout-body", "triton", "triton-graphs", "triton-rollout-graph"]


@pytest.mark.parametrize("mode", AC_MODES)
@pytest.mark.parametrize("preset", ["tiny", "crafter", "atari"])
def test_actor_critic_step(
    benchmark, bench_device: torch.device, preset: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One actor-critic update including burn-in and the whole imagination (horizon from the preset).

    ``pytorch`` is the pure-PyTorch baseline (``DELTAIRIS_BACKEND=torch``, eager); ``triton`` uses the
    kernels eagerly; ``triton-graphs`` also replays the imagined world-model step from CUDA graphs;
    ``triton-rollout-graph`` replays the whole no-grad rollout as one CUDA graph and then runs the
    policy's forward with grad over the imagined frames (``rl/rollout.py``). ``pytorch-rollout-body``
    (CPU only) runs that rollout body eagerly, to show what the split itself costs next to ``pytorch``.
    """
    if mode == "pytorch-rollout-body" and bench_device.type == "cuda":
        pytest.skip("on CUDA the rollout body is measured captured (triton-rollout-graph)")
    if mode.startswith("triton") and bench_device.type != "cuda":
        pytest.skip("the Triton paths need a CUDA device")
    monkeypatch.setenv("DELTAIRIS_BACKEND", "torch" if mode.startswith("pytorch") else "auto")
    cfg = make_agent_config(preset)
    agent = Agent(cfg).to(bench_device).train()
    _, _, b = _scale(bench_device)[preset]
    batch = _batch(b, cfg.actor_critic.burn_in + 1, cfg.num_actions, bench_device)
    ac = agent.actor_critic
    opt = configure_optimizer(ac.model, 1e-4, kind="adam")
    benchmark.group = f"actor-critic-step-{preset}"
    benchmark.extra_info["shape"] = f"B={b} burn-in={cfg.actor_critic.burn_in} H={cfg.actor_critic.horizon}"
    seed = iter(range(10**6))
    loss_fn = ActorCriticLoss(
        ac,
        agent.tokenizer,
        agent.world_model,
        cuda_graphs=mode == "triton-graphs",
        graph_rollout=mode in ("triton-rollout-graph", "pytorch-rollout-body"),
    )

    def loss() -> torch.Tensor:
        return loss_fn(batch, next(seed)).loss

    step = _train_step(loss, ac.model.parameters(), opt, bench_device, autocast=False, after=ac.update_target)
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("variant", ["plain", "channels_last", "fused_norm", "channels_last+fused_norm"])
def test_tokenizer_frame_cnn_fast_paths(benchmark, bench_device: torch.device, variant: str) -> None:
    """Tokenizer train step (crafter shapes, bf16 autocast as the trainer runs it) with the frame CNNs'
    fast paths off and on (CUDA only: on CPU both switches leave the plain layers); ``plain`` is the
    baseline."""
    autocast = True
    if bench_device.type != "cuda":
        pytest.skip("channels_last and the fused GroupNorm+SiLU only change CUDA runs")
    cfg = make_agent_config("crafter")
    agent = Agent(cfg).to(bench_device).train()
    (b, t), _, _ = _scale(bench_device)["crafter"]
    batch = _batch(b, t, cfg.num_actions, bench_device)
    tok = agent.tokenizer
    set_frame_cnn_options(tok, channels_last="channels_last" in variant, fused_norm="fused_norm" in variant)
    opt = configure_optimizer(tok, 1e-4, 0.01)
    benchmark.group = "tokenizer-frame-cnn-crafter-bf16"
    benchmark.extra_info["shape"] = f"B={b} T={t}"
    benchmark.extra_info["variant"] = variant
    step = _train_step(
        lambda: tok.compute_loss(batch).loss, tok.parameters(), opt, bench_device, autocast=autocast
    )
    benchmark.pedantic(step, rounds=5, warmup_rounds=2)
