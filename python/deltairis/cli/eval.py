"""``deltairis-eval``: evaluate an agent in the real environment (test settings) and write a report.

The metrics are printed as JSON on stdout; a report (``report.json``, ``report.md``, PNG plots) is written
to ``--output`` (default ``RUN/eval/``, or ``./eval-report/`` without a run folder). Crafter: the Crafter
score and a bar chart of the 22 achievement success rates; Atari: the human-normalized score of the
game; always the return distribution. ``--curves`` adds the training curves of ``RUN/metrics.jsonl``.

Examples::

    deltairis-eval outputs/2026-01-01/12-00-00 --episodes 64      # a run folder (or --run-dir RUN)
    deltairis-eval RUN --curves --episodes 0                      # training curves only, no episodes
    deltairis-eval my-agent                                       # a folder holding only checkpoints/last.pt
    deltairis-eval                                                # the current folder, when it is one of those
    deltairis-eval --checkpoint last.pt                           # e.g. the published (Crafter) checkpoint
    deltairis-eval --checkpoint last.pt --preset atari --env-id BreakoutNoFrameskip-v4
    deltairis-eval --env toy --random --episodes 32               # uniformly random baseline
    deltairis-eval --env gymnasium --env-id CartPole-v1 --random  # the same on any pixel gymnasium env
    deltairis-eval --aggregate multirun/2026-01-01/12-00-00 --output paper  # a sweep, with the baselines

Outside a run folder (no ``config/trainer.yaml``) the default configuration of the checkpoint's preset
is used (Crafter unless ``--preset atari --env-id GAME``; ``--preset tiny`` plays the toy env).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deltairis-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "run",
        nargs="?",
        type=Path,
        metavar="RUN",
        help="run folder, same as --run-dir (default: the current folder if it holds a run or checkpoints/last.pt)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        help="run folder (config/trainer.yaml + checkpoints/last.pt, or only the latter)",
    )
    p.add_argument("--checkpoint", type=Path, help="agent checkpoint (default: RUN/checkpoints/last.pt)")
    p.add_argument(
        "--env",
        choices=["crafter", "atari", "toy", "gymnasium"],
        help="environment (default: the run's / the preset's)",
    )
    p.add_argument(
        "--env-id",
        help="Atari game id (e.g. BreakoutNoFrameskip-v4), or a registered gymnasium id with --env gymnasium",
    )
    p.add_argument(
        "--preset",
        choices=["crafter", "atari", "tiny"],
        default=None,
        help="model preset of a reference-layout checkpoint outside a run folder (default: the env's, or crafter)",
    )
    p.add_argument("--random", action="store_true", help="uniformly random actions instead of an agent")
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="number of episodes (default: the run's test setting or 16; 0: none, with --curves)",
    )
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=float, default=0.0)
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="default: the run's test temperature, else 1.0 (the reference's test policy)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--output", type=Path, help="report folder (default: RUN/eval, or ./eval-report without a run)"
    )
    p.add_argument(
        "--curves", action="store_true", help="add the training curves of RUN/metrics.jsonl to the report"
    )
    p.add_argument("--no-report", action="store_true", help="only print the JSON metrics, write no report")
    from deltairis.cli.aggregate_cli import add_aggregate_arguments

    add_aggregate_arguments(p)
    return p


def _run_dir(args: argparse.Namespace) -> Path | None:
    from deltairis.errors import ConfigError

    if args.run is not None and args.run_dir is not None and args.run.resolve() != args.run_dir.resolve():
        raise ConfigError(f"two run folders given: {args.run} and --run-dir {args.run_dir}")
    if args.run is not None or args.run_dir is not None:
        return args.run if args.run is not None else args.run_dir
    here = Path(".")
    if (
        args.checkpoint is None
        and args.env is None
        and ((here / "config" / "trainer.yaml").is_file() or (here / "checkpoints" / "last.pt").is_file())
    ):
        return here  # like deltairis-play: the current folder when it is a run folder
    return None


def _resolve(args: argparse.Namespace, run_dir: Path | None, device: str) -> tuple[Any, Any, Any, str]:
    """(run or default config or None, env config, agent or None, description of the policy)."""
    from deltairis.cli.common import ENV_PRESET, default_config, env_config, load_run
    from deltairis.errors import ConfigError
    from deltairis.train.configuration import load_run_config

    if args.env == "gymnasium" and not args.env_id:
        raise ConfigError(
            "--env gymnasium needs --env-id: a registered gymnasium id, e.g. --env-id CartPole-v1"
        )
    preset = args.preset or (ENV_PRESET.get(args.env) if args.env else None)
    cfg = agent = None
    if run_dir is not None or (args.checkpoint is not None and not args.random):
        if args.random:
            assert run_dir is not None
            path = run_dir / "config" / "trainer.yaml"
            cfg = (
                load_run_config(path) if path.is_file() else default_config(preset or "crafter", args.env_id)
            )
        else:
            cfg, agent = load_run(run_dir, args.checkpoint, device, preset=preset, env_id=args.env_id)
    elif args.env is None:
        raise ConfigError(
            "give a run folder (RUN or --run-dir), --checkpoint PATH, or --env NAME with --random"
        )
    elif not args.random:
        raise ConfigError("give --checkpoint (or --random) when no run folder (RUN or --run-dir) is given")
    env_cfg = env_config(args.env, args.env_id) if args.env is not None else cfg.env
    if agent is None:
        desc = "uniformly random policy"
    else:
        path = args.checkpoint or run_dir / "checkpoints" / "last.pt"
        desc = f"checkpoint {path} ({agent.config.preset} preset, {agent.config.num_actions} actions)"
    return cfg, env_cfg, agent, desc


def _play(
    agent: Any,
    env_cfg: Any,
    *,
    episodes: int,
    num_envs: int,
    seed: int,
    epsilon: float,
    temperature: float,
    device: str,
) -> tuple[Any, dict[str, float]]:
    """deltairis.train.evaluate.play_test_episodes, with a configuration error for a mismatched agent."""
    from deltairis.config.schema import TestCollectionConfig
    from deltairis.errors import ConfigError
    from deltairis.train.evaluate import play_test_episodes

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1 to play, got {episodes}")
    settings = TestCollectionConfig(
        num_envs=num_envs, num_episodes=episodes, epsilon=epsilon, temperature=temperature
    )
    try:
        return play_test_episodes(agent, env_cfg, settings, seed=seed, device=device)
    except ValueError as exc:
        if "actions but the" in str(exc):
            raise ConfigError(f"{exc} (check --env/--env-id/--preset)") from exc
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s %(name)s] %(message)s")
    if args.aggregate is not None:  # many runs and score files: deltairis.cli.aggregate
        from deltairis.cli.aggregate_cli import run_aggregate

        return run_aggregate(args)
    from deltairis.cli.report import ReportError, atari_game, build_report, load_metrics, write_report
    from deltairis.errors import CheckpointError, ConfigError
    from deltairis.runtime import resolve_device

    try:
        device = str(resolve_device(args.device, "--device"))
    except ConfigError as exc:
        print(f"deltairis-eval: error: {exc}", file=sys.stderr)
        return 2
    try:
        run_dir = _run_dir(args)
        if args.episodes is not None and args.episodes < 0:
            raise ConfigError(f"--episodes must be >= 0, got {args.episodes}")
        play = args.episodes != 0
        if not play and not args.curves:
            raise ConfigError("--episodes 0 plays nothing: add --curves for a training-curves report")
        records = None
        if args.curves:
            if run_dir is None:
                raise ConfigError("--curves needs a run folder (RUN or --run-dir) with a metrics.jsonl")
            records = load_metrics(run_dir / "metrics.jsonl")
        metrics: dict[str, Any] = {}
        report_args: dict[str, Any] = {
            "returns": None,
            "lengths": None,
            "env": "",
            "agent": "none (curves only)",
        }
        if play:
            cfg, env_cfg, agent, desc = _resolve(args, run_dir, device)
            if agent is not None and cfg is not None:  # CUDA: failing fast paths fall back to the reference
                from deltairis.train.run_checks import preflight_for_inference

                preflight_for_inference(agent, cfg, device)
            env_id = str(env_cfg.test.id) if env_cfg.name == "atari" else None
            if env_id is not None:
                atari_game(env_id)  # an unknown game fails before any episode is played
            episodes = args.episodes or (int(cfg.collection.test.num_episodes) if cfg is not None else 16)
            temperature = args.temperature
            if temperature is None:
                temperature = float(cfg.collection.test.temperature) if cfg is not None else 1.0
            stats, metrics = _play(
                agent,
                env_cfg,
                episodes=episodes,
                num_envs=args.num_envs,
                seed=args.seed,
                epsilon=args.epsilon,
                temperature=temperature,
                device=device,
            )
            settings = {
                "episodes": episodes,
                "num_envs": min(args.num_envs, episodes),
                "seed": args.seed,
                "temperature": temperature,
                "epsilon": args.epsilon,
            }
            report_args = {
                "returns": stats.episode_returns,
                "lengths": stats.episode_lengths,
                "env": str(env_cfg.name),
                "env_id": env_id,
                "agent": desc,
                "achievements": stats.achievements or None,
                "settings": settings,
            }
        elif run_dir is not None and (run_dir / "config" / "trainer.yaml").is_file():
            from deltairis.train.configuration import load_run_config

            report_args["env"] = str(load_run_config(run_dir / "config" / "trainer.yaml").env.name)
        report = build_report(records=records, **report_args)
        if "atari" in report:
            metrics["human_normalized_score"] = report["atari"]["human_normalized_score"]
        written: list[Path] = []
        if not args.no_report:
            out_dir = args.output or (run_dir / "eval" if run_dir is not None else Path("eval-report"))
            written = write_report(report, out_dir, records)
    except (ConfigError, CheckpointError, ReportError, FileNotFoundError, ValueError) as exc:
        print(f"deltairis-eval: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics if play else report["curves"], indent=2, sort_keys=True))
    if written:
        print(
            f"deltairis-eval: report written to {written[0].parent} ({', '.join(p.name for p in written)})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
