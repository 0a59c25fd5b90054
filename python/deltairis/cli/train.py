"""``deltairis-train``: train a Δ-IRIS agent (Hydra-style ``key=value`` overrides, like the reference).

Examples::

    deltairis-train                                             # Crafter, Crafter preset
    deltairis-train env=atari params=atari env.train.id=BreakoutNoFrameskip-v4
    deltairis-train env=toy params=tiny common.device=cpu wandb.mode=disabled
    deltairis-train hydra.run.dir=outputs/my-run common.resume=true   # what scripts/resume.sh does

A fresh run lives in ``outputs/YYYY-MM-DD/hh-mm-ss/`` under the current directory (or
``hydra.run.dir=DIR``). ``common.resume=true`` continues the run in ``hydra.run.dir`` (default: the
current directory) from its own ``config/trainer.yaml``; further ``key=value`` overrides apply on top.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

USAGE = """usage: deltairis-train [--cfg] [--help] [key=value ...]

Config groups:  env=crafter|atari|toy   params=crafter|atari|tiny
Common keys:    common.epochs=N common.seed=N common.device=auto|cpu|cuda wandb.mode=online|offline|disabled
                env.train.id=BreakoutNoFrameskip-v4 collection.train.num_steps=N training.tokenizer.batch_size=N ...
                (every key of deltairis/config/trainer.yaml and the selected groups; unknown keys and
                wrong types are rejected)
Run folder:     hydra.run.dir=DIR (default outputs/YYYY-MM-DD/hh-mm-ss)
Resume:         common.resume=true [hydra.run.dir=RUN]   (or RUN/scripts/resume.sh)
--cfg           print the composed configuration and exit
"""

_TRUE = {"true", "1", "yes", "on"}


def _split(argv: Sequence[str]) -> tuple[list[str], Path | None, bool, bool]:
    overrides: list[str] = []
    run_dir: Path | None = None
    resume = False
    print_cfg = False
    for arg in argv:
        if arg in ("--cfg", "--cfg=job"):
            print_cfg = True
        elif arg.startswith("hydra.run.dir="):
            run_dir = Path(arg.split("=", 1)[1])
        elif arg.startswith("hydra.output_subdir=") or arg.startswith("hydra.job.chdir="):
            continue  # accepted for compatibility with the reference's scripts; nothing to do
        elif arg.lstrip("+").startswith("common.resume="):
            resume = arg.split("=", 1)[1].strip().lower() in _TRUE
        elif arg.startswith("-"):
            raise SystemExit(f"deltairis-train: unknown option {arg!r}\n{USAGE}")
        else:
            overrides.append(arg)
    return overrides, run_dir, resume, print_cfg


def _setup_logging(run_dir: Path | None) -> logging.Handler | None:
    fmt = logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        h = logging.StreamHandler()
        h.setFormatter(fmt)
        root.addHandler(h)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)
        return fh
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(USAGE)
        return 0
    from omegaconf import OmegaConf

    from deltairis.agent import CheckpointError
    from deltairis.train.checkpoint import CorruptCheckpointError
    from deltairis.train.configuration import ConfigError, apply_overrides, compose_config, load_run_config
    from deltairis.train.trainer import ResumeError, new_run_dir, train

    try:
        overrides, run_dir, resume, print_cfg = _split(argv)
        if resume:
            run_dir = (run_dir or Path.cwd()).resolve()
            cfg = load_run_config(run_dir / "config" / "trainer.yaml")
            cfg = apply_overrides(cfg, [*overrides, "common.resume=true"])
        else:
            cfg = compose_config(overrides)
        if print_cfg:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        if run_dir is None:
            run_dir = new_run_dir(Path.cwd() / "outputs")
        handler = _setup_logging(run_dir)
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm():
                train(cfg, run_dir)
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
    except ConfigError as exc:
        print(f"deltairis-train: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ResumeError, CorruptCheckpointError, CheckpointError, FileNotFoundError) as exc:
        print(f"deltairis-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deltairis-train: interrupted; resume with scripts/resume.sh", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
