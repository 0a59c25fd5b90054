"""``deltairis-store convert``: a store folder, and a run folder that then resumes with the other setting."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from deltairis.checkpoint import load_torch_file
from deltairis.cli.store import main
from deltairis.data import ReplayStore, ReplayStoreError
from deltairis.data.fields import STEP_FIELD_NAMES
from deltairis.data.replay_store import INDEX_NAME
from deltairis.data.store_convert import convert_store, finish_conversion
from deltairis.train.configuration import apply_overrides, load_run_config
from deltairis.train.trainer import Trainer, train

OBS = (3, 8, 8)


def _episodes(directory: Path) -> list[tuple[np.ndarray, ...]]:
    with ReplayStore(directory, backend="numpy", read_only=True, create=False) as s:
        return [tuple(getattr(s.load_episode(i), f) for f in STEP_FIELD_NAMES) for i in range(s.num_episodes)]


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) and all(np.array_equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def test_convert_a_store_folder_both_ways(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    store = tmp_path / "s"
    with ReplayStore(store, backend="numpy", obs_shape=OBS) as s:
        for t in (5, 12, 1):
            s.add_episode(
                rng.integers(0, 4, (t, *OBS), dtype=np.uint8),
                np.arange(t),
                np.ones(t, np.float32),
                np.zeros(t, np.uint8),
                np.zeros(t, np.uint8),
            )
        s.extend_episode(0, *(x[:3] for x in _episodes_from(s, 1)))
        s.sample("tokenizer", 4, 2, seed=0)
        s.commit()
        counts = s.visit_counts("tokenizer")
    before = _episodes(store)
    assert main(["convert", str(store), "--compression", "lz4"]) == 0
    assert "store converted to lz4" in capsys.readouterr().out
    assert (store / "obs.lz4").exists() and not (store / "obs.u8").exists()
    assert not store.with_name("s.old").exists() and not store.with_name("s.converting").exists()
    _same(_episodes(store), before)
    with ReplayStore(store, backend="numpy", compression="lz4") as s:
        assert np.array_equal(s.visit_counts("tokenizer"), counts)
    assert main(["convert", str(store), "--compression", "lz4"]) == 0  # nothing to do
    assert "already stored with compression lz4" in capsys.readouterr().out
    # a conversion stopped between its two renames is completed by the next run of the command
    assert main(["convert", str(store), "--compression", "none"]) == 0
    shutil.copytree(store, store.with_name("s.old"))
    os.replace(store, store.with_name("s.converting"))
    assert main(["convert", str(store), "--compression", "none"]) == 0
    _same(_episodes(store), before)
    assert not store.with_name("s.old").exists()
    # a store open for writing is not converted
    with ReplayStore(store, backend="numpy"):
        assert main(["convert", str(store), "--compression", "lz4"]) == 1
    assert "already open for writing" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nothing"), "--compression", "lz4"]) == 1


def _episodes_from(store: ReplayStore, i: int) -> tuple[np.ndarray, ...]:
    e = store.load_episode(i)
    return tuple(getattr(e, f) for f in STEP_FIELD_NAMES)


def test_a_compressed_run_converted_resumes_uncompressed(tmp_path: Path, tiny_config) -> None:
    run = tmp_path / "run"
    train(tiny_config("common.epochs=1", "data.compression=lz4"), run)  # a whole run with compressed frames
    dataset = run / "checkpoints" / "dataset"
    assert (dataset / "train" / "obs.lz4").exists()
    before = _episodes(dataset / "train")
    assert main(["convert", str(run), "--compression", "none"]) == 0
    assert (dataset / "train" / "obs.u8").exists() and not (dataset / "train" / "obs.lz4").exists()
    _same(_episodes(dataset / "train"), before)
    cfg = load_run_config(run / "config" / "trainer.yaml")
    assert cfg.data.compression == "none"
    state = load_torch_file(run / "checkpoints" / "trainer_state.pt", "state")
    assert state["dataset_index"]["train"] == (dataset / "train" / INDEX_NAME).read_bytes()
    # the run goes on with the converted store; another setting is refused by name
    with pytest.raises(ReplayStoreError, match="written with compression 'none', not 'lz4'"):
        Trainer(apply_overrides(cfg, ["common.resume=true", "data.compression=lz4"]), run)
    trainer = Trainer(apply_overrides(cfg, ["common.resume=true"]), run)  # rolls back, opens the stores
    assert trainer.epoch == 1 and trainer.stores["train"].compression == "none"
    trainer.run()  # at epoch 1 of 1: nothing to do, closes
    _same(_episodes(dataset / "train"), before)


def test_conversion_reports_its_progress_in_steps(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    store = tmp_path / "s"
    lengths = (3, 7, 1, 4)
    with ReplayStore(store, backend="numpy", obs_shape=OBS) as s:
        for t in lengths:
            s.add_episode(
                rng.integers(0, 4, (t, *OBS), dtype=np.uint8), np.arange(t), np.ones(t, np.float32),
                np.zeros(t, np.uint8), np.zeros(t, np.uint8),
            )  # fmt: skip
        s.commit()
    seen: list[tuple[int, int]] = []
    assert convert_store(store, "lz4", lambda done, total: seen.append((done, total)))
    finish_conversion(store)
    # one call per episode, cumulative steps of the episodes rewritten, out of the store's steps
    assert seen == [(int(np.sum(lengths[: i + 1])), sum(lengths)) for i in range(len(lengths))]
    assert not convert_store(store, "lz4", lambda done, total: seen.append((done, total)))  # nothing to do
    assert len(seen) == len(lengths)
    # the command line draws a bar unless told not to; both convert
    assert main(["convert", str(store), "--compression", "none", "--no-progress"]) == 0
    assert main(["convert", str(store), "--compression", "lz4"]) == 0
    assert "store converted to lz4" in capsys.readouterr().out
