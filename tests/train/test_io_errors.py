"""Disk full and I/O errors during a run: a clear error naming the path and the free space, and the
previous checkpoint set and the committed store stay intact and resumable."""

from __future__ import annotations

import errno
import resource
import subprocess
import sys

import pytest

import deltairis.checkpoint as ck
from deltairis.data import ReplayStore
from deltairis.errors import CheckpointWriteError, ReplayStoreError
from deltairis.train.trainer import Trainer


@pytest.fixture()
def trained(tiny_config, run_dir):
    """A run folder with the checkpoint of epoch 1 and a trainer that is about to checkpoint epoch 2."""
    t = Trainer(tiny_config("common.epochs=2"), run_dir)
    t.run_epoch(1)
    t.wait_for_checkpoint()  # epoch 1's set is on disk
    t.epoch = 2
    yield t
    t.close()


def _fail_at(monkeypatch, k: int, err: int = errno.ENOSPC) -> list[int]:
    calls = [0]
    real = ck._write_synced

    def write(path, data):
        calls[0] += 1
        if calls[0] == k:
            raise OSError(err, "injected failure", str(path))
        return real(path, data)

    monkeypatch.setattr(ck, "_write_synced", write)
    return calls


@pytest.mark.parametrize("background", [True, False])  # the error comes out of the next wait, or at once
@pytest.mark.parametrize("k", [1, 2, 3, 4])  # last.pt, optimizer.pt, trainer_state.pt, then the journal
def test_a_failed_write_of_the_checkpoint_set_keeps_the_previous_set(
    trained, monkeypatch, k: int, background: bool
) -> None:
    trained.cfg.common.checkpoint_in_background = background
    d = trained.ckpt_dir
    before = {n: (d / n).read_bytes() for n in ("last.pt", "optimizer.pt", "trainer_state.pt")}
    _fail_at(monkeypatch, k)
    with pytest.raises(CheckpointWriteError) as info:
        trained.save_checkpoint()
        trained.wait_for_checkpoint()
    msg = str(info.value)
    assert "the disk is full" in msg and "MiB free" in msg and "previous checkpoint set is intact" in msg
    assert str(d) in msg
    monkeypatch.undo()
    assert {n: (d / n).read_bytes() for n in before} == before
    assert not list(d.glob("*.next")) and not (d / ck.JOURNAL_NAME).exists()


def test_a_failure_after_the_commit_is_completed_on_resume(
    trained, tiny_config, run_dir, monkeypatch
) -> None:
    real_replace = ck.os.replace
    calls = [0]

    def replace(src, dst):
        if str(src).endswith(".next"):
            calls[0] += 1
            if calls[0] == 2:
                raise OSError(errno.EIO, "injected failure")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(CheckpointWriteError, match="committed and resuming completes it"):
        trained.save_checkpoint()
        trained.wait_for_checkpoint()
    monkeypatch.undo()
    trained.close()
    resumed = Trainer(tiny_config("common.epochs=2", "common.resume=true"), run_dir)
    try:
        assert resumed.epoch == 2  # the journal's set was completed
    finally:
        resumed.close()


def test_a_failed_store_write_names_the_store_and_the_free_space(trained, monkeypatch) -> None:
    store = trained.stores["train"]
    n = store.num_episodes
    import deltairis.data.episode_store as store_module

    def pwrite(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "pwrite", pwrite)
    ep = store.load_episode(0)
    with pytest.raises(ReplayStoreError, match=r"the disk is full .*MiB free.*committed state is intact"):
        store.add_episode(ep.obs, ep.act, ep.rew, ep.end, ep.trunc)
    monkeypatch.undo()
    assert store.num_episodes == n


def test_a_file_size_limit_stops_the_run_with_a_clear_message(tiny_overrides, run_dir) -> None:
    """A real limit (RLIMIT_FSIZE, 3 MiB): the store fits, the 4 MiB agent checkpoint does not."""
    limit = 3 * 2**20

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deltairis.cli.train",
            f"hydra.run.dir={run_dir}",
            *tiny_overrides,
            "common.epochs=1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "cannot write" in proc.stderr and "file size limit" in proc.stderr and "MiB free" in proc.stderr
    assert not list((run_dir / "checkpoints").glob("*.next"))
    with ReplayStore(run_dir / "checkpoints" / "dataset" / "train", backend="numpy") as store:
        assert store.num_episodes > 0  # the committed store opens with the epoch's episodes
