"""The checkpoint set written on a background thread (common.checkpoint_in_background, the default):
the same bytes as the inline write, the state of the save call (not what training changes afterwards),
errors raised by the next save or close, never lost, and no write left in flight after close."""

from __future__ import annotations

import errno
import threading

import pytest
import torch

import deltairis.checkpoint as ck
from deltairis.errors import CheckpointWriteError
from deltairis.train.trainer import Trainer

MEMBERS = ("last.pt", "optimizer.pt", "trainer_state.pt")
TIMEOUT_S = 60.0  # only to fail instead of hanging if a write never starts


@pytest.fixture()
def trainer(tiny_config, run_dir):
    t = Trainer(tiny_config("common.epochs=2"), run_dir)
    t.run_epoch(1)
    t.wait_for_checkpoint()
    yield t
    t.close()


def _files(directory) -> dict[str, bytes]:
    return {n: (directory / n).read_bytes() for n in MEMBERS}


def _blocking_writes(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make a write of the set wait for ``release`` before it does anything (its first call is the
    recovery of an unfinished set); ``started`` is set when it begins."""
    started, release = threading.Event(), threading.Event()
    real = ck.recover_checkpoint_set

    def recover(directory):
        started.set()
        assert release.wait(TIMEOUT_S), "the test never released the write"
        return real(directory)

    monkeypatch.setattr(ck, "recover_checkpoint_set", recover)
    return started, release


def test_background_and_inline_writes_give_the_same_bytes(trainer) -> None:
    trainer.cfg.common.checkpoint_in_background = False
    trainer.save_checkpoint()
    inline = _files(trainer.ckpt_dir)
    trainer.cfg.common.checkpoint_in_background = True
    trainer.save_checkpoint()
    trainer.wait_for_checkpoint()
    assert _files(trainer.ckpt_dir) == inline
    loaded = torch.load(trainer.ckpt_dir / "last.pt", weights_only=False)["state_dict"]
    for name, value in trainer.agent.state_dict().items():
        assert torch.equal(loaded[name], value.cpu()), name


def test_the_loop_goes_on_while_the_files_are_written(trainer, monkeypatch) -> None:
    """save_checkpoint returns before the files are written; changes after it do not reach them."""
    trainer.cfg.common.checkpoint_in_background = False
    trainer.save_checkpoint()
    expected = _files(trainer.ckpt_dir)  # what a write at this state holds
    trainer.cfg.common.checkpoint_in_background = True
    started, release = _blocking_writes(monkeypatch)
    trainer.save_checkpoint()  # returns while the writer waits
    assert started.wait(TIMEOUT_S)
    assert trainer._checkpoint_writer.busy
    with torch.no_grad():  # "training" goes on: weights, buffers and optimizer states change in place
        for t in trainer.agent.state_dict().values():
            if t.is_floating_point():
                t.add_(1.0)
        for optimizer in trainer.optimizers.values():
            for state in optimizer.state.values():
                for v in state.values():
                    if torch.is_tensor(v) and v.is_floating_point():
                        v.add_(1.0)
    trainer.num_updates["tokenizer"] += 1
    trainer.collector.recent += 1
    release.set()
    trainer.wait_for_checkpoint()
    assert not trainer._checkpoint_writer.busy
    assert _files(trainer.ckpt_dir) == expected
    assert not list(trainer.ckpt_dir.glob("*.next")) and not (trainer.ckpt_dir / ck.JOURNAL_NAME).exists()


def _fail_writes(monkeypatch) -> None:
    def write(path, data):
        raise OSError(errno.ENOSPC, "injected failure", str(path))

    monkeypatch.setattr(ck, "_write_synced", write)


def test_a_failed_background_write_is_raised_by_the_next_save(trainer, monkeypatch) -> None:
    before = _files(trainer.ckpt_dir)
    _fail_writes(monkeypatch)
    trainer.save_checkpoint()  # the error is not raised here ...
    with pytest.raises(CheckpointWriteError, match="the disk is full.*previous checkpoint set is intact"):
        trainer.save_checkpoint()  # ... but by the next save, before it writes anything
    monkeypatch.undo()
    assert _files(trainer.ckpt_dir) == before
    trainer.wait_for_checkpoint()  # raised once, not again
    trainer.save_checkpoint()
    trainer.wait_for_checkpoint()
    assert not list(trainer.ckpt_dir.glob("*.next"))


def test_a_failed_background_write_is_raised_by_close_which_still_lets_go(
    tiny_config, run_dir, monkeypatch
) -> None:
    t = Trainer(tiny_config("common.epochs=2"), run_dir)
    t.run_epoch(1)
    t.wait_for_checkpoint()
    before = _files(t.ckpt_dir)
    _fail_writes(monkeypatch)
    t.epoch = 2
    t.save_checkpoint()
    with pytest.raises(CheckpointWriteError, match="previous checkpoint set is intact"):
        t.close()
    monkeypatch.undo()
    assert _files(t.ckpt_dir) == before
    resumed = Trainer(tiny_config("common.epochs=2", "common.resume=true"), run_dir)  # the lock was released
    try:
        assert resumed.epoch == 1
    finally:
        resumed.close()


def test_close_waits_for_the_write_in_flight(trainer, monkeypatch) -> None:
    started, release = _blocking_writes(monkeypatch)
    trainer.epoch = 2
    trainer.save_checkpoint()
    assert started.wait(TIMEOUT_S)
    closer = threading.Thread(target=trainer.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close() is waiting for the write
    release.set()
    closer.join(TIMEOUT_S)
    assert not closer.is_alive()
    assert torch.load(trainer.ckpt_dir / "last.pt", weights_only=False)["epoch"] == 2


def test_run_leaves_no_write_in_flight(tiny_config, run_dir) -> None:
    t = Trainer(tiny_config("common.epochs=1"), run_dir)
    t.run()
    assert not t._checkpoint_writer.busy
    assert torch.load(run_dir / "checkpoints" / "trainer_state.pt", weights_only=False)["epoch"] == 1
    assert not list((run_dir / "checkpoints").glob("*.next"))


def test_background_writer_runs_one_write_at_a_time_and_keeps_errors() -> None:
    w = ck.BackgroundWriter()
    order: list[str] = []
    gate = threading.Event()

    def first() -> None:
        assert gate.wait(TIMEOUT_S)
        order.append("first")

    w.submit(first)
    assert w.busy
    gate.set()
    w.submit(lambda: order.append("second"))  # waits for the first
    w.wait()
    assert order == ["first", "second"] and not w.busy

    def fail() -> None:
        raise CheckpointWriteError("boom")

    w.submit(fail)
    with pytest.raises(CheckpointWriteError, match="boom"):
        w.submit(lambda: order.append("never"))
    assert order == ["first", "second"]
    w.wait()  # the error was raised once
    assert w._thread is None


def test_non_finite_names_matches_isfinite_on_random_tensors() -> None:
    """The min/max check names exactly the tensors that ``torch.isfinite(t).all()`` rejects."""
    g = torch.Generator().manual_seed(0)
    specials = [float("nan"), float("inf"), float("-inf")]
    for trial in range(200):
        tensors: dict[str, torch.Tensor] = {}
        for i in range(int(torch.randint(1, 8, (1,), generator=g))):
            shape = tuple(
                int(d)
                for d in torch.randint(0, 6, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g)
            )
            dtype = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64][i % 5]
            if dtype.is_floating_point:
                t = (torch.randn(shape, generator=g, dtype=torch.float64) * 10 ** (trial % 7)).to(dtype)
                if t.numel() and torch.rand((), generator=g) < 0.4:
                    t.view(-1)[int(torch.randint(t.numel(), (1,), generator=g))] = specials[trial % 3]
            else:
                t = torch.randint(-5, 5, shape, generator=g, dtype=dtype)
            tensors[f"t{i}"] = t
        want = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        assert ck.non_finite_names(tensors) == want, tensors
    big = {"x": torch.tensor([1e300, -1e300], dtype=torch.float64)}  # finite, beyond float32's range
    assert ck.non_finite_names(big) == [] and ck.non_finite_names({}) == []
