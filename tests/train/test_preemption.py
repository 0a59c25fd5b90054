"""SIGTERM mid-phase, then resume: the run ends exactly where an uninterrupted run ends.

The signal is a real SIGTERM sent by the process to itself at a fixed point (the k-th loss call of a
component, or the k-th env step of the collection), so the test is deterministic. Bit-identical here:
every weight and buffer of the agent, every optimizer state, every stored episode and the visit counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from deltairis.checkpoint import load_torch_file
from deltairis.errors import Preempted
from deltairis.train.preemption import PREEMPTED_EXIT_CODE, StopSignals
from deltairis.train.trainer import Trainer

# 2 epochs so that visit counts (from epoch 2) and a policy-driven collection are part of the check
RUN = ("common.epochs=2", "collection.train.num_steps=24", "evaluation.every=2")


def _final_state(trainer_dir) -> dict:
    ck = trainer_dir / "checkpoints"
    agent = load_torch_file(ck / "last.pt", "agent")["state_dict"]
    optim = load_torch_file(ck / "optimizer.pt", "optimizer")
    state = load_torch_file(ck / "trainer_state.pt", "state")
    episodes = (trainer_dir / "episodes.jsonl").read_text()  # one line per finished episode, no duplicate
    return {"agent": agent, "optim": optim, "state": state, "episodes": episodes}


def _assert_same_tree(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _store_contents(trainer: Trainer) -> tuple:
    store = trainer.stores["train"]
    eps = [store.load_episode(i) for i in range(store.num_episodes)]
    counts = {c: store.visit_counts(c).copy() for c in ("tokenizer", "world_model", "actor_critic")}
    return [(e.obs, e.act, e.rew, e.end, e.trunc) for e in eps], counts


#: per env: overrides. Crafter runs on the native engine (its state is pickled byte for byte), with short
#: episodes so that the collection crosses resets.
ENVS = {
    "toy": (),
    "crafter": ("env.train.max_episode_steps=40", "env.test.max_episode_steps=25", "env.num_threads=2"),
}


@pytest.fixture(scope="module", params=sorted(ENVS))
def env_name(request) -> str:
    return request.param


def _config(overrides: list[str], env: str, *extra: str):
    from deltairis.train.configuration import compose_config

    base = [f"env={env}" if o == "env=toy" else o for o in overrides]
    return compose_config([*base, *ENVS[env], *RUN, *extra])


def _run(overrides, env: str, run_dir, *extra, resume: bool = False) -> Trainer:
    t = Trainer(_config(overrides, env, *extra, *(["common.resume=true"] if resume else [])), run_dir)
    if env == "crafter":
        assert type(t.collector.env).__name__ == "NativeCrafterVectorEnv"
    return t


def _resume_to_the_end_and_compare(tiny_overrides, env_name: str, run_dir, reference, *extra: str) -> None:
    """Resume the interrupted run to its end; its weights, optimizer state, counts, store and
    episodes.jsonl must be those of the uninterrupted ``reference`` run, bit for bit."""
    t = _run(tiny_overrides, env_name, run_dir, *extra, resume=True)
    t.run()
    t = _run(tiny_overrides, env_name, run_dir, *extra, resume=True)
    try:
        got_store = _store_contents(t)
    finally:
        t.close()
    ref_state, ref_store = reference
    got = _final_state(run_dir)
    _assert_same_tree(got["agent"], ref_state["agent"], "agent")
    _assert_same_tree(got["optim"], ref_state["optim"], "optimizer")
    assert got["state"]["position"] is None and got["state"]["epoch"] == 2
    _assert_same_tree(got["state"]["num_updates"], ref_state["state"]["num_updates"], "num_updates")
    _assert_same_tree(got_store, ref_store, "store")
    assert got["episodes"] == ref_state["episodes"]  # episodes.jsonl: the same lines, none twice


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_overrides, env_name):
    run_dir = tmp_path_factory.mktemp(f"uninterrupted-{env_name}") / "run"
    t = _run(tiny_overrides, env_name, run_dir)
    t.run()
    t = _run(tiny_overrides, env_name, run_dir, resume=True)  # reopen to read the store
    try:
        return _final_state(run_dir), _store_contents(t)
    finally:
        t.close()


def _sigterm_at(monkeypatch, trainer: Trainer, phase: str, call: int) -> None:
    """Send SIGTERM to this process at the ``call``-th loss call of ``phase`` (or env step of collect)."""
    count = [0]

    def hit() -> None:
        count[0] += 1
        if count[0] == call:
            os.kill(os.getpid(), signal.SIGTERM)

    if phase == "collect":
        cls = type(trainer.collector.env)  # patched on the class: the env instance must stay picklable
        real_step = cls.step

        def step(self, actions):
            out = real_step(self, actions)
            hit()
            return out

        monkeypatch.setattr(cls, "step", step)
    else:
        comp = trainer.components[phase]
        real_loss = comp.loss

        def loss(batch, seed):
            out = real_loss(batch, seed)
            hit()
            return out

        monkeypatch.setattr(comp, "loss", loss)


@pytest.mark.parametrize(
    "phase, call",
    [
        ("tokenizer", 1),  # epoch 1, tokenizer step 0 of 2
        ("actor_critic", 3),  # epoch 2, actor-critic step 0 (2 calls in epoch 1)
        ("collect", 40),  # epoch 2's collection, round 8 of 12 (32 random rounds in epoch 1)
    ],
)
def test_sigterm_mid_phase_then_resume_is_bit_identical(
    tiny_overrides, env_name, run_dir, reference, monkeypatch, phase: str, call: int
) -> None:
    t = _run(tiny_overrides, env_name, run_dir)
    _sigterm_at(monkeypatch, t, phase, call)
    with pytest.raises(Preempted, match=rf"stopped by SIGTERM at epoch \d, {phase} step \d+"):
        t.run()
    monkeypatch.undo()
    position = load_torch_file(run_dir / "checkpoints" / "trainer_state.pt", "state")["position"]
    assert position["phase"] == phase and position["step"] > 0  # stopped mid-phase, not at a boundary
    _resume_to_the_end_and_compare(tiny_overrides, env_name, run_dir, reference)


#: every component accumulates 2 micro-batches per optimizer step (4 loss calls per phase of 2 steps)
GRAD_ACC = tuple(f"training.{n}.grad_acc_steps=2" for n in ("tokenizer", "world_model", "actor_critic"))


@pytest.fixture(scope="module")
def reference_grad_acc(tmp_path_factory, tiny_overrides):
    """The uninterrupted toy run with gradient accumulation."""
    run_dir = tmp_path_factory.mktemp("uninterrupted-grad-acc") / "run"
    _run(tiny_overrides, "toy", run_dir, *GRAD_ACC).run()
    t = _run(tiny_overrides, "toy", run_dir, *GRAD_ACC, resume=True)
    try:
        return _final_state(run_dir), _store_contents(t)
    finally:
        t.close()


# (one case, for time: epoch 2, so visit counts, the target EMA and the imagination seeds per micro-batch)
@pytest.mark.parametrize("phase, call", [("actor_critic", 5)])  # the first micro-batch of step 0 of epoch 2
def test_sigterm_mid_step_with_grad_acc_pauses_after_the_whole_step_and_resumes_bit_identical(
    tiny_overrides, run_dir, reference_grad_acc, monkeypatch, phase: str, call: int
) -> None:
    """A signal during an optimizer step's micro-batches: the checkpoint holds that whole step (the
    position is the next step), and the resumed run ends bit for bit as the uninterrupted one."""
    t = _run(tiny_overrides, "toy", run_dir, *GRAD_ACC)
    _sigterm_at(monkeypatch, t, phase, call)
    with pytest.raises(Preempted, match=rf"stopped by SIGTERM at epoch \d, {phase} step 1"):
        t.run()
    monkeypatch.undo()
    state = load_torch_file(run_dir / "checkpoints" / "trainer_state.pt", "state")
    assert state["position"]["phase"] == phase and state["position"]["step"] == 1
    _resume_to_the_end_and_compare(tiny_overrides, "toy", run_dir, reference_grad_acc, *GRAD_ACC)


def test_periodic_mid_epoch_checkpoints_change_nothing(tiny_overrides, env_name, run_dir, reference) -> None:
    t = _run(tiny_overrides, env_name, run_dir, "common.checkpoint_every_steps=5")
    t.run()
    ref_state, _ = reference
    got = _final_state(run_dir)
    _assert_same_tree(got["agent"], ref_state["agent"], "agent")
    _assert_same_tree(got["optim"], ref_state["optim"], "optimizer")
    assert got["episodes"] == ref_state["episodes"]


def test_a_second_signal_while_stopping_changes_nothing() -> None:
    with StopSignals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.received == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised (no KeyboardInterrupt)
        assert stop.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


SCRIPT = """
import os, signal, sys
from deltairis.cli import train as cli
import deltairis.train.trainer as tr
real = tr.Trainer.train_component
def train_component(self, name, epoch, *a, **k):
    if name == "world_model" and epoch == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives during the world model's first step
    return real(self, name, epoch, *a, **k)
tr.Trainer.train_component = train_component
sys.exit(cli.main(sys.argv[1:]))
"""


def test_cli_exits_with_the_preemption_status_and_resume_sh_goes_on(tiny_overrides, run_dir) -> None:
    args = [f"hydra.run.dir={run_dir}", *tiny_overrides, *RUN]
    first = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], check=False, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == PREEMPTED_EXIT_CODE, first.stderr[-2000:]
    assert "stopped by SIGTERM at epoch 1, world_model step 1" in first.stderr
    resumed = subprocess.run(
        ["bash", str(run_dir / "scripts" / "resume.sh")],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = load_torch_file(run_dir / "checkpoints" / "trainer_state.pt", "state")
    assert state["epoch"] == 2 and state["position"] is None
