"""Atomic checkpoint files and the journaled checkpoint set (crash at every point of the protocol)."""

from __future__ import annotations

import json

import pytest
import torch

from deltairis import checkpoint as ck


def _members(epoch: int) -> dict[str, dict]:
    return {name: {"epoch": epoch, "x": torch.full((3,), float(epoch))} for name in ("a.pt", "b.pt", "c.pt")}


def _epochs(directory) -> set[int]:
    return {int(torch.load(directory / n, weights_only=False)["epoch"]) for n in ("a.pt", "b.pt", "c.pt")}


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    p = tmp_path / "sub" / "f.bin"
    ck.atomic_write_bytes(p, b"one")
    ck.atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]


def test_checkpoint_set_round_trip(tmp_path) -> None:
    ck.write_checkpoint_set(tmp_path, _members(1), epoch=1)
    ck.write_checkpoint_set(tmp_path, _members(2), epoch=2)
    assert _epochs(tmp_path) == {2}
    assert not list(tmp_path.glob("*.next")) and not (tmp_path / ck.JOURNAL_NAME).exists()


@pytest.mark.parametrize("renamed", [0, 1, 2, 3])
def test_crash_after_journal_rolls_forward(tmp_path, renamed: int) -> None:
    ck.write_checkpoint_set(tmp_path, _members(1), epoch=1)
    names = sorted(_members(2))
    for n in names:  # phase 1 of epoch 2 completed ...
        (tmp_path / f"{n}{ck.NEXT_SUFFIX}").write_bytes(ck.torch_bytes(_members(2)[n]))
    (tmp_path / ck.JOURNAL_NAME).write_text(json.dumps({"epoch": 2, "members": names}))
    for n in names[:renamed]:  # ... and the crash hit in the middle of phase 2
        (tmp_path / f"{n}{ck.NEXT_SUFFIX}").replace(tmp_path / n)
    ck.recover_checkpoint_set(tmp_path)
    assert _epochs(tmp_path) == {2}
    assert not (tmp_path / ck.JOURNAL_NAME).exists()


@pytest.mark.parametrize("written", [1, 2, 3])
def test_crash_before_journal_keeps_the_old_set(tmp_path, written: int) -> None:
    ck.write_checkpoint_set(tmp_path, _members(1), epoch=1)
    for n in sorted(_members(2))[:written]:
        (tmp_path / f"{n}{ck.NEXT_SUFFIX}").write_bytes(ck.torch_bytes(_members(2)[n])[: 10 * written])
    ck.recover_checkpoint_set(tmp_path)
    assert _epochs(tmp_path) == {1}
    assert not list(tmp_path.glob(f"*{ck.NEXT_SUFFIX}"))


def test_corrupt_file_is_reported_and_left_untouched(tmp_path) -> None:
    p = tmp_path / "last.pt"
    ck.atomic_torch_save({"x": torch.arange(1000)}, p)
    data = p.read_bytes()[:100]
    p.write_bytes(data)
    with pytest.raises(ck.CorruptCheckpointError, match="last.pt.*corrupt"):
        ck.load_torch_file(p, "agent checkpoint")
    assert p.read_bytes() == data
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ck.load_torch_file(tmp_path / "missing.pt", "x")


def test_unreadable_journal_is_an_error(tmp_path) -> None:
    (tmp_path / ck.JOURNAL_NAME).write_text("{not json")
    with pytest.raises(ck.CorruptCheckpointError, match="journal"):
        ck.recover_checkpoint_set(tmp_path)
