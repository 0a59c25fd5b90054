"""The evaluation report of ``deltairis-eval``: JSON, a Markdown summary and PNG plots.

Everything here is a pure function of its inputs (episode returns, lengths and Crafter achievements,
the records of a run's ``metrics.jsonl``), so the report can be checked on synthetic data::

    report = build_report(returns=[1.0, 3.0], lengths=[30, 30], env="toy", agent="random policy")
    write_report(report, Path("eval-report"))      # report.json, report.md, returns.png

Crafter: the Crafter score ``exp(mean_i ln(1 + s_i)) - 1`` over the 22 success rates ``s_i`` (percent)
and a bar chart of the rates. Atari: the human-normalized score ``(score - random) / (human - random)``
with the reference scores of the 26 Atari 100k games shipped in ``deltairis/envs/atari100k_scores.json``.
Training curves (``--curves``): returns, losses and speeds of ``metrics.jsonl`` against env steps.

Plots use matplotlib's ``Figure`` API on the Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from deltairis.errors import ReportError

os.environ.setdefault("MPLBACKEND", "Agg")

SCORES_FILE = "atari100k_scores.json"

#: Curve panels: title -> the ``metrics.jsonl`` keys drawn in it (those present in the run).
CURVE_PANELS: dict[str, tuple[str, ...]] = {
    "Returns": ("train/return_mean", "test/return_mean"),
    "Crafter score (%)": ("train/crafter_score", "test/crafter_score"),
    "Losses": ("tokenizer/loss", "world_model/loss", "actor_critic/loss"),
    "Steps per second": ("collection/steps_per_s", "test/steps_per_s"),
}
#: Candidates for the x axis of the curves, in order of preference.
CURVE_X_KEYS = ("collection/total_env_steps", "dataset/train_steps")


# -- Atari reference scores -----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def atari_reference_scores() -> dict[str, dict[str, float]]:
    """``{game: {"random": r, "human": h}}`` for the 26 Atari 100k games (source: in the data file)."""
    from importlib.resources import files

    doc = json.loads(files("deltairis.envs").joinpath(SCORES_FILE).read_text())
    return {g: {"random": float(v["random"]), "human": float(v["human"])} for g, v in doc["games"].items()}


def atari_game(env_id: str) -> str:
    """The Atari 100k game of an env id: ``BreakoutNoFrameskip-v4``, ``ALE/Breakout-v5`` -> ``Breakout``.

    Raises:
        ReportError: naming ``env_id`` when it is not one of the 26 games.
    """
    name = env_id.split("/")[-1]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    games = atari_reference_scores()
    by_lower = {g.lower(): g for g in games}
    if name.lower() not in by_lower:
        raise ReportError(
            f"unknown Atari 100k game {env_id!r}: no random/human reference score; the 26 games are "
            + ", ".join(sorted(games))
        )
    return by_lower[name.lower()]


def human_normalized_score(score: float, game: str) -> float:
    """``(score - random) / (human - random)`` with the Atari 100k reference scores of ``game``."""
    ref = atari_reference_scores()[atari_game(game)]
    return (float(score) - ref["random"]) / (ref["human"] - ref["random"])


# -- episode statistics ---------------------------------------------------------------------------------
def return_stats(returns: Sequence[float], lengths: Sequence[int]) -> dict[str, float]:
    """Count, mean, std (population), min, median, max of the returns and the mean episode length."""
    if len(returns) == 0:
        raise ReportError("no finished episode to report on")
    if len(lengths) != len(returns):
        raise ReportError(f"{len(returns)} returns but {len(lengths)} episode lengths")
    r = np.asarray(returns, dtype=np.float64)
    return {
        "num_episodes": int(r.size),
        "mean": float(r.mean()),
        "std": float(r.std()),
        "min": float(r.min()),
        "median": float(np.median(r)),
        "max": float(r.max()),
        "episode_length_mean": float(np.mean(np.asarray(lengths, dtype=np.float64))),
    }


def crafter_section(achievements: Iterable[Mapping[str, int]]) -> dict[str, Any]:
    """Success rates (percent, crafter's order), the Crafter score and the number of unlocked achievements."""
    from deltairis.envs.crafter_metrics import achievement_success_rates, crafter_score

    rates = achievement_success_rates(achievements)
    return {
        "crafter_score": crafter_score(rates),
        "num_achievements_unlocked": int(sum(v > 0 for v in rates.values())),
        "achievements": rates,
    }


def atari_section(env_id: str, mean_return: float) -> dict[str, Any]:
    game = atari_game(env_id)
    ref = atari_reference_scores()[game]
    return {
        "game": game,
        "random_score": ref["random"],
        "human_score": ref["human"],
        "human_normalized_score": (float(mean_return) - ref["random"]) / (ref["human"] - ref["random"]),
    }


# -- training curves ------------------------------------------------------------------------------------
def load_metrics(path: Path) -> list[dict[str, float]]:
    """The records of a run's ``metrics.jsonl`` (one JSON object per epoch), in file order.

    Raises:
        ReportError: the file is missing, holds no record, or a line is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no training metrics at {path}: --curves needs the metrics.jsonl of a run folder")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise ReportError(f"{path}, line {n}: not JSON ({exc})") from exc
        if not isinstance(rec, dict):
            raise ReportError(f"{path}, line {n}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    if not records:
        raise ReportError(f"{path} holds no record")
    return records


def curve_x(records: Sequence[Mapping[str, float]]) -> tuple[str, list[float]]:
    """The x axis of the curves: env steps (``collection/total_env_steps``, carried forward through epochs
    without collection), else ``dataset/train_steps``, else the epoch."""
    for key in CURVE_X_KEYS:
        if any(key in r for r in records):
            xs, last = [], 0.0
            for r in records:
                last = float(r.get(key, last))
                xs.append(last)
            return key, xs
    return "epoch", [float(r.get("epoch", i + 1)) for i, r in enumerate(records)]


def curves_summary(records: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Epochs, the x axis and, for every key drawn, its last logged value and the x it was logged at."""
    x_key, xs = curve_x(records)
    final: dict[str, dict[str, float]] = {}
    for keys in CURVE_PANELS.values():
        for key in keys:
            for x, r in zip(reversed(xs), reversed(records)):
                if key in r:
                    final[key] = {"value": float(r[key]), "x": x}
                    break
    return {"num_epochs": len(records), "x": x_key, "x_final": xs[-1], "final": final}


# -- the report -----------------------------------------------------------------------------------------
def build_report(
    *,
    returns: Sequence[float] | None,
    lengths: Sequence[int] | None,
    env: str,
    agent: str,
    env_id: str | None = None,
    achievements: Sequence[Mapping[str, int]] | None = None,
    settings: Mapping[str, Any] | None = None,
    records: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict.

    Args:
        returns, lengths: one per evaluation episode (``None``: no evaluation, e.g. curves only).
        env: ``crafter`` | ``atari`` | ``toy``; ``env_id`` is the Atari game id.
        agent: a description of the policy (checkpoint path and preset, or "uniformly random policy").
        achievements: Crafter only, one mapping achievement -> count per episode.
        settings: evaluation settings to record (episodes, seed, temperature, ...).
        records: the ``metrics.jsonl`` records, for the training-curves section.
    """
    report: dict[str, Any] = {"env": env, "agent": agent}
    if env_id is not None:
        report["env_id"] = env_id
    report["settings"] = dict(settings or {})
    if returns is not None:
        report["returns"] = return_stats(returns, lengths if lengths is not None else [])
        report["episode_returns"] = [float(x) for x in returns]
        report["episode_lengths"] = [int(x) for x in (lengths or [])]
        if env == "crafter":
            if not achievements:
                raise ReportError("a Crafter report needs the achievements of every episode")
            report["crafter"] = crafter_section(achievements)
        elif env == "atari":
            if env_id is None:
                raise ReportError("an Atari report needs the game id")
            report["atari"] = atari_section(env_id, report["returns"]["mean"])
    if records is not None:
        report["curves"] = curves_summary(records)
    if "returns" not in report and "curves" not in report:
        raise ReportError("nothing to report: no evaluation episodes and no training curves")
    return report


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def render_markdown(report: Mapping[str, Any], images: Mapping[str, str] | None = None) -> str:
    """A readable summary of :func:`build_report`'s dict; ``images`` maps plot names to file names."""
    images = dict(images or {})
    lines = ["# Evaluation report", ""]
    env = report["env"] + (f" ({report['env_id']})" if report.get("env_id") else "")
    lines += [f"- Agent: {report['agent']}", f"- Environment: {env}, test settings"]
    settings = report.get("settings") or {}
    if settings:
        lines.append("- Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    lines.append("")
    if "returns" in report:
        s = report["returns"]
        lines += [
            "## Returns",
            "",
            "| episodes | mean | std | min | median | max | mean length |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            (
                f"| {s['num_episodes']} | {_f(s['mean'])} | {_f(s['std'])} | {_f(s['min'])} | {_f(s['median'])} "
                f"| {_f(s['max'])} | {_f(s['episode_length_mean'], 1)} |"
            ),
            "",
        ]
        if "returns" in images:
            lines += [f"![Return distribution]({images['returns']})", ""]
    if "crafter" in report:
        c = report["crafter"]
        lines += [
            "## Crafter",
            "",
            (
                f"Crafter score: **{_f(c['crafter_score'])} %** (exp(mean ln(1 + s_i)) - 1 over the 22 success "
                f"rates s_i in percent); {c['num_achievements_unlocked']} / 22 achievements unlocked at least once."
            ),
            "",
            "| achievement | success rate (%) |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {_f(rate, 1)} |" for name, rate in c["achievements"].items()]
        lines.append("")
        if "achievements" in images:
            lines += [f"![Achievement success rates]({images['achievements']})", ""]
    if "atari" in report:
        a = report["atari"]
        lines += [
            "## Atari",
            "",
            (
                f"{a['game']}: mean return {_f(report['returns']['mean'])}; reference scores random "
                f"{_f(a['random_score'], 1)}, human {_f(a['human_score'], 1)}; human-normalized score "
                f"**{_f(a['human_normalized_score'], 3)}** ((score - random) / (human - random))."
            ),
            "",
        ]
    if "curves" in report:
        c = report["curves"]
        lines += [
            "## Training curves",
            "",
            f"{c['num_epochs']} epochs, x axis `{c['x']}` (last: {c['x_final']:.0f}).",
            "",
            "| metric | last value | at |",
            "|---|---:|---:|",
        ]
        lines += [f"| {k} | {v['value']:.4g} | {v['x']:.0f} |" for k, v in c["final"].items()]
        lines.append("")
        if "curves" in images:
            lines += [f"![Training curves]({images['curves']})", ""]
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_returns(returns: Sequence[float], path: Path) -> Path:
    """Histogram of the episode returns, with the mean marked."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    r = np.asarray(returns, dtype=np.float64)
    bins = min(30, max(5, int(math.sqrt(r.size)) + 1))
    ax.hist(r, bins=bins, color="tab:blue", edgecolor="white")
    ax.axvline(r.mean(), color="tab:red", linestyle="--", label=f"mean {r.mean():.2f}")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(f"Return distribution ({r.size} episodes)")
    ax.legend()
    fig.savefig(path)
    return path


def plot_achievements(rates: Mapping[str, float], path: Path) -> Path:
    """Bar chart of the 22 Crafter achievement success rates (percent)."""
    fig = _figure(9, 4.5)
    ax = fig.add_subplot()
    names = list(rates)
    values = [rates[n] for n in names]
    ax.bar(range(len(names)), values, color="tab:green")
    ax.set_xticks(
        range(len(names)), [n.replace("_", " ") for n in names], rotation=60, ha="right", fontsize=8
    )
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Crafter achievement success rates")
    fig.savefig(path)
    return path


def plot_curves(records: Sequence[Mapping[str, float]], path: Path) -> Path:
    """One panel per group of :data:`CURVE_PANELS` present in the records, against env steps."""
    x_key, xs = curve_x(records)
    panels = {t: [k for k in keys if any(k in r for r in records)] for t, keys in CURVE_PANELS.items()}
    panels = {t: keys for t, keys in panels.items() if keys}
    if not panels:
        raise ReportError(
            "metrics.jsonl has none of the curve keys " + ", ".join(sum(CURVE_PANELS.values(), ()))
        )
    fig = _figure(6, 2.6 * len(panels))
    for i, (title, keys) in enumerate(panels.items()):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        for key in keys:
            pts = [(x, float(r[key])) for x, r in zip(xs, records) if key in r]
            ax.plot(
                [p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None, label=key
            )
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def write_report(
    report: Mapping[str, Any], out_dir: Path, records: Sequence[Mapping[str, float]] | None = None
) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the plots to ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    written: list[Path] = []
    if "episode_returns" in report:
        written.append(plot_returns(report["episode_returns"], out_dir / "returns.png"))
        images["returns"] = "returns.png"
    if "crafter" in report:
        written.append(plot_achievements(report["crafter"]["achievements"], out_dir / "achievements.png"))
        images["achievements"] = "achievements.png"
    if "curves" in report and records is not None:
        written.append(plot_curves(records, out_dir / "training_curves.png"))
        images["curves"] = "training_curves.png"
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report, images))
    return [out_dir / "report.json", out_dir / "report.md", *written]


__all__ = [
    "CURVE_PANELS",
    "ReportError",
    "atari_game",
    "atari_reference_scores",
    "atari_section",
    "build_report",
    "crafter_section",
    "curves_summary",
    "human_normalized_score",
    "load_metrics",
    "plot_achievements",
    "plot_curves",
    "plot_returns",
    "render_markdown",
    "return_stats",
    "write_report",
]
