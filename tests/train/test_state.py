"""The checkpoint's named contents (TrainerState, Position, CheckpointSet) and the resumable-phase helpers
(RunningSums, PhaseProgress, PausePoints): round trips, the keys inside each file, and pausing."""

from __future__ import annotations

import io
import time

import pytest
import torch

from deltairis.config.schema import CommonConfig
from deltairis.errors import NonFiniteError
from deltairis.train.phase import PausePoints, PhaseProgress, RunningSums, check_skip_streak
from deltairis.train.state import STATE_VERSION, CheckpointSet, Position, TrainerState

#: the keys earlier versions wrote to checkpoints/trainer_state.pt (resume reads them back)
STATE_KEYS = {
    "version",
    "epoch",
    "seed",
    "num_updates",
    "skipped_steps",
    "consecutive_skips",
    "rng",
    "collector",
    "dataset_index",
    "position",
}
POSITION_KEYS = {"epoch", "phase", "step", "partial", "metrics", "seconds"}


def _torch_round_trip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _state() -> TrainerState:
    partial = {"sums": {"tokenizer/loss": torch.tensor(1.5)}, "grad_norm_sum": torch.tensor(2.0), "skipped": 1}
    return TrainerState(
        seed=7,
        epoch=3,
        num_updates={"tokenizer": 4, "world_model": 2, "actor_critic": 0},
        skipped_steps={"tokenizer": 1, "world_model": 0, "actor_critic": 0},
        consecutive_skips={"tokenizer": 1, "world_model": 0, "actor_critic": 0},
        position=Position(4, "tokenizer", 2, {**partial, "seconds": 0.5}, {"train/return_mean": 1.0}, 3.25),
        rng={"torch": torch.get_rng_state()},
        collector={"total_steps": 64},
        dataset_index={"train": b"index bytes"},
    )


def test_trainer_state_round_trips_through_its_file_with_the_same_keys() -> None:
    state = _state()
    saved = _torch_round_trip(state.state_dict())
    assert set(saved) == STATE_KEYS and saved["version"] == STATE_VERSION
    assert set(saved["position"]) == POSITION_KEYS and saved["position"]["phase"] == "tokenizer"
    back = TrainerState.from_state_dict(saved)
    assert back.epoch == 3 and back.seed == 7 and back.num_updates == state.num_updates
    assert back.skipped_steps == state.skipped_steps and back.consecutive_skips == state.consecutive_skips
    assert back.collector == {"total_steps": 64} and back.dataset_index == {"train": b"index bytes"}
    assert torch.equal(back.rng["torch"], state.rng["torch"])
    assert back.position is not None and back.position.step == 2 and back.position.seconds == 3.25
    assert back.position.metrics == {"train/return_mean": 1.0}
    assert torch.equal(back.position.partial["sums"]["tokenizer/loss"], torch.tensor(1.5))
    # a second trip changes nothing
    again = TrainerState.from_state_dict(_torch_round_trip(back.state_dict()))
    assert again.state_dict().keys() == back.state_dict().keys() and again.position == back.position


def test_an_older_state_file_without_the_skip_counters_keeps_zeros() -> None:
    old = _state().state_dict()
    del old["skipped_steps"], old["consecutive_skips"], old["position"]
    back = TrainerState.from_state_dict(old)
    assert back.skipped_steps == {"tokenizer": 0, "world_model": 0, "actor_critic": 0}
    assert back.consecutive_skips == back.skipped_steps and back.position is None


def test_take_position_gives_the_saved_position_once_and_only_for_its_epoch() -> None:
    state = _state()
    assert state.take_position(5) is None and state.position is None  # another epoch: dropped
    state = _state()
    position = state.take_position(4)
    assert position is not None and position.phase == "tokenizer" and state.take_position(4) is None


def test_checkpoint_set_members_keep_each_files_keys_and_read_back() -> None:
    state = _state()
    agent = {"format": "delta-iris", "version": 1, "config": {"x": 1}, "state_dict": {"w": torch.ones(2)}}
    optim = {"tokenizer": {"state": {}, "param_groups": []}, "world_model": {"state": {}, "param_groups": []}}
    members = CheckpointSet(state, agent, optim).members()
    assert list(members) == ["last.pt", "optimizer.pt", "trainer_state.pt"]
    assert members["last.pt"]["epoch"] == 3 and members["last.pt"]["config"] == {"x": 1}
    assert set(members["optimizer.pt"]) == {"version", "epoch", "tokenizer", "world_model"}
    assert members["optimizer.pt"]["epoch"] == 3 and set(members["trainer_state.pt"]) == STATE_KEYS
    files = {k: _torch_round_trip(v) for k, v in members.items()}
    back = CheckpointSet.from_members(files["trainer_state.pt"], files["last.pt"], files["optimizer.pt"])
    assert back.epoch == 3 and set(back.optimizers) == {"tokenizer", "world_model"}
    assert torch.equal(back.agent["state_dict"]["w"], torch.ones(2))
    assert back.members().keys() == members.keys()


def test_running_sums_add_and_average_in_float32() -> None:
    sums = RunningSums()
    sums.add({"a": torch.tensor(1.0, dtype=torch.float64), "b": torch.tensor(2.0)})
    sums.add({"a": torch.tensor(3.0, dtype=torch.float64)})
    assert sums.sums["a"].dtype == torch.float32 and len(sums) == 2
    assert sums.means(2, prefix="eval/") == {"eval/a": 2.0, "eval/b": 1.0}
    assert sums.means(0) == {}


def test_phase_progress_resumes_where_its_state_dict_stopped() -> None:
    device = torch.device("cpu")
    straight = PhaseProgress.resume(device)
    split = PhaseProgress.resume(device)
    steps = [(True, 2.0, {"l": 1.0}), (False, float("nan"), {}), (True, 4.0, {"l": 3.0}), (True, 1.0, {"l": 2.0})]
    for applied, norm, m in steps:
        straight.add_step(applied, torch.tensor(norm), {k: torch.tensor(v) for k, v in m.items()})
    for applied, norm, m in steps[:2]:
        split.add_step(applied, torch.tensor(norm), {k: torch.tensor(v) for k, v in m.items()})
    time.sleep(0.01)
    partial = _torch_round_trip(split.state_dict())
    assert set(partial) == {"sums", "grad_norm_sum", "skipped", "seconds"} and partial["seconds"] > 0
    resumed = PhaseProgress.resume(device, 2, partial)
    assert resumed.start_step == 2 and resumed.skipped == 1 and resumed.seconds >= partial["seconds"]
    for applied, norm, m in steps[2:]:
        resumed.add_step(applied, torch.tensor(norm), {k: torch.tensor(v) for k, v in m.items()})
    a, b = straight.metrics("c", 4, 3), resumed.metrics("c", 4, 3)
    for key in ("l", "c/grad_norm", "c/num_updates", "c/skipped_steps"):
        assert a[key] == b[key], key
    assert a["l"] == 2.0 and a["c/grad_norm"] == 7.0 / 3 and a["c/skipped_steps"] == 1.0
    assert "c/steps_per_s" in b


def test_pause_points_follow_the_signal_and_the_periodic_setting() -> None:
    common = CommonConfig(epochs=1, checkpoint_every_steps=3)
    pauses = PausePoints(common)
    assert [pauses.wanted() for _ in range(3)] == [False, False, True]
    pauses.checkpointed()
    assert not pauses.wanted()
    common.do_checkpoint = False  # read at every step
    assert not any(pauses.wanted() for _ in range(5))
    pauses.stop = lambda: True
    assert pauses.wanted() and pauses.stop_requested() and pauses.signal_name == "a signal"
    assert not PausePoints(CommonConfig(epochs=1)).wanted()


def test_skip_streak_stops_at_the_limit_only() -> None:
    check_skip_streak("tokenizer", 2, 3, 1, 5, "none yet")
    check_skip_streak("tokenizer", 50, 0, 1, 5, "none yet")  # 0: never stops
    with pytest.raises(NonFiniteError, match=r"tokenizer: 3 consecutive.*max_consecutive_skips=3.*none yet"):
        check_skip_streak("tokenizer", 3, 3, 1, 5, "none yet")
