"""episodes.jsonl: one record per finished train/test episode, global env steps as the collector counts
them, fsynced appends, and a resumed run cut back to what its checkpoint covers (no duplicate line).

The SIGTERM-and-resume tests of test_preemption.py also compare a resumed run's episodes.jsonl with the
uninterrupted run's, line for line (toy and Crafter, collect / tokenizer / actor-critic interruptions).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deltairis.data import ReplayStore
from deltairis.errors import ResumeError
from deltairis.train.collector import Collector, CollectStats
from deltairis.train.configuration import compose_config
from deltairis.train.env_config import make_env
from deltairis.train.episode_log import (
    EPISODES_FILE,
    EpisodeLog,
    covered_by_checkpoint,
    episode_records,
    read_episodes,
)
from deltairis.train.state import Position


def _stats(returns: list[float], lengths: list[int], achievements=None, steps=None) -> CollectStats:
    s = CollectStats(episode_returns=returns, episode_lengths=lengths, achievements=achievements or [])
    s.episode_env_steps = list(steps or [])
    return s


def test_records_hold_split_steps_epoch_return_length_and_the_unlocked_achievements() -> None:
    ach = [{"collect_wood": 2, "place_table": 0}, {"collect_wood": 0, "eat_cow": 1, "wake_up": 1}]
    recs = episode_records(_stats([1.5, -2.0], [10, 7], ach), "train", 3, [120, 140])
    assert recs == [
        {"split": "train", "epoch": 3, "env_steps": 120, "return": 1.5, "length": 10, "achievements": ["collect_wood"]},
        {"split": "train", "epoch": 3, "env_steps": 140, "return": -2.0, "length": 7,
         "achievements": ["eat_cow", "wake_up"]},
    ]  # fmt: skip
    test = episode_records(_stats([4.0], [9]), "test", 5, 999)  # one count for all test episodes
    assert test == [{"split": "test", "epoch": 5, "env_steps": 999, "return": 4.0, "length": 9}]
    with pytest.raises(ValueError, match="split"):
        episode_records(_stats([1.0], [1]), "valid", 1, 1)
    with pytest.raises(ValueError, match="env-step counts"):
        episode_records(_stats([1.0, 2.0], [1, 1]), "train", 1, [5])
    with pytest.raises(ValueError, match="achievement records"):
        episode_records(_stats([1.0, 2.0], [1, 1], [{"wake_up": 1}]), "train", 1, [5, 6])


def _rec(split: str, epoch: int, steps: int = 0) -> dict:
    return {"split": split, "epoch": epoch, "env_steps": steps, "return": 0.0, "length": 1}


def test_checkpoint_coverage_rules() -> None:
    end_of_2 = (2, None)
    assert covered_by_checkpoint(_rec("train", 2), *end_of_2)
    assert covered_by_checkpoint(_rec("test", 2), *end_of_2)
    assert not covered_by_checkpoint(_rec("train", 3), *end_of_2)
    in_collect = (2, Position(3, "collect", 5))  # the collection of epoch 3 is redone
    assert not covered_by_checkpoint(_rec("train", 3), *in_collect)
    in_training = (2, Position(3, "world_model", 1))  # epoch 3's collection is done, its evaluation is not
    assert covered_by_checkpoint(_rec("train", 3), *in_training)
    assert not covered_by_checkpoint(_rec("test", 3), *in_training)
    in_eval = (2, Position(3, "evaluate", 0))  # an evaluation is replayed from its start
    assert covered_by_checkpoint(_rec("train", 3), *in_eval)
    assert not covered_by_checkpoint(_rec("test", 3), *in_eval)
    assert not covered_by_checkpoint(_rec("train", 4), *in_training)


def test_truncate_keeps_what_the_checkpoint_covers_and_a_fresh_run_starts_empty(tmp_path: Path) -> None:
    log = EpisodeLog(tmp_path)
    log.append([_rec("train", 1, 10), _rec("test", 1, 10), _rec("train", 2, 20), _rec("test", 2, 20)])
    log.append([_rec("train", 3, 30)])
    assert log.truncate_to(2, Position(3, "collect", 4)) == 1  # a crash before epoch 3's checkpoint
    assert [(r["split"], r["epoch"]) for r in read_episodes(log.path)] == [
        ("train", 1), ("test", 1), ("train", 2), ("test", 2)
    ]  # fmt: skip
    assert log.truncate_to(2, None) == 0
    assert (
        EpisodeLog.opened(tmp_path, 1, None, main=False).path.read_text() == log.path.read_text()
    )  # rank > 0
    EpisodeLog.opened(tmp_path, 0, None, main=True)
    assert read_episodes(log.path) == []


def test_a_torn_last_line_is_dropped_and_a_damaged_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / EPISODES_FILE
    path.write_text(json.dumps(_rec("train", 1)) + "\n" + '{"split": "tr')
    assert len(read_episodes(path)) == 1
    path.write_text('{"split": "train", "epoch": "x"}\n' + json.dumps(_rec("train", 1)) + "\n")
    with pytest.raises(ResumeError, match="line 1 is damaged"):
        read_episodes(path)
    with pytest.raises(ResumeError, match="line 1"):
        EpisodeLog(tmp_path).truncate_to(1, None)
    assert path.read_text().startswith('{"split": "train", "epoch": "x"}')  # left untouched


def test_collector_counts_global_env_steps_at_each_episode_end(tmp_path: Path) -> None:
    # toy episodes last 30 steps and the 3 envs reset together: episodes end at rounds 30, 60, 90
    env_cfg = compose_config(["env=toy", "params=tiny"]).env
    n = 3
    col = Collector(make_env(env_cfg, "train", n, seed=1), ReplayStore(tmp_path / "s", backend="numpy"), 0, 1)
    cpu = torch.device("cpu")
    first = col.collect(45 * n, None, cpu, epsilon=0.0, temperature=1.0, seed=0)
    assert first.episode_env_steps == [30 * n] * n
    second = col.collect(60 * n, None, cpu, epsilon=0.0, temperature=1.0, seed=1)
    assert second.episode_env_steps == [60 * n] * n + [90 * n] * n
    assert len(second.episode_env_steps) == len(second.episode_returns)
    col.env.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config) -> Path:
    from deltairis.train.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("episodes") / "run"
    cfg = tiny_config(
        "common.epochs=1",
        "training.should=false",
        "env.test.max_episode_steps=8",
        "env.train.max_episode_steps=8",
    )
    Trainer(cfg, run_dir).run()  # collect and evaluate (short episodes: several end in each collection)
    return run_dir


def test_a_run_writes_every_train_and_test_episode(tiny_run: Path) -> None:
    records = read_episodes(tiny_run / EPISODES_FILE)
    metrics = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1]
    for m in metrics:
        epoch = m["epoch"]
        train = [r for r in records if r["split"] == "train" and r["epoch"] == epoch]
        test = [r for r in records if r["split"] == "test" and r["epoch"] == epoch]
        assert len(train) == m["train/num_episodes"] and len(test) == m["test/num_episodes"] == 2
        if train:  # a short collection may finish no episode
            assert np.isclose(np.mean([r["return"] for r in train]), m["train/return_mean"])
        assert np.isclose(np.mean([r["return"] for r in test]), m["test/return_mean"])
        total = int(m["collection/total_env_steps"])
        steps = [r["env_steps"] for r in train]
        assert steps == sorted(steps) and all(0 < s <= total and s % 2 == 0 for s in steps)  # 2 envs
        assert all(r["env_steps"] == total for r in test)  # played after the epoch's collection
    assert any(r["split"] == "train" for r in records)
    assert not any("achievements" in r for r in records)  # toy env


def test_resuming_a_finished_run_keeps_its_episodes(tiny_run: Path, tiny_config) -> None:
    from deltairis.train.trainer import Trainer

    before = (tiny_run / EPISODES_FILE).read_text()
    Trainer(tiny_config("common.epochs=1", "common.resume=true"), tiny_run).run()  # nothing to do
    assert (tiny_run / EPISODES_FILE).read_text() == before


def test_a_damaged_episodes_file_refuses_the_resume_before_anything_changes(
    tiny_run: Path, tiny_config
) -> None:
    from deltairis.train.trainer import Trainer

    path, metrics = tiny_run / EPISODES_FILE, tiny_run / "metrics.jsonl"
    good, metrics_before = path.read_text(), metrics.read_text()
    damaged = '{"split": "train", "epoch": "one"}\n' + good
    path.write_text(damaged)
    try:
        with pytest.raises(ResumeError, match=r"episodes.jsonl line 1 is damaged"):
            Trainer(tiny_config("common.epochs=2", "common.resume=true"), tiny_run)
        assert path.read_text() == damaged and metrics.read_text() == metrics_before
    finally:
        path.write_text(good)
