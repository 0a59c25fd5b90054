"""Training-pipeline throughput: steps/s of every phase and the wall time of one tiny-preset epoch.

``python -m pytest benchmarks/bench_train.py --benchmark-only`` (CPU or CUDA, see ``bench_device``).

Groups (one test per variant, the baseline in the same run):

* ``train-<phase>``: one gradient step of the tokenizer / world model / actor-critic at the tiny
  preset's batch shapes, sampling batches from the C++ replay store (``cpp``) vs the NumPy reference
  store (``numpy``, the baseline); ``extra_info["steps_per_s"]``;
* ``collect``: env steps/s of collection with the policy (CNN-LSTM forward per step) vs uniformly random
  actions (the baseline: env + store only), on the toy env and on 16 native Crafter envs.

The whole epoch (per-phase times, the checkpoint, a full-epoch estimate) is ``benchmarks/bench_epoch.py``.
"""

from __future__ import annotations

import pytest
import torch

from deltairis.config import make_agent_config
from deltairis.data import ReplayStore
from deltairis.train.configuration import compose_config
from deltairis.train.trainer import Trainer

PHASES = ("tokenizer", "world_model", "actor_critic")
STEPS = 2


def _config(device: torch.device, *extra: str):
    return compose_config(
        ["env=toy", "params=tiny", f"common.device={device}", "wandb.mode=disabled", "common.progress_bar=false",
         "common.seed=0", "evaluation.should=false", *extra]
    )


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, bench_device: torch.device) -> Trainer:
    run = tmp_path_factory.mktemp("bench") / "run"
    steps = [f"training.{p}.{k}={STEPS}" for p in PHASES for k in ("steps_per_epoch", "steps_first_epoch")]
    t = Trainer(_config(bench_device, *steps), run)
    t.collect(1)  # the first epoch's random experience
    t.stores["train"].commit()  # visible to the NumPy store opened by the baseline
    yield t
    t.close()


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("phase", PHASES)
def test_phase_steps(benchmark, trainer: Trainer, phase: str, backend: str) -> None:
    from deltairis import native_available

    if backend == "cpp" and not native_available():
        pytest.skip("deltairis._core not built")
    benchmark.group = f"train-{phase}"
    own = trainer.stores["train"]
    trainer.stores["train"] = own if backend == "cpp" else ReplayStore(own.directory, backend="numpy", read_only=True)
    try:
        benchmark.pedantic(trainer.train_component, args=(phase, 10), rounds=3, warmup_rounds=1)
    finally:
        if trainer.stores["train"] is not own:
            trainer.stores["train"].close()
        trainer.stores["train"] = own
    c = getattr(trainer.cfg.training, phase)
    assert trainer.stores["train"].num_episodes > 0
    benchmark.extra_info["steps_per_s"] = STEPS / benchmark.stats.stats.mean
    benchmark.extra_info["batch"] = f"{c.batch_size} x {trainer.components[phase].seq_len}"
    benchmark.extra_info["store_backend"] = backend


@pytest.mark.parametrize("policy", ["agent", "random"])
def test_collect(benchmark, trainer: Trainer, policy: str) -> None:
    benchmark.group = "collect"
    n = 50 * trainer.collector.num_envs
    ac = trainer.agent.actor_critic if policy == "agent" else None

    def run() -> None:
        trainer.collector.collect(n, ac, trainer.device, epsilon=0.01, temperature=1.0, seed=1)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["env_steps_per_s"] = n / benchmark.stats.stats.mean
    benchmark.extra_info["num_envs"] = trainer.collector.num_envs


@pytest.fixture(scope="module")
def crafter_collector(tmp_path_factory: pytest.TempPathFactory, bench_device: torch.device):
    """16 native Crafter envs and the Crafter preset's actor-critic (the trainer's collection setup)."""
    from deltairis import native_available
    from deltairis.envs import make_vector_env
    from deltairis.models.actor_critic import ActorCritic
    from deltairis.train.collector import Collector

    if not native_available():
        pytest.skip("deltairis._core not built (native Crafter)")
    env = make_vector_env("crafter", 16, seed=0, backend="native")
    store = ReplayStore(tmp_path_factory.mktemp("crafter") / "store", backend="auto", create=True)
    config = make_agent_config("crafter", num_actions=int(env.num_actions)).actor_critic
    torch.manual_seed(0)
    ac = ActorCritic(config).to(bench_device).eval()
    yield Collector(env, store, config.burn_in, seed=0), ac
    env.close()
    store.close()


@pytest.mark.parametrize("policy", ["agent", "random"])
def test_collect_crafter(benchmark, crafter_collector, bench_device: torch.device, policy: str) -> None:
    """Env steps/s of 16 native Crafter envs with the Crafter preset's policy vs random actions."""
    benchmark.group = "collect-crafter"
    collector, ac = crafter_collector
    n = 16 * 16

    def run() -> None:
        collector.collect(
            n, ac if policy == "agent" else None, bench_device, epsilon=0.01, temperature=1.0, seed=1
        )

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["env_steps_per_s"] = n / benchmark.stats.stats.mean
    benchmark.extra_info["num_envs"] = collector.num_envs
