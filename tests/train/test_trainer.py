"""End-to-end runs of the tiny preset with tiny step counts: run folder, resume, refusals, rollback."""

from __future__ import annotations

import json
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from deltairis.agent import load_agent
from deltairis.checkpoint import CorruptCheckpointError
from deltairis.data import ReplayStore
from deltairis.train.configuration import apply_overrides, load_run_config
from deltairis.train.step import bf16_autocast
from deltairis.train.trainer import ResumeError, Trainer, new_run_dir, train


def _resume(run: Path, *overrides: str) -> Trainer:
    cfg = load_run_config(run / "config" / "trainer.yaml")
    return Trainer(apply_overrides(cfg, [*overrides, "common.resume=true"]), run)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("runs") / "one"
    train(tiny_config("common.epochs=1"), run)
    return run


def test_run_folder_layout(one_epoch_run: Path) -> None:
    run = one_epoch_run
    for rel in ("checkpoints/last.pt", "checkpoints/optimizer.pt", "checkpoints/trainer_state.pt",
                "checkpoints/dataset/train/index.npz", "checkpoints/dataset/test/index.npz",
                "config/trainer.yaml", "scripts/resume.sh", "scripts/play.sh", "metrics.jsonl",
                "media/reconstructions/epoch_00001.png"):
        assert (run / rel).is_file(), rel
    assert list((run / "media/episodes/train").glob("*.npz")) and list((run / "media/episodes/test").glob("*.npz"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for script, entry in (("resume.sh", "deltairis-train"), ("play.sh", "deltairis-play")):
        path = run / "scripts" / script
        assert path.stat().st_mode & stat.S_IXUSR
        text = path.read_text()
        assert entry in text and "src/" not in text and "python " not in text
    assert "common.resume=true" in (run / "scripts/resume.sh").read_text()
    assert not list((run / "checkpoints").glob("*.next")) and not (run / "checkpoints/.journal.json").exists()


def test_checkpoint_and_metrics_content(one_epoch_run: Path) -> None:
    run = one_epoch_run
    agent = load_agent(run / "checkpoints/last.pt")
    assert agent.config.preset == "tiny" and agent.config.num_actions == 5
    saved = torch.load(run / "checkpoints/last.pt", weights_only=False)
    for k, v in agent.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    r = records[0]
    for key in ("tokenizer/loss", "tokenizer/codebook_entropy_bits", "world_model/latents_accuracy",
                "actor_critic/loss", "train/return_mean", "test/return_mean", "collection/steps_per_s",
                "tokenizer/steps_per_s", "world_model/steps_per_s", "actor_critic/steps_per_s",
                "eval/tokenizer/loss", "eval/world_model/loss", "epoch_seconds"):
        assert key in r and np.isfinite(r[key]), key
    assert r["collection/total_env_steps"] == 64 and r["tokenizer/num_updates"] == 2
    cfg = OmegaConf.load(run / "config/trainer.yaml")
    assert cfg.common.seed == 7 and cfg.common.resume is False
    store = ReplayStore(run / "checkpoints/dataset/train", read_only=True)
    assert store.num_steps == 64
    store.close()


def test_fresh_run_refuses_an_existing_run_folder(one_epoch_run: Path, tiny_config) -> None:
    before = (one_epoch_run / "checkpoints/last.pt").read_bytes()
    with pytest.raises(ResumeError, match="already holds a training run"):
        Trainer(tiny_config("common.epochs=1"), one_epoch_run)
    assert (one_epoch_run / "checkpoints/last.pt").read_bytes() == before


def _snapshot(run: Path) -> dict:
    agent = torch.load(run / "checkpoints/last.pt", weights_only=False)
    optim = torch.load(run / "checkpoints/optimizer.pt", weights_only=False)
    state = torch.load(run / "checkpoints/trainer_state.pt", weights_only=False)
    store = ReplayStore(run / "checkpoints/dataset/train", read_only=True)
    counts = {c: store.visit_counts(c) for c in ("tokenizer", "world_model", "actor_critic")}
    data = (store.num_steps, store.lengths.copy(), store.load_episode(store.num_episodes - 1).obs.copy())
    store.close()
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {"agent": agent, "optim": optim, "state": state, "counts": counts, "data": data, "metrics": metrics}


def _assert_same(a: dict, b: dict) -> None:
    assert a["agent"]["epoch"] == b["agent"]["epoch"]
    for k, v in a["agent"]["state_dict"].items():
        assert torch.equal(v, b["agent"]["state_dict"][k]), k
    for name in ("tokenizer", "world_model", "actor_critic"):
        sa, sb = a["optim"][name]["state"], b["optim"][name]["state"]
        assert sa.keys() == sb.keys()
        for p in sa:
            for k in sa[p]:
                assert torch.equal(sa[p][k], sb[p][k]), (name, p, k)
        assert np.array_equal(a["counts"][name], b["counts"][name]), name
    assert a["state"]["num_updates"] == b["state"]["num_updates"]
    assert a["data"][0] == b["data"][0] and np.array_equal(a["data"][1], b["data"][1])
    assert np.array_equal(a["data"][2], b["data"][2])
    assert torch.equal(a["state"]["rng"]["torch"], b["state"]["rng"]["torch"])
    assert np.array_equal(a["state"]["collector"]["obs"], b["state"]["collector"]["obs"])
    ma = [{k: v for k, v in r.items() if "per_s" not in k and "seconds" not in k} for r in a["metrics"]]
    mb = [{k: v for k, v in r.items() if "per_s" not in k and "seconds" not in k} for r in b["metrics"]]
    assert ma == mb


def test_kill_and_resume_gives_identical_state(tmp_path, tiny_config) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config("common.epochs=3"), straight)
    train(tiny_config("common.epochs=1"), split)
    _resume(split, "common.epochs=2").run()
    # the crash: epoch 3 collected and committed its data, then died before the checkpoint
    t = _resume(split, "common.epochs=3")
    t.collect(3)
    t.stores["train"].commit()
    t.close()
    ahead = ReplayStore(split / "checkpoints/dataset/train", read_only=True)
    assert ahead.num_steps > _snapshot(straight)["state"]["collector"]["total_steps"] - 16
    ahead.close()
    _resume(split, "common.epochs=3").run()  # rolls the store back to epoch 2, redoes epoch 3
    _assert_same(_snapshot(straight), _snapshot(split))


def test_resume_refuses_a_model_shape_change(tmp_path, tiny_config) -> None:
    run = tmp_path / "r"
    train(tiny_config("common.epochs=1"), run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.pt")}
    with pytest.raises(ResumeError, match=r"shape.*actor_critic\.lstm_dim"):
        _resume(run, "+agent.overrides.actor_critic.lstm_dim=64")
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.pt")} == before


@pytest.mark.parametrize("name", ["last.pt", "optimizer.pt", "trainer_state.pt"])
def test_corrupt_checkpoint_is_reported_not_overwritten(tmp_path, name: str, tiny_config) -> None:
    run = tmp_path / "r"
    train(tiny_config("common.epochs=1"), run)
    path = run / "checkpoints" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptCheckpointError, match=name):
        _resume(run, "common.epochs=2")
    assert path.read_bytes() == data[: len(data) // 3]


def test_resume_without_a_checkpoint_is_refused(tmp_path, tiny_config) -> None:
    with pytest.raises(ResumeError, match="nothing to resume"):
        Trainer(tiny_config("common.resume=true"), tmp_path / "empty")


def test_new_run_dir_follows_the_reference_layout(tmp_path) -> None:
    d = new_run_dir(tmp_path / "outputs")
    day, clock = d.parent.name, d.name
    assert d.parent.parent == tmp_path / "outputs"
    assert len(day.split("-")) == 3 and len(clock.split("-")) == 3
    d.mkdir(parents=True)
    assert new_run_dir(tmp_path / "outputs") != d


def test_bf16_autocast_only_on_cuda(one_epoch_run: Path) -> None:
    cfg = load_run_config(one_epoch_run / "config" / "trainer.yaml")
    assert cfg.training.tokenizer.mixed_precision
    assert not isinstance(bf16_autocast(torch.device("cpu"), True), torch.autocast)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constructing a CUDA autocast without CUDA warns
        ctx = bf16_autocast(torch.device("cuda"), True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(bf16_autocast(torch.device("cuda"), False), torch.autocast)
