"""The files of ``deltairis-eval --aggregate``: ``aggregate.json``, ``aggregate.md`` and PNG plots, from the
dict of :func:`deltairis.cli.aggregate.aggregate`.

Plots (matplotlib ``Figure`` API on the Agg canvas, as :mod:`deltairis.cli.report`):

- ``atari_profile.png``: the performance profiles (fraction of runs above each human-normalized score),
  ours and the baselines', with their bootstrap bands;
- ``atari_aggregates.png``: mean, median, IQM and optimality gap with their intervals, one row per method;
- ``crafter_success_rates.png``: the success rate of each achievement (train and test episodes);
- ``crafter_score_curve.png``: the Crafter score against env steps, one curve per run and their mean with
  a bootstrap band over runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deltairis.cli.aggregate_stats import AGGREGATES, mean_with_ci

os.environ.setdefault("MPLBACKEND", "Agg")

TITLES = {"mean": "Mean", "median": "Median", "iqm": "IQM", "optimality_gap": "Optimality gap"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _ci(entry: Mapping[str, Any] | None, fmt: str = "{:.3f}") -> str:
    if not entry:
        return "-"
    ci = entry.get("ci")
    value = fmt.format(entry["value"])
    return value if ci is None else f"{value} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _methods(agg: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Method label -> its ``hns`` statistics: ours first, then the baselines."""
    atari = agg["atari"]
    out = {agg["settings"]["label"]: atari["hns"]}
    for b in atari["baselines"].values():
        out[b["label"]] = b["hns"]
    return out


# -- plots ------------------------------------------------------------------------------------------------
def plot_profiles(profiles: Mapping[str, Mapping[str, list[float]]], path: Path) -> Path:
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    for label, prof in profiles.items():
        (line,) = ax.plot(prof["tau"], prof["value"], label=label)
        ax.fill_between(prof["tau"], prof["lo"], prof["hi"], color=line.get_color(), alpha=0.2)
    ax.set_xlabel(r"human-normalized score $\tau$")
    ax.set_ylabel(r"fraction of runs with score $> \tau$")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Performance profiles (Atari 100k)")
    fig.savefig(path)
    return path


def plot_intervals(methods: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    fig = _figure(12, 0.6 * len(methods) + 1.4)
    axes = fig.subplots(1, len(AGGREGATES), sharey=True)
    labels = list(methods)
    for ax, stat in zip(axes, AGGREGATES):
        for k, label in enumerate(labels):
            e = methods[label][stat]
            lo, hi = e["ci"]
            ax.barh(k, hi - lo, left=lo, height=0.6, alpha=0.6, color=f"C{k}")
            ax.plot([e["value"], e["value"]], [k - 0.3, k + 0.3], color="black")
        ax.set_title(TITLES[stat])
        ax.set_xlabel("human-normalized score")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels)
    fig.savefig(path)
    return path


def plot_crafter_rates(crafter: Mapping[str, Any], path: Path) -> Path:
    fig = _figure(10, 4.5)
    ax = fig.add_subplot()
    names = list(crafter["success_rates"])
    x = np.arange(len(names))
    splits = [("train", crafter["success_rates"])]
    if crafter.get("test"):
        splits.append(("test", crafter["test"]["success_rates"]))
    width = 0.8 / len(splits)
    for k, (label, rates) in enumerate(splits):
        ax.bar(x + (k - (len(splits) - 1) / 2) * width, [rates[n] for n in names], width, label=label)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(0, 100)
    ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"Crafter success rates within {crafter['budget']} env steps (mean over runs)")
    ax.legend()
    fig.savefig(path)
    return path


def plot_crafter_curve(curve: Mapping[str, Any], path: Path, seed: int = 0) -> Path:
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    xs = np.asarray(curve["env_steps"], dtype=np.float64)
    for k, ys in enumerate(curve["runs"].values()):
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        label = "each run" if k == 0 else None
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="gray", alpha=0.6, linewidth=0.8, label=label)
    mean, lo, hi, at = [], [], [], []
    for k, x in enumerate(xs):
        vals = [ys[k] for ys in curve["runs"].values() if ys[k] is not None]
        if not vals:
            continue
        est = mean_with_ci(vals, reps=1000, seed=seed)
        at.append(x)
        mean.append(est["value"])
        lo.append(est["ci"][0] if est["ci"] else est["value"])
        hi.append(est["ci"][1] if est["ci"] else est["value"])
    ax.plot(at, mean, color="C0", label=f"mean of {len(curve['runs'])} runs")
    ax.fill_between(at, lo, hi, color="C0", alpha=0.25, label="95% bootstrap interval")
    ax.set_xlabel("env steps")
    ax.set_ylabel("Crafter score (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Crafter score over training episodes up to each budget")
    fig.savefig(path)
    return path


# -- markdown ---------------------------------------------------------------------------------------------
def render_markdown(agg: Mapping[str, Any], images: Mapping[str, str]) -> str:
    s = agg["settings"]
    conf = round(100 * s["confidence"])
    lines = [
        "# Aggregate evaluation",
        "",
        (
            f"Inputs: {', '.join(agg['inputs'])}. Bootstrap: {s['bootstrap_resamples']} resamples, "
            f"seed {s['seed']}, {conf}% percentile intervals."
        ),
        "",
    ]
    if "atari" in agg:
        atari = agg["atari"]
        rule = s["final_score"] + (
            f" ({s['tail_steps']} env steps)" if s["final_score"] == "train-tail" else ""
        )
        lines += [
            "## Atari 100k",
            "",
            f"Final score of a run: {rule}. Human-normalized score: (score - random) / (human - random).",
            "",
            "| method | mean | median | IQM | optimality gap |",
            "|---|---|---|---|---|",
        ]
        for label, hns in _methods(agg).items():
            lines.append(f"| {label} | " + " | ".join(_ci(hns[k]) for k in AGGREGATES) + " |")
        base = atari["baselines"]
        head = "| game | runs | mean score | HNS | " + " | ".join(b["label"] for b in base.values()) + " |"
        lines += ["", head, "|---" * (4 + len(base)) + "|"]
        for game, e in atari["games"].items():
            cells = [game, str(e["n"]), _ci(e, "{:.1f}"), f"{e['hns_mean']:.3f}"]
            cells += [f"{b['games'][game]:.1f}" if game in b["games"] else "-" for b in base.values()]
            lines.append("| " + " | ".join(cells) + " |")
        if base:
            lines += ["", "Baselines (published per-run final scores):"]
            lines += [
                f"- {b['method']}: {b['source']['url']} ({b['source']['commit_date']})" for b in base.values()
            ]
        lines.append("")
    if "crafter" in agg:
        c = agg["crafter"]
        lines += [
            "## Crafter",
            "",
            f"Protocol: {c['protocol']}.",
            "",
            f"- Crafter score (train episodes): {_ci(c['score'], '{:.2f}')} over {len(c['runs'])} runs",
        ]
        if c.get("test"):
            lines.append(f"- Crafter score (test episodes): {_ci(c['test']['score'], '{:.2f}')}")
        lines += ["", "| achievement | success rate (%) |", "|---|---|"]
        lines += [f"| {n} | {v:.2f} |" for n, v in c["success_rates"].items()]
        lines.append("")
    for env, section in agg.get("other", {}).items():
        lines += [f"## {env}", "", "| game | runs | mean score |", "|---|---|---|"]
        lines += [f"| {g} | {e['n']} | {_ci(e, '{:.3f}')} |" for g, e in section["games"].items()]
        lines.append("")
    if agg["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in agg["notes"]] + [""]
    lines += [f"![{name}]({file})" for name, file in images.items()]
    return "\n".join(lines) + "\n"


def write_aggregate(agg: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write ``aggregate.json``, ``aggregate.md`` and the plots to ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if "atari" in agg:
        plot_profiles(agg["atari"]["profiles"], out_dir / "atari_profile.png")
        plot_intervals(_methods(agg), out_dir / "atari_aggregates.png")
        images |= {"Performance profiles": "atari_profile.png", "Aggregates": "atari_aggregates.png"}
    if "crafter" in agg:
        plot_crafter_rates(agg["crafter"], out_dir / "crafter_success_rates.png")
        plot_crafter_curve(
            agg["crafter"]["curve"], out_dir / "crafter_score_curve.png", agg["settings"]["seed"]
        )
        images |= {"Success rates": "crafter_success_rates.png", "Score curve": "crafter_score_curve.png"}
    (out_dir / "aggregate.json").write_text(json.dumps(agg, indent=2) + "\n")
    (out_dir / "aggregate.md").write_text(render_markdown(agg, images))
    return [out_dir / "aggregate.json", out_dir / "aggregate.md", *(out_dir / f for f in images.values())]


__all__ = [
    "plot_crafter_curve",
    "plot_crafter_rates",
    "plot_intervals",
    "plot_profiles",
    "render_markdown",
    "write_aggregate",
]
