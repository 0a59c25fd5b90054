"""The evaluation report (deltairis.cli.report and deltairis-eval's outputs), golden checks on synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from deltairis.cli import eval as eval_cli
from deltairis.cli import report as rp
from deltairis.envs.crafter_python import crafter_achievements


def _png(path: Path, min_side: int = 200, max_side: int = 3000) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        img.convert("RGB").getextrema()  # decodes the pixels
    assert min_side <= w <= max_side and min_side <= h <= max_side, (w, h)
    return w, h


def _episode(**unlocked: int) -> dict[str, int]:
    ep = {name: 0 for name in crafter_achievements()}
    ep.update(unlocked)
    return ep


# -- Crafter ------------------------------------------------------------------------------------------
def test_crafter_report_golden(tmp_path: Path) -> None:
    returns, lengths = [1.0, 2.0, 6.0], [100, 200, 300]
    achievements = [_episode(collect_wood=2, place_table=1), _episode(collect_wood=1), _episode()]
    report = rp.build_report(returns=returns, lengths=lengths, env="crafter", agent="synthetic",
                             achievements=achievements, settings={"episodes": 3, "seed": 0})
    # by hand: mean 3, population std sqrt((4 + 1 + 9) / 3), median 2, mean length 200
    s = report["returns"]
    assert s == {"num_episodes": 3, "mean": 3.0, "std": pytest.approx(math.sqrt(14 / 3), abs=1e-12),
                 "min": 1.0, "median": 2.0, "max": 6.0, "episode_length_mean": 200.0}
    # collect_wood in 2 of 3 episodes, place_table in 1 of 3, the 20 others never
    rates = report["crafter"]["achievements"]
    assert list(rates) == crafter_achievements() and len(rates) == 22
    assert rates["collect_wood"] == pytest.approx(200 / 3) and rates["place_table"] == pytest.approx(100 / 3)
    assert sum(v for k, v in rates.items() if k not in ("collect_wood", "place_table")) == 0.0
    score = math.exp((math.log(1 + 200 / 3) + math.log(1 + 100 / 3)) / 22) - 1  # 20 terms of ln(1) = 0
    assert report["crafter"]["crafter_score"] == pytest.approx(score, abs=1e-12)
    assert report["crafter"]["num_achievements_unlocked"] == 2

    written = rp.write_report(report, tmp_path / "out")
    assert {p.name for p in written} == {"report.json", "report.md", "returns.png", "achievements.png"}
    assert json.loads((tmp_path / "out/report.json").read_text()) == json.loads(json.dumps(report))
    md = (tmp_path / "out/report.md").read_text()
    assert "| 3 | 3.00 | 2.16 | 1.00 | 2.00 | 6.00 | 200.0 |" in md
    assert f"Crafter score: **{score:.2f} %**" in md and f"{score:.2f}" == "0.42"
    assert "| collect_wood | 66.7 |" in md and "| place_table | 33.3 |" in md and "| wake_up | 0.0 |" in md
    assert "2 / 22 achievements" in md
    assert "![Return distribution](returns.png)" in md and "![Achievement success rates](achievements.png)" in md
    assert _png(tmp_path / "out/returns.png") == (600, 400)
    assert _png(tmp_path / "out/achievements.png") == (900, 450)


def test_crafter_report_needs_achievements() -> None:
    with pytest.raises(rp.ReportError, match="achievements"):
        rp.build_report(returns=[1.0], lengths=[5], env="crafter", agent="x")
    with pytest.raises(rp.ReportError, match="no finished episode"):
        rp.build_report(returns=[], lengths=[], env="toy", agent="x")


# -- Atari ------------------------------------------------------------------------------------------------
def test_atari_reference_scores_are_package_data() -> None:
    from importlib.resources import files

    doc = json.loads(files("deltairis.envs").joinpath("atari100k_scores.json").read_text())
    assert "SPR" in doc["source"] and "IRIS" in doc["source"]
    scores = rp.atari_reference_scores()
    assert len(scores) == 26 and set(scores) == set(doc["games"])
    assert scores["Breakout"] == {"random": 1.7, "human": 30.5}
    assert scores["Pong"] == {"random": -20.7, "human": 14.6}
    assert all(v["human"] > v["random"] for v in scores.values())


def test_atari_human_normalized_score_by_hand(tmp_path: Path) -> None:
    assert rp.atari_game("BreakoutNoFrameskip-v4") == "Breakout"
    assert rp.atari_game("ALE/Pong-v5") == "Pong" and rp.atari_game("MsPacmanNoFrameskip-v4") == "MsPacman"
    # Breakout: (16.1 - 1.7) / (30.5 - 1.7) = 14.4 / 28.8 = 0.5; Pong: (0 + 20.7) / (14.6 + 20.7) = 20.7 / 35.3
    assert rp.human_normalized_score(16.1, "BreakoutNoFrameskip-v4") == pytest.approx(0.5, abs=1e-12)
    assert rp.human_normalized_score(0.0, "Pong") == pytest.approx(20.7 / 35.3, abs=1e-12)
    report = rp.build_report(returns=[-21.0, 21.0], lengths=[800, 900], env="atari", env_id="PongNoFrameskip-v4",
                             agent="synthetic")
    assert report["atari"] == {"game": "Pong", "random_score": -20.7, "human_score": 14.6,
                               "human_normalized_score": pytest.approx(20.7 / 35.3, abs=1e-12)}
    rp.write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert f"human-normalized score **{20.7 / 35.3:.3f}**" in md and "0.586" in md
    assert "random -20.7, human 14.6" in md
    assert not (tmp_path / "achievements.png").exists()


def test_unknown_atari_game_is_named(capsys) -> None:
    with pytest.raises(rp.ReportError, match="FooBarNoFrameskip-v4"):
        rp.atari_game("FooBarNoFrameskip-v4")
    assert eval_cli.main(["--env", "atari", "--env-id", "FooBarNoFrameskip-v4", "--random", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "FooBarNoFrameskip-v4" in err and "unknown Atari 100k game" in err


# -- training curves --------------------------------------------------------------------------------------
RECORDS = [
    {"epoch": 1, "collection/total_env_steps": 100.0, "collection/steps_per_s": 50.0, "tokenizer/loss": 0.5,
     "world_model/loss": 2.0, "dataset/train_steps": 100.0},
    {"epoch": 2, "collection/total_env_steps": 200.0, "collection/steps_per_s": 40.0, "tokenizer/loss": 0.4,
     "world_model/loss": 1.5, "actor_critic/loss": -0.1, "train/return_mean": 2.0, "test/return_mean": 1.5,
     "dataset/train_steps": 200.0},
    {"epoch": 3, "tokenizer/loss": 0.25, "world_model/loss": 1.25, "actor_critic/loss": -0.2,
     "test/return_mean": 3.5, "dataset/train_steps": 200.0},  # no collection this epoch
]


def _synthetic_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return run


def test_curves_summary_golden(tmp_path: Path) -> None:
    records = rp.load_metrics(_synthetic_run(tmp_path) / "metrics.jsonl")
    assert records == RECORDS
    assert rp.curve_x(records) == ("collection/total_env_steps", [100.0, 200.0, 200.0])  # carried forward
    s = rp.curves_summary(records)
    assert s["num_epochs"] == 3 and s["x"] == "collection/total_env_steps" and s["x_final"] == 200.0
    assert s["final"] == {
        "train/return_mean": {"value": 2.0, "x": 200.0},
        "test/return_mean": {"value": 3.5, "x": 200.0},
        "tokenizer/loss": {"value": 0.25, "x": 200.0},
        "world_model/loss": {"value": 1.25, "x": 200.0},
        "actor_critic/loss": {"value": -0.2, "x": 200.0},
        "collection/steps_per_s": {"value": 40.0, "x": 200.0},
    }
    assert rp.curve_x([{"epoch": 1, "a": 1.0}, {"epoch": 2}]) == ("epoch", [1.0, 2.0])


def test_eval_curves_only_on_a_run_folder(tmp_path: Path, capsys) -> None:
    run = _synthetic_run(tmp_path)
    assert eval_cli.main([str(run), "--curves", "--episodes", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(rp.curves_summary(RECORDS)))
    report = json.loads((run / "eval/report.json").read_text())
    assert report["curves"] == out and "returns" not in report
    md = (run / "eval/report.md").read_text()
    assert "3 epochs, x axis `collection/total_env_steps` (last: 200)" in md
    assert "| tokenizer/loss | 0.25 | 200 |" in md and "| test/return_mean | 3.5 | 200 |" in md
    assert "![Training curves](training_curves.png)" in md
    w, h = _png(run / "eval/training_curves.png")
    assert h > w  # one panel per group, stacked (returns, losses, speed)


def test_eval_random_with_curves_writes_everything(tmp_path: Path, capsys) -> None:
    run = _synthetic_run(tmp_path)
    out = tmp_path / "rep"
    rc = eval_cli.main(["--run-dir", str(run), "--curves", "--env", "toy", "--random", "--episodes", "4",
                        "--num-envs", "2", "--output", str(out)])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert metrics["num_episodes"] == 4 and report["returns"]["num_episodes"] == 4
    assert report["returns"]["mean"] == pytest.approx(metrics["return_mean"])
    assert len(report["episode_returns"]) == 4 and report["episode_lengths"] == [30] * 4
    assert report["agent"] == "uniformly random policy" and report["env"] == "toy"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "returns.png", "training_curves.png"]


def test_missing_or_bad_metrics_are_reported(tmp_path: Path, capsys) -> None:
    with pytest.raises(rp.ReportError, match="metrics.jsonl"):
        rp.load_metrics(tmp_path / "metrics.jsonl")
    assert eval_cli.main([str(tmp_path), "--curves", "--episodes", "0"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "metrics.jsonl") in err and "no training metrics" in err
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(rp.ReportError, match="line 2"):
        rp.load_metrics(tmp_path / "metrics.jsonl")
    assert eval_cli.main(["--curves", "--episodes", "0"]) == 2
    assert "run folder" in capsys.readouterr().err
    assert eval_cli.main([str(tmp_path), "--run-dir", str(tmp_path / "other"), "--episodes", "0", "--curves"]) == 2
    assert "two run folders" in capsys.readouterr().err
