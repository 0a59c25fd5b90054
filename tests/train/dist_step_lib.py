"""One optimizer step of every component, at world size 1 on the whole batch or as one rank of a gloo
group on its slice (tests/train/test_distributed_step.py).

Run as a script it is one rank: ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` in the environment,
``python dist_step_lib.py OUT BATCH_SIZES`` (comma-separated); it writes its results to ``OUT``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

# the tests' helpers (models/helpers.py), also when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.helpers import make_batch

from deltairis import distributed
from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.train.components import COMPONENT_NAMES, build_components
from deltairis.config.schema import TrainingConfig
from deltairis.train.configuration import compose_config, typed_config
from deltairis.train.step import gradient_step, sync_torch_rng

NUM_ACTIONS = 5
SEQ_LEN = {"tokenizer": 3, "world_model": 4}


def _training_config() -> TrainingConfig:
    cfg = compose_config(
        [
            "env=toy",
            "params=tiny",
            "common.device=cpu",
            "wandb.mode=disabled",
            # a large learning rate makes the step (and any difference between the paths) visible
            "training.tokenizer.learning_rate=1e-2",
            "training.world_model.learning_rate=1e-2",
            "training.actor_critic.learning_rate=1e-2",
        ]
    )
    return typed_config(cfg).training


def initial_agent() -> Agent:
    torch.manual_seed(1234)
    cfg = make_agent_config("tiny", NUM_ACTIONS)
    cfg = dataclasses.replace(cfg, actor_critic=dataclasses.replace(cfg.actor_critic, horizon=4))
    return Agent(cfg)


def one_step_each(batch_size: int) -> dict[str, Any]:
    """From the same initial agent, one step of each component on a fixed batch of ``batch_size`` rows
    (rows of padding on both sides); at world size W > 1 this rank trains its rows of that batch.

    Returns, per component, the agent's state dict after the step (parameters and buffers: the codebook
    EMA, the target critic), the gradients the optimizer applied (averaged over ranks, clipped) and the
    metrics averaged over ranks.
    """
    ctx = distributed.current()
    rows = ctx.row_slice(batch_size) if ctx.is_distributed else slice(0, batch_size)
    training = _training_config()
    out: dict[str, Any] = {"rows": (rows.start, rows.stop)}
    for name in COMPONENT_NAMES:
        agent = initial_agent()
        components = build_components(agent, training)
        component = components[name]
        seq_len = SEQ_LEN.get(name, component.seq_len)
        batch = make_batch(batch_size, seq_len, NUM_ACTIONS, pad_left=2, pad_right=1, seed=7)
        # Adam's first step is about lr * sign(grad): where a gradient is below its eps (1e-8), e.g. an
        # attention key bias whose gradient is zero in exact arithmetic, float reduction noise would flip
        # that sign. A larger eps keeps the step a smooth function of the gradient, so that comparing the
        # weights after it compares the gradients the ranks averaged (which are compared directly too).
        for group in component.optimizer.param_groups:
            group["eps"] = 1e-3
        agent.eval()
        component.train_module.train()
        torch.manual_seed(99)  # the state the codebook's revival draws from (synced over ranks below)
        sync_torch_rng(torch.device("cpu"))
        res = gradient_step(
            component,
            batch.rows(rows),
            seed=321,
            max_grad_norm=float(component.config.max_grad_norm),
            row_offset=rows.start,
        )
        assert res.applied, name
        metrics = {k: v.detach().float().clone() for k, v in res.metrics.items()}  # averaged over ranks
        out[name] = {
            "state": {k: v.detach().clone() for k, v in agent.state_dict().items()},
            "grads": {
                n: p.grad.detach().clone()
                for n, p in component.train_module.named_parameters()
                if p.grad is not None
            },
            "metrics": metrics,
            "grad_norm": res.grad_norm.clone(),
        }
    return out


def average_gradients_case() -> dict[str, torch.Tensor | None]:
    """Gradients present on every rank, on rank 0 only, and on none, after ``average_gradients``."""
    rank = distributed.current().rank
    every, some, none = (torch.nn.Parameter(torch.ones(n)) for n in (3, 2, 4))
    every.grad = torch.full((3,), rank + 1.0)
    some.grad = torch.full((2,), 4.0) if rank == 0 else None
    distributed.average_gradients([every, some, none])
    return {"every": every.grad, "some": some.grad, "none": none.grad}


def main() -> None:
    out_path, sizes = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    torch.set_num_threads(1)
    distributed.init("cpu", timeout_s=120)
    try:
        result: dict[Any, Any] = {b: one_step_each(b) for b in sizes}
        result["average_gradients"] = average_gradients_case()
        torch.save(result, out_path)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
