"""Profile one actor-critic update (burn-in + imagination + backward) at a preset's full batch on CUDA.

    python benchmarks/gpu/profile_ac.py --preset crafter --out DIR

For each backend (``torch``: pure PyTorch; ``auto``: Triton kernels where the dispatcher picks them;
``auto+graphs``: also CUDA-graph replay of the imagined step; ``auto+rollout``: the whole no-grad rollout
replayed as one CUDA graph, then the policy's forward with grad, ``rl/rollout.py``) prints the mean step time over a few
timed steps (CUDA events) and the top operators by GPU time and by CPU time from ``torch.profiler``,
so that a slower fast path can be traced to the operator responsible. Writes ``profile_ac.txt``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_models import FULL, _batch

from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.models import configure_optimizer
from deltairis.rl import ActorCriticLoss


def run(preset: str, backend: str, graphs: bool | str, lines: list[str], steps: int) -> None:
    os.environ["DELTAIRIS_BACKEND"] = backend
    dev = torch.device("cuda")
    cfg = make_agent_config(preset)
    agent = Agent(cfg).to(dev).train()
    b = FULL[preset][2]
    batch = _batch(b, cfg.actor_critic.burn_in + 1, cfg.num_actions, dev)
    ac = agent.actor_critic
    opt = configure_optimizer(ac.model, 1e-4, kind="adam")
    seed = iter(range(10**6))
    loss_fn = ActorCriticLoss(
        ac, agent.tokenizer, agent.world_model, cuda_graphs=graphs is True, graph_rollout=graphs == "rollout"
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(batch, next(seed)).loss
        loss.backward()
        opt.step()
        ac.update_target()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    label = f"{preset} backend={backend} graphs={graphs} B={b}"
    lines.append(f"== {label}: {start.elapsed_time(end) / steps:.1f} ms/step (mean of {steps})")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    lines.append(ka.table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
    lines.append(ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    print("\n".join(lines[-3:]), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="crafter")
    p.add_argument("--out", default=".")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_ac.py needs a CUDA device")
    lines: list[str] = [f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}"]
    for backend, graphs in (("torch", False), ("auto", False), ("auto", True), ("auto", "rollout")):
        try:
            run(args.preset, backend, graphs, lines, args.steps)
        except Exception as err:  # noqa: BLE001 - keep the other variants' figures
            lines.append(f"== {args.preset} backend={backend} graphs={graphs}: FAILED {err!r}")
        Path(args.out, "profile_ac.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
