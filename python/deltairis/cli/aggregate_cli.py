"""The ``--aggregate`` mode of ``deltairis-eval`` (:mod:`deltairis.cli.aggregate`): its options and its run.

    deltairis-eval --aggregate multirun/2026-01-01/12-00-00              # every job of a sweep
    deltairis-eval --aggregate runs/breakout-* runs/pong-* --seed 1 --output paper/atari
    deltairis-eval --aggregate my_scores.json --baselines delta-iris     # a score file {game: [scores]}
    deltairis-eval --aggregate crafter-runs --budget 1000000             # Crafter's official protocol

It writes ``aggregate.json``, ``aggregate.md`` and PNG plots to ``--output`` (default
``./aggregate-report``) and prints the JSON summary (``hns`` / ``crafter`` score, and the notes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deltairis.cli.aggregate import BASELINES, DEFAULT_BUDGET, FINAL_SCORE_RULES, Settings

DEFAULT_OUTPUT = Path("aggregate-report")


def add_aggregate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "aggregate over runs (--aggregate)",
        "statistics over many runs (Agarwal et al. 2021) next to published baselines; --seed seeds the "
        "bootstrap, --output is the report folder (default ./aggregate-report)",
    )
    g.add_argument(
        "--aggregate",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="run folders, folders of runs (a multirun folder) or score files {game: [per-run scores]}",
    )
    g.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"published Atari results shown side by side: comma-separated of {', '.join(BASELINES)}, "
        "or none (default: all)",
    )
    g.add_argument(
        "--final-score",
        choices=FINAL_SCORE_RULES,
        default="final-eval",
        help="final score of an Atari run: the mean return of its last evaluation's test episodes "
        "(final-eval, the reference's protocol) or of its training episodes of the last --tail-steps "
        "env steps (train-tail)",
    )
    g.add_argument("--tail-steps", type=int, default=10000, help="env steps of --final-score train-tail")
    g.add_argument(
        "--budget",
        type=int,
        default=DEFAULT_BUDGET,
        help="Crafter: env-step budget of the official protocol (default 1000000)",
    )
    g.add_argument("--reps", type=int, default=10000, help="bootstrap resamples (at least 2000)")
    g.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    g.add_argument(
        "--include-unfinished",
        action="store_true",
        help="use runs that are still training (default: skip them, naming each)",
    )
    g.add_argument(
        "--min-seeds", type=int, default=1, help="skip (naming it) an Atari game with fewer runs than this"
    )
    g.add_argument("--label", default="runs", help="name of the given runs in the tables and plots")


def _baselines(text: str) -> tuple[str, ...]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return ()
    return tuple(b.strip() for b in text.split(",") if b.strip())


def run_aggregate(args: argparse.Namespace) -> int:
    from deltairis.cli.aggregate import aggregate
    from deltairis.cli.aggregate_report import write_aggregate
    from deltairis.errors import ConfigError, ReportError

    try:
        if args.run is not None or args.run_dir is not None or args.checkpoint is not None:
            raise ConfigError(
                "--aggregate takes its run folders as its own PATHs (no RUN, --run-dir or --checkpoint)"
            )
        settings = Settings(
            seed=args.seed,
            reps=args.reps,
            confidence=args.confidence,
            final_score=args.final_score,
            tail_steps=args.tail_steps,
            budget=args.budget,
            include_unfinished=args.include_unfinished,
            min_seeds=args.min_seeds,
            baselines=_baselines(args.baselines),
            label=args.label,
        )
        agg = aggregate(args.aggregate, settings)
        written = [] if args.no_report else write_aggregate(agg, args.output or DEFAULT_OUTPUT)
    except (ConfigError, ReportError, FileNotFoundError, ValueError) as exc:
        print(f"deltairis-eval: error: {exc}", file=sys.stderr)
        return 2
    summary = {k: agg[k] for k in ("hns", "notes") if k in agg}
    if "crafter" in agg:
        summary["crafter"] = {
            "score": agg["crafter"]["score"],
            "test_score": (agg["crafter"].get("test") or {}).get("score"),
        }
    if "other" in agg:
        summary["other"] = {
            env: {g: e["value"] for g, e in s["games"].items()} for env, s in agg["other"].items()
        }
    print(json.dumps(summary, indent=2))
    if written:
        names = ", ".join(p.name for p in written)
        print(f"deltairis-eval: aggregate written to {written[0].parent} ({names})", file=sys.stderr)
    return 0


__all__ = ["DEFAULT_OUTPUT", "add_aggregate_arguments", "run_aggregate"]
