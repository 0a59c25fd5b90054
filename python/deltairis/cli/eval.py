"""``deltairis-eval``: evaluate an agent in the real environment (test settings) and print JSON metrics.

Examples::

    deltairis-eval --run-dir outputs/2026-01-01/12-00-00 --episodes 64
    deltairis-eval --checkpoint last.pt --env crafter --preset crafter      # e.g. the published checkpoint
    deltairis-eval --env toy --random --episodes 32                         # uniformly random baseline
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltairis-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, help="run folder (config/trainer.yaml + checkpoints/last.pt)")
    p.add_argument("--checkpoint", type=Path, help="agent checkpoint (default: RUN/checkpoints/last.pt)")
    p.add_argument("--env", choices=["crafter", "atari", "toy"], help="environment (default: the run's)")
    p.add_argument("--env-id", help="Atari game id, e.g. BreakoutNoFrameskip-v4")
    p.add_argument("--preset", choices=["crafter", "atari", "tiny"], default=None,
                   help="model preset of a reference-layout checkpoint (default: the env's)")
    p.add_argument("--random", action="store_true", help="uniformly random actions instead of an agent")
    p.add_argument("--episodes", type=int, default=None, help="number of episodes (default: the run's test setting or 16)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=None, help="default: the run's test temperature or 0.5")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", type=Path, help="also write the metrics to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s %(name)s] %(message)s")
    from deltairis.agent import CheckpointError, load_agent
    from deltairis.cli.common import env_config, load_run, resolve_device
    from deltairis.train.configuration import ConfigError
    from deltairis.train.evaluate import evaluate_policy

    device = resolve_device(args.device)
    try:
        agent = None
        episodes, temperature = args.episodes, args.temperature
        if args.run_dir is not None:
            cfg, run_agent = load_run(args.run_dir, args.checkpoint, device)
            env_cfg = cfg.env if args.env is None else env_config(args.env, args.env_id)
            episodes = episodes or int(cfg.collection.test.num_episodes)
            temperature = temperature if temperature is not None else float(cfg.collection.test.temperature)
            agent = None if args.random else run_agent
        else:
            if args.env is None:
                raise ConfigError("give --run-dir, or --env (with --checkpoint or --random)")
            env_cfg = env_config(args.env, args.env_id)
            if not args.random:
                if args.checkpoint is None:
                    raise ConfigError("give --checkpoint (or --random) when no --run-dir is given")
                preset = args.preset or {"crafter": "crafter", "atari": "atari", "toy": "tiny"}[args.env]
                agent = load_agent(args.checkpoint, preset=preset, device=device)
        metrics = evaluate_policy(
            agent,
            env_cfg,
            num_episodes=episodes or 16,
            num_envs=args.num_envs,
            seed=args.seed,
            epsilon=args.epsilon,
            temperature=temperature if temperature is not None else 0.5,
            device=device,
        )
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"deltairis-eval: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
