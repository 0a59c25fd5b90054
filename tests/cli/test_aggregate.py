"""deltairis-eval --aggregate: the shipped published results through the CLI against hand-computed human-
normalized scores, the Crafter official protocol on synthetic runs with known achievements, and every
run, game or folder that is not averaged normally named in the notes. (The end-to-end tiny multirun is
in test_sweep.py, on the sweep that test already trains.)"""

from __future__ import annotations

import json
import math
import statistics
from importlib.resources import files
from pathlib import Path

import pytest

from deltairis.cli import eval as eval_cli
from deltairis.cli.aggregate import BASELINES, Settings, aggregate, load_baseline

GAMES = 26


def _reference_scores() -> dict[str, dict[str, float]]:
    doc = json.loads(files("deltairis.envs").joinpath("atari100k_scores.json").read_text())
    return doc["games"]


def _hand_hns(scores: dict[str, list[float]]) -> tuple[float, float]:
    """Mean and median over games of the human-normalized mean score, in plain Python."""
    ref = _reference_scores()
    per_game = [
        (statistics.fmean(v) - ref[g]["random"]) / (ref[g]["human"] - ref[g]["random"])
        for g, v in scores.items()
    ]
    return statistics.fmean(per_game), statistics.median(per_game)


def test_shipped_baselines_hold_26_games_with_their_source() -> None:
    for name, file in BASELINES.items():
        doc = load_baseline(name)
        assert file.endswith(".json") and set(doc["scores"]) == set(_reference_scores()), name
        assert all(len(v) == 5 for v in doc["scores"].values()), name
        src = doc["source"]
        assert src["repository"].startswith("https://github.com/") and src["url"].startswith(
            src["repository"]
        )
        assert len(src["commit"]) == 40 and src["commit"] in src["url"] and src["commit_date"][:2] == "20"


def test_delta_iris_results_through_the_cli_match_hand_computed_hns(tmp_path: Path, capsys) -> None:
    shipped = files("deltairis.envs").joinpath("baselines", "delta_iris.json")
    scores = json.loads(shipped.read_text())["scores"]
    plain = tmp_path / "atari.json"  # the reference's layout: game -> list of per-seed scores
    plain.write_text(json.dumps(scores))
    out = tmp_path / "report"
    argv = ["--aggregate", str(plain), "--output", str(out), "--reps", "2000", "--seed", "3"]
    assert eval_cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    agg = json.loads((out / "aggregate.json").read_text())
    mean, median = _hand_hns(scores)
    assert agg["hns"]["mean"]["value"] == pytest.approx(mean, rel=1e-12)
    assert agg["hns"]["median"]["value"] == pytest.approx(median, rel=1e-12)
    assert mean == pytest.approx(1.3833, abs=1e-4) and median == pytest.approx(0.5936, abs=1e-4)
    assert printed["hns"] == agg["hns"]
    for stat in ("mean", "median", "iqm", "optimality_gap"):
        lo, hi = agg["hns"][stat]["ci"]
        assert lo <= agg["hns"][stat]["value"] <= hi
    assert len(agg["atari"]["games"]) == GAMES and agg["notes"] == []
    # the published IRIS aggregates (IRIS paper: mean 1.046, median 0.289, IQM 0.501, optimality gap 0.512)
    iris = agg["atari"]["baselines"]["iris"]["hns"]
    got = [iris[k]["value"] for k in ("mean", "median", "iqm", "optimality_gap")]
    assert got == pytest.approx([1.046, 0.289, 0.501, 0.512], abs=6e-4)
    for name in ("aggregate.md", "atari_profile.png", "atari_aggregates.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "aggregate.md").read_text()
    assert (
        "| IRIS (published) |" in md
        and "| DIAMOND (published) |" in md
        and "github.com/eloialonso/iris" in md
    )
    assert eval_cli.main([*argv, "--reps", "100"]) == 2  # fewer resamples than the statistics need
    assert "2000" in capsys.readouterr().err


def test_a_game_with_fewer_runs_and_an_unknown_game_are_named(tmp_path: Path) -> None:
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"Pong": [1.0, 2.0, 3.0], "BreakoutNoFrameskip-v4": [10.0]}))
    agg = aggregate([scores], Settings(reps=2000, baselines=()))
    assert any(n.startswith("Breakout: 1 runs where other games have up to 3: used") for n in agg["notes"])
    assert any("2 of the 26" in n for n in agg["notes"])
    ref = _reference_scores()
    pong = (2.0 - ref["Pong"]["random"]) / (ref["Pong"]["human"] - ref["Pong"]["random"])
    brk = (10.0 - ref["Breakout"]["random"]) / (ref["Breakout"]["human"] - ref["Breakout"]["random"])
    assert agg["hns"]["mean"]["value"] == pytest.approx((pong + brk) / 2)
    skipped = aggregate([scores], Settings(reps=2000, baselines=(), min_seeds=2))
    assert list(skipped["atari"]["games"]) == ["Pong"]
    assert any("Breakout: 1 runs, fewer than --min-seeds 2: skipped" in n for n in skipped["notes"])
    scores.write_text(json.dumps({"Tetris": [1.0], "Pong": [0.0, 1.0]}))
    agg = aggregate([scores], Settings(reps=2000, baselines=()))
    assert list(agg["atari"]["games"]) == ["Pong"]
    assert f"{scores}: 'Tetris' is not an Atari 100k game (no random/human score): skipped" in agg["notes"]


# -- Crafter ------------------------------------------------------------------------------------------------
def _crafter_run(
    folder: Path, seed: int, episodes: list[tuple[str, int, list[str]]], epochs_done: int = 2
) -> Path:
    """A run folder with a saved Crafter config (2 epochs), metrics.jsonl and the given episodes."""
    from deltairis.train.configuration import compose_config, save_config

    save_config(
        compose_config(["env=crafter", f"common.seed={seed}", "common.epochs=2"]),
        folder / "config" / "trainer.yaml",
    )
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e + 1}) + "\n" for e in range(epochs_done))
    )
    lines = [
        {"split": split, "epoch": 1, "env_steps": steps, "return": 1.0, "length": 10, "achievements": names}
        for split, steps, names in episodes
    ]
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def _score(rates: dict[str, float]) -> float:
    """The Crafter score of the 22 rates (zeros for those not given), by hand."""
    values = list(rates.values()) + [0.0] * (22 - len(rates))
    return math.exp(sum(math.log(1.0 + s) for s in values) / 22) - 1.0


def test_crafter_official_score_over_episodes_within_the_budget(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _crafter_run(sweep / "0", 0, [
        ("train", 100, ["collect_wood", "place_table"]), ("train", 200, ["collect_wood"]), ("train", 300, []),
        ("train", 1000, ["wake_up"]),
        ("train", 1001, ["collect_diamond"]),  # after the budget: not counted
        ("test", 1000, ["collect_wood"]), ("test", 1000, []),
    ])  # fmt: skip
    _crafter_run(sweep / "1", 1, [("train", 500, ["collect_wood"]), ("train", 900, []), ("test", 1000, [])])
    _crafter_run(
        sweep / "2", 2, [("train", 60, ["collect_diamond"]), ("train", 100, [])], epochs_done=1
    )  # still training
    (sweep / "notes").mkdir()  # a folder that is not a run
    agg = aggregate([sweep], Settings(reps=2000, budget=1000, baselines=()))
    c = agg["crafter"]
    a = _score({"collect_wood": 50.0, "place_table": 25.0, "wake_up": 25.0})
    b = _score({"collect_wood": 50.0})
    assert c["score"]["value"] == pytest.approx((a + b) / 2, rel=1e-12)
    assert c["score"]["ci"][0] == pytest.approx(min(a, b)) and c["score"]["ci"][1] == pytest.approx(max(a, b))
    rates = c["success_rates"]
    assert rates["collect_wood"] == 50.0 and rates["place_table"] == 12.5 and rates["wake_up"] == 12.5
    assert rates["collect_diamond"] == 0.0 and len(rates) == 22
    assert c["test"]["score"]["value"] == pytest.approx(_score({"collect_wood": 50.0}) / 2)
    assert c["curve"]["runs"][str(sweep / "0")][-1] == pytest.approx(a)
    notes = "\n".join(agg["notes"])
    assert f"{sweep / '2'}: still training or stopped early (epoch 1 of 2): skipped" in notes
    assert f"{sweep / 'notes'}: not a run folder (no config/trainer.yaml): skipped" in notes
    used = aggregate([sweep], Settings(reps=2000, budget=1000, baselines=(), include_unfinished=True))
    assert len(used["crafter"]["runs"]) == 3 and "used (--include-unfinished)" in "\n".join(used["notes"])
    past = aggregate([sweep], Settings(reps=2000, budget=99, baselines=()))  # run 2 went past this budget
    assert (
        f"{sweep / '2'}: still training or stopped early (epoch 1 of 2), past the budget of 99 env steps: used"
        in (past["notes"])
    )
    assert past["crafter"]["success_rates"]["collect_diamond"] == 100.0  # run 2 alone: 1 episode by step 99
    (sweep / "1" / "episodes.jsonl").write_text('{"split": 1}\n{}\n')  # damaged
    damaged = aggregate([sweep], Settings(reps=2000, budget=1000, baselines=()))
    assert any(n.startswith(f"{sweep / '1'}: cannot be read (") and "line 1" in n for n in damaged["notes"])
    assert "Crafter: a single run: its score has no interval over runs" in damaged["notes"]
    assert damaged["crafter"]["score"] == {"value": pytest.approx(a), "ci": None}
    from deltairis.cli.aggregate_report import write_aggregate

    written = write_aggregate(agg, tmp_path / "out")
    assert {p.name for p in written} >= {
        "crafter_success_rates.png",
        "crafter_score_curve.png",
        "aggregate.md",
    }
    assert "Crafter score (train episodes)" in (tmp_path / "out" / "aggregate.md").read_text()


def test_nothing_to_aggregate_is_an_error_naming_what_was_skipped(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert eval_cli.main(["--aggregate", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    assert "holds no run folder" in capsys.readouterr().err
    assert eval_cli.main(["--aggregate", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert eval_cli.main(["--aggregate", str(tmp_path), "--baselines", "muzero"]) == 2
    assert "unknown baselines" in capsys.readouterr().err


# -- Atari run folders -----------------------------------------------------------------------------------
def _atari_run(
    folder: Path, seed: int, episodes: list[tuple[str, int, int, float]], metrics: list[dict]
) -> None:
    from deltairis.train.configuration import compose_config, save_config

    cfg = compose_config(
        ["env=atari", "params=atari", "env.train.id=PongNoFrameskip-v4", f"common.seed={seed}"]
    )
    save_config(cfg, folder / "config" / "trainer.yaml")
    metrics = metrics or [{"epoch": 600}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    lines = [
        {"split": split, "epoch": epoch, "env_steps": steps, "return": ret, "length": 10}
        for split, epoch, steps, ret in episodes
    ]
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_atari_run_folders_final_score_rules(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _atari_run(sweep / "0", 0, [
        ("train", 575, 95_000, -21.0), ("train", 600, 99_000, -19.0), ("train", 600, 100_000, -17.0),
        ("test", 575, 95_000, -20.0), ("test", 600, 100_000, -10.0), ("test", 600, 100_000, -12.0),
    ], [])  # fmt: skip
    _atari_run(
        sweep / "1",
        1,
        [("train", 600, 100_000, -15.0)],
        [{"epoch": 575, "test/return_mean": -3.0}, {"epoch": 600}],
    )
    _atari_run(sweep / "2", 2, [], [])  # no evaluation at all
    agg = aggregate([sweep], Settings(reps=2000, baselines=("delta-iris",)))
    pong = agg["atari"]["games"]["Pong"]
    assert pong["scores"] == [-11.0, -3.0]  # the last evaluation's test episodes; metrics.jsonl as fallback
    assert pong["runs"][1]["rule"] == "metrics.jsonl test/return_mean of epoch 575"
    assert f"{sweep / '2'}: no evaluation" in "\n".join(agg["notes"])
    ref = _reference_scores()["Pong"]
    assert agg["hns"]["mean"]["value"] == pytest.approx(
        (-7.0 - ref["random"]) / (ref["human"] - ref["random"])
    )
    delta = agg["atari"]["baselines"]["delta-iris"]
    assert list(delta["games"]) == ["Pong"] and delta["games"]["Pong"] == pytest.approx(15.0)  # 21 20 15 10 9
    from deltairis.train.run_folder import RunFolderLock

    lock = RunFolderLock(sweep / "0").acquire()  # a training process in run 0 (e.g. resumed for more epochs)
    try:
        busy = aggregate([sweep], Settings(reps=2000, baselines=()))
    finally:
        lock.release()
    assert f"{sweep / '0'}: in use by a training process (epoch 600 of 600): skipped" in busy["notes"]
    assert busy["atari"]["games"]["Pong"]["scores"] == [-3.0]
    tail = aggregate([sweep], Settings(reps=2000, baselines=(), final_score="train-tail", tail_steps=1500))
    assert tail["atari"]["games"]["Pong"]["scores"] == [-18.0, -15.0]  # episodes ending after 98,500 steps
