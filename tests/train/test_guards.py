"""Guards of a run: non-finite steps are skipped and counted, too many stop the run, no checkpoint with
non-finite weights, and one writer per run folder (two processes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from deltairis.errors import NonFiniteError, RunFolderBusyError
from deltairis.train.run_folder import RunFolderLock
from deltairis.train.trainer import Trainer


@pytest.fixture()
def trainer(tiny_config, run_dir):
    t = Trainer(tiny_config("common.epochs=3", "training.max_consecutive_skips=3"), run_dir)
    t.collect(1)
    yield t
    t.close()


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _poison_batches(monkeypatch: pytest.MonkeyPatch, trainer: Trainer, bad_steps: set[int]) -> list[int]:
    """Put a NaN into the frames of the batches drawn at ``bad_steps`` (counting calls to sample)."""
    store = trainer.stores["train"]
    real_sample = store.sample
    calls = [0]

    class Poisoned:
        def __init__(self, batch, bad: bool) -> None:
            self.batch, self.bad = batch, bad

        def to(self, *a, **k):
            b = self.batch.to(*a, **k)
            if self.bad:
                b.obs[0, 0, 0, 0, 0] = float("nan")
            return b

    def sample(*a, **k):
        bad = calls[0] in bad_steps
        calls[0] += 1
        return Poisoned(real_sample(*a, **k), bad)

    monkeypatch.setattr(store, "sample", sample)
    return calls


def test_a_nan_batch_skips_that_step_only(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = trainer.agent.tokenizer
    before = _params(tok)
    buffers = [b.clone() for b in tok.quantizer.buffers()]  # codebook EMA, frequencies, update count
    _poison_batches(monkeypatch, trainer, {0, 1})  # both steps of epoch 1 (2 steps) are poisoned
    m = trainer.train_component("tokenizer", 1)
    assert m["tokenizer/skipped_steps"] == 2.0 and trainer.num_updates["tokenizer"] == 0
    assert "tokenizer/loss" not in m  # no NaN in the metrics
    for a, b in zip(_params(tok), before):
        assert torch.equal(a, b)  # a skipped step changes no weight
    for a, b in zip(tok.quantizer.buffers(), buffers):
        assert torch.equal(a, b)  # nor the codebook statistics its forward updated
    opt_state = trainer.components["tokenizer"].optimizer.state
    assert len(opt_state) == 0  # and leaves the optimizer untouched
    # with one clean batch among them, that one is applied and the weights stay finite (the clean step
    # also ends the streak of skips before it reaches training.max_consecutive_skips=3)
    _poison_batches(monkeypatch, trainer, {1})
    m = trainer.train_component("tokenizer", 2)
    assert m["tokenizer/skipped_steps"] == 1.0 and trainer.num_updates["tokenizer"] == 1
    assert all(torch.isfinite(p).all() for p in tok.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(_params(tok), before))
    assert torch.isfinite(torch.tensor(m["tokenizer/loss"]))


def test_a_skipped_actor_critic_step_leaves_the_target_critic(trainer: Trainer, monkeypatch) -> None:
    """The actor-critic's loss call moves the target network toward the online one (the reference's
    order); a step the guard skips puts it back, so a skipped step changes no weight at all."""
    ac = trainer.agent.actor_critic
    online, target = _params(ac.model), _params(ac.target_model)
    _poison_batches(monkeypatch, trainer, {0, 1})  # both actor-critic steps of epoch 1
    m = trainer.train_component("actor_critic", 1)
    assert m["actor_critic/skipped_steps"] == 2.0 and trainer.num_updates["actor_critic"] == 0
    assert all(torch.equal(a, b) for a, b in zip(_params(ac.model), online))
    assert all(torch.equal(a, b) for a, b in zip(_params(ac.target_model), target))
    # an applied step does move the target (so the check above can fail)
    monkeypatch.undo()  # clean batches again
    m = trainer.train_component("actor_critic", 2)
    assert m["actor_critic/skipped_steps"] == 0.0 and trainer.num_updates["actor_critic"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(_params(ac.target_model), target))


def test_consecutive_non_finite_steps_stop_the_run_naming_component_step_and_checkpoint(
    trainer: Trainer,
) -> None:
    wm = trainer.agent.world_model
    with torch.no_grad():
        next(wm.parameters()).view(-1)[0] = float("nan")  # a NaN weight: every loss is NaN
    with pytest.raises(NonFiniteError) as info:
        for epoch in (2, 3):  # 2 steps per epoch; the third consecutive skip stops
            trainer.train_component("world_model", epoch)
    msg = str(info.value)
    assert "world_model" in msg and "epoch 3 step 0" in msg and "3 consecutive" in msg
    assert "last good checkpoint is none yet" in msg


def test_no_checkpoint_with_non_finite_weights(trainer: Trainer) -> None:
    trainer.epoch = 1
    trainer.save_checkpoint()
    trainer.wait_for_checkpoint()
    good = (trainer.ckpt_dir / "last.pt").read_bytes()
    with torch.no_grad():
        trainer.agent.actor_critic.model.actor_linear.bias[0] = float("inf")
    trainer.epoch = 2
    with pytest.raises(NonFiniteError, match=r"actor_critic\.model\.actor_linear\.bias"):
        trainer.save_checkpoint()
    assert (trainer.ckpt_dir / "last.pt").read_bytes() == good  # the previous set is left as it was


def test_zero_disables_the_stop(tiny_config) -> None:
    from deltairis.errors import ConfigError

    assert tiny_config("training.max_consecutive_skips=0").training.max_consecutive_skips == 0
    with pytest.raises(ConfigError, match="training.max_consecutive_skips must be >= 0"):
        tiny_config("training.max_consecutive_skips=-1")


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from deltairis.train.run_folder import RunFolderLock
    lock = RunFolderLock(Path(sys.argv[1])).acquire()
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    """
)


def test_one_writer_per_run_folder_across_processes(tiny_config, run_dir) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunFolderBusyError, match=rf"in use by another training process \(pid {holder.pid}\)"
        ):
            Trainer(tiny_config(), run_dir)
        assert not (run_dir / "config").exists()  # refused before writing anything
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "deltairis.cli.train",
                f"hydra.run.dir={run_dir}",
                "env=toy",
                "params=tiny",
                "common.device=cpu",
                "wandb.mode=disabled",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cli.returncode == 1 and "in use by another training process" in cli.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    t = Trainer(tiny_config(), run_dir)  # the holder ended: the kernel dropped its lock
    try:
        with pytest.raises(RunFolderBusyError):
            RunFolderLock(run_dir).acquire()  # in-process, a second writer is refused too
    finally:
        t.close()
    RunFolderLock(run_dir).acquire().release()  # closed: free again
