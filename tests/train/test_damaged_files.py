"""Every file of a run folder, damaged: resuming gives an error naming that file, and nothing is
overwritten (the damaged file and every other file of the folder keep their bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import run_folder_snapshot

from deltairis.cli import train as train_cli
from deltairis.errors import DeltaIrisError
from deltairis.train.trainer import Trainer, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("damaged") / "run"
    train(tiny_config("common.epochs=2"), run)
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00not what this file should hold\xff" * 4)


def _newer_version(path: Path) -> None:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["version"] = 99
    torch.save(payload, path)


DAMAGES = [
    ("checkpoints/last.pt", _truncate, "last.pt"),
    ("checkpoints/optimizer.pt", _truncate, "optimizer.pt"),
    ("checkpoints/trainer_state.pt", _truncate, "trainer_state.pt"),
    ("checkpoints/last.pt", _newer_version, r"last\.pt has format version 99, newer"),
    ("checkpoints/optimizer.pt", _newer_version, r"optimizer\.pt has format version 99, newer"),
    ("checkpoints/trainer_state.pt", _newer_version, r"trainer_state\.pt has format version 99, newer"),
    ("checkpoints/.journal.json", _garbage, r"journal .*\.journal\.json is unreadable"),
    ("checkpoints/dataset/test/index.npz", _garbage, r"corrupt replay index .*test/index\.npz"),
    ("checkpoints/dataset/train/obs.u8", _truncate, r"dataset/train"),
    ("checkpoints/dataset/train/act.i64", _truncate, r"dataset/train"),
]


@pytest.mark.parametrize("rel, damage, message", DAMAGES, ids=[f"{r}-{d.__name__}" for r, d, _ in DAMAGES])
def test_damaged_file_is_named_and_nothing_is_overwritten(
    finished_run, tmp_path, tiny_config, rel: str, damage, message: str
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    path = run / rel
    if not path.exists():  # the journal only exists mid-write: make one that points at the members
        path.write_text("{}")
    damage(path)
    before = run_folder_snapshot(run)
    with pytest.raises(DeltaIrisError, match=message):
        Trainer(tiny_config("common.epochs=3", "common.resume=true"), run)
    assert run_folder_snapshot(run) == before


def test_a_damaged_train_index_is_restored_from_the_checkpoints_copy(
    finished_run, tmp_path, tiny_config
) -> None:
    """The checkpoint set holds a copy of the train store's committed index: resuming writes it back."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    index = run / "checkpoints" / "dataset" / "train" / "index.npz"
    good = index.read_bytes()
    _garbage(index)
    t = Trainer(tiny_config("common.epochs=3", "common.resume=true"), run)
    try:
        assert index.read_bytes() == good and t.stores["train"].num_episodes > 0
    finally:
        t.close()


def test_damaged_config_is_named_by_the_cli(finished_run, tmp_path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config" / "trainer.yaml").write_text("common: [unclosed\n")
    before = run_folder_snapshot(run)
    code = train_cli.main([f"hydra.run.dir={run}", "common.resume=true"])
    assert code == 2 and "trainer.yaml" in capsys.readouterr().err
    assert run_folder_snapshot(run) == before


def test_damaged_metrics_line_is_named_but_a_torn_last_line_is_dropped(
    finished_run, tmp_path, tiny_config
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["epoch"] in (1, 2) for x in lines)
    metrics.write_text("{oops\n" + "\n".join(lines) + "\n")
    before = run_folder_snapshot(run)
    with pytest.raises(DeltaIrisError, match=r"metrics\.jsonl line 1 is damaged"):
        Trainer(tiny_config("common.epochs=3", "common.resume=true"), run)
    assert run_folder_snapshot(run) == before
    metrics.write_text("\n".join(lines) + '\n{"epoch": 3, "torn')  # a crash mid-write of the last line
    t = Trainer(tiny_config("common.epochs=3", "common.resume=true"), run)
    t.close()
    assert metrics.read_text().splitlines() == lines
    assert np.all([json.loads(x)["epoch"] <= 2 for x in metrics.read_text().splitlines()])
