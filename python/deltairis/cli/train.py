"""``deltairis-train``: train a Δ-IRIS agent. A Hydra application (``key=value`` overrides, multirun
sweeps, launcher plugins, ``--cfg``/``--info``/shell completion), like the reference.

Examples::

    deltairis-train                                             # Crafter, Crafter preset
    deltairis-train env=atari params=atari env.train.id=BreakoutNoFrameskip-v4
    deltairis-train env=toy params=tiny common.device=cpu wandb.mode=disabled
    deltairis-train hydra.run.dir=outputs/my-run common.resume=true   # what scripts/resume.sh does
    deltairis-train -m env=toy params=tiny common.seed=0,1            # a sweep: one run folder per job
    deltairis-train -m env=atari params=atari env.train.id=BreakoutNoFrameskip-v4,PongNoFrameskip-v4 \\
        common.seed=0,1,2 hydra/launcher=submitit_slurm              # as a SLURM job array (.[slurm] extra)
    torchrun --nproc_per_node=4 -m deltairis.cli.train hydra.run.dir=outputs/ddp   # 4 GPUs of one node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 --rdzv-id=RUN \\
        -m deltairis.cli.train hydra.run.dir=outputs/ddp distributed.store_dir=/local/scratch   # 2 nodes

Under torchrun (README "Distributed training") rank 0 is the run as above (run folder, collection,
evaluation, checkpoints, metrics); ranks > 0 get the config and the checkpoint from rank 0, keep a
node-local replica of the replay store (``distributed.store_dir``) and train their slice of every
global batch. Give ``common.device`` and ``distributed.timeout_s`` on the torchrun command line when
they differ from the defaults (every rank reads them before it joins).

A fresh run lives in Hydra's run folder ``outputs/YYYY-MM-DD/hh-mm-ss/`` under the current directory (or
``hydra.run.dir=DIR``); a sweep (``-m``) puts job ``N`` in ``multirun/YYYY-MM-DD/hh-mm-ss/N/`` (Hydra's
``hydra.sweep.dir`` / ``hydra.sweep.subdir``), each a complete run folder with its own
``config/trainer.yaml``, ``checkpoints/`` and ``scripts/resume.sh``. Hydra's own record of the job is
in ``.hydra/``. ``common.resume=true`` continues the run in ``hydra.run.dir`` (default: the current
directory) from its own ``config/trainer.yaml``; further ``key=value`` overrides apply on top (this path
does not go through Hydra's composition: the run folder's saved config is the source of truth).

Exit codes: 0 done, 2 bad arguments or configuration (the message names the key), 1 a run that cannot
start, resume or go on (corrupt checkpoint, run folder in use, full disk, non-finite training, ...),
75 stopped by SIGTERM/SIGINT after writing a mid-epoch checkpoint (resume with scripts/resume.sh),
69 a distributed run lost a rank (died, hung past ``distributed.timeout_s`` or unreachable; the message
names it; the last checkpoint is intact: resume), 130 interrupted outside training.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

USAGE = """usage: deltairis-train [-m] [--cfg job|hydra|all] [--info [WHAT]] [-sc install=bash] [--help]
                       [--hydra-help] [key=value ...]

Config groups:  env=crafter|atari|toy   params=crafter|atari|tiny   hydra/launcher=basic|submitit_local|submitit_slurm
Common keys:    common.epochs=N common.seed=N common.device=auto|cpu|cuda wandb.mode=online|offline|disabled
                env.train.id=BreakoutNoFrameskip-v4 collection.train.num_steps=N training.tokenizer.batch_size=N ...
                (every key of deltairis/config/trainer.yaml and the selected groups; unknown keys and
                wrong types are rejected)
Run folder:     hydra.run.dir=DIR (default outputs/YYYY-MM-DD/hh-mm-ss)
Sweep:          -m / --multirun with comma lists (common.seed=0,1,2) or ranges (common.seed=range(5)); one run
                folder per job in hydra.sweep.dir (default multirun/YYYY-MM-DD/hh-mm-ss)/N
Resume:         common.resume=true [hydra.run.dir=RUN]   (or RUN/scripts/resume.sh)
--cfg [job]     print the composed configuration and exit (--cfg hydra / --cfg all: Hydra's part too)
--info [WHAT]   Hydra's information (all|config|defaults|defaults-tree|plugins|searchpath)
-sc install=bash   shell completion (eval "$(deltairis-train -sc install=bash)")
--hydra-help    Hydra's own help (launchers, sweepers, flags)
"""

_TRUE = {"true", "1", "yes", "on"}
# Hydra's flags (hydra._internal.utils.get_args_parser) and whether they take a value.
_FLAGS_WITH_VALUE = {
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}
_FLAGS = {
    "--hydra-help",
    "--version",
    "--resolve",
    "--run",
    "-r",
    "--multirun",
    "-m",
    "--shell-completion",
    "-sc",
    "--cfg",
    "-c",
    "--info",
    "-i",
    *_FLAGS_WITH_VALUE,
}
_CFG_CHOICES = ("job", "hydra", "all")
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


JOB_LOGGING = "deltairis"
_LOG_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"
_JOB_LOGGING_NODE = {
    "version": 1,
    "formatters": {"simple": {"format": _LOG_FORMAT, "datefmt": "%H:%M:%S"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stderr"}
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "disable_existing_loggers": False,
}


class _ArgumentError(ValueError):
    pass


def _normalise(argv: Sequence[str]) -> list[str]:
    """Check the options and make the old ``--cfg`` (no value) mean ``--cfg job``.

    Raises:
        _ArgumentError: an option Hydra does not know.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if not arg.startswith("-") or arg.startswith("~"):
            out.append(arg)
        elif name not in _FLAGS:
            raise _ArgumentError(f"unknown option {arg!r}")
        elif name in ("--cfg", "-c") and "=" not in arg:
            out.append(arg)
            if i + 1 < len(argv) and argv[i + 1] in _CFG_CHOICES:
                out.append(argv[i + 1])
                i += 1
            else:
                out.append("job")  # `--cfg` alone: the job's config (what the previous CLI printed)
        elif name in _FLAGS_WITH_VALUE and "=" not in arg:
            if i + 1 >= len(argv):
                raise _ArgumentError(f"option {arg} needs a value")
            out.extend(argv[i : i + 2])
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def _is_hydra_override(arg: str) -> bool:
    key = arg.lstrip("+~").split("=", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _overrides(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` arguments of a normalised command line (option values left out)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and not arg.startswith("~"):
            takes_value = arg in _FLAGS_WITH_VALUE or arg in ("--cfg", "-c")
            if arg in ("--info", "-i"):  # an optional value
                takes_value = i + 1 < len(argv) and argv[i + 1] in _INFO_CHOICES
            i += 2 if takes_value else 1
            continue
        out.append(arg)
        i += 1
    return out


def _job_override_sets(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The job override lists to validate before Hydra starts: the first job of a sweep, then each
    other value of each swept key (with the other keys at their first value)."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # hydra's OverrideParseException
        from deltairis.train.configuration import ConfigError

        raise ConfigError(f"invalid override: {exc}") from exc
    choices: list[list[str]] = []
    for item in parsed:
        if item.is_sweep_override():
            try:
                values = list(item.sweep_string_iterator())
            except Exception as exc:  # noqa: BLE001 (interval sweeps (optuna, ...) have no value list)
                logger.debug("not validated before the sweep: %s (%s)", item.input_line, exc)
                continue
            choices.append([f"{item.get_key_element()}={v}" for v in values] or [item.input_line])
        else:
            choices.append([item.input_line])
    if not choices:
        return [[]]
    first = [c[0] for c in choices]
    sets = [first]
    for k, c in enumerate(choices):
        for value in c[1:]:
            sets.append([*first[:k], value, *first[k + 1 :]])
    return sets


def _check_game(cfg: Any) -> Any:
    """Refuse an Atari game id with another env (``-m env.train.id=A,B`` without ``env=atari`` would
    otherwise train the default Crafter env once per "game")."""
    from deltairis.train.configuration import ConfigError

    for split in ("train", "test"):
        if cfg.env.name != "atari" and cfg.env[split].id:
            raise ConfigError(
                f"env.{split}.id={cfg.env[split].id} is an Atari game but env={cfg.env.name}; add env=atari params=atari"
            )
    return cfg


def _setup_logging(run_dir: Path | None) -> logging.Handler | None:
    fmt = logging.Formatter(_LOG_FORMAT, "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers
    ):
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


def _train_in(cfg: Any, run_dir: Path) -> None:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from deltairis.train.trainer import train

    handler = _setup_logging(run_dir)
    try:
        with logging_redirect_tqdm():
            train(cfg, run_dir)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


#: exit code of a distributed run that lost a rank (EX_UNAVAILABLE of sysexits.h, like 75 = EX_TEMPFAIL)
DISTRIBUTED_EXIT_CODE = 69


def _report(exc: BaseException) -> int:
    """Print a known error the way the CLI always has; returns the exit code (0: not a known error)."""
    from deltairis.errors import ConfigError, DeltaIrisError, DistributedError, Preempted
    from deltairis.train.preemption import PREEMPTED_EXIT_CODE

    if isinstance(exc, Preempted):
        print(f"deltairis-train: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if isinstance(exc, DistributedError):
        print(f"deltairis-train: distributed error: {exc}", file=sys.stderr)
        return DISTRIBUTED_EXIT_CODE
    if isinstance(exc, ConfigError):
        print(f"deltairis-train: configuration error: {exc}", file=sys.stderr)
        return 2
    # resume refused, corrupt checkpoint, run folder in use, non-finite training, store I/O ...
    if isinstance(exc, (DeltaIrisError, FileNotFoundError)):
        print(f"deltairis-train: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, KeyboardInterrupt):
        print("deltairis-train: interrupted; resume with scripts/resume.sh", file=sys.stderr)
        return 130
    return 0


def task(cfg: Any) -> None:
    """Hydra's task function: validate the job's config and train in the job's output folder.

    Known errors end the process with the CLI's exit codes (``SystemExit``), which also stops a sweep on
    the basic launcher.
    """
    from hydra.core.hydra_config import HydraConfig

    from deltairis.train.configuration import validate_config

    try:
        valid = _check_game(validate_config(cfg))
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        _train_in(valid, run_dir)
    except (Exception, KeyboardInterrupt) as exc:
        code = _report(exc)
        if code:
            raise SystemExit(code) from exc
        raise


def _hydra_app() -> Any:
    import hydra
    from hydra.core.config_store import ConfigStore

    from deltairis.train.configuration import CONFIG_MODULE, CONFIG_NAME, _register_schema

    _register_schema()
    # The job's console log in the CLI's format (train.log is added per run by _train_in, also on resume).
    ConfigStore.instance().store(group="hydra/job_logging", name=JOB_LOGGING, node=_JOB_LOGGING_NODE)
    return hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base=None)(task)


def _run_hydra(argv: list[str]) -> int:
    from hydra.core.global_hydra import GlobalHydra

    app = _hydra_app()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    if not any(a in ("-sc", "--shell-completion", "--hydra-help", "--version") for a in argv) and not any(
        a.startswith("hydra/job_logging=") for a in argv
    ):
        # The job's console log in the CLI's format; train.log is added by _train_in (also on resume).
        argv = [*argv, f"hydra/job_logging={JOB_LOGGING}"]
    saved = sys.argv
    sys.argv = ["deltairis-train", *argv]
    try:
        app()
    except (ValueError, TypeError) as exc:  # Hydra's usage errors (e.g. two of --cfg, -m, --info)
        print(f"deltairis-train: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
    return 0


def _resume(overrides: list[str], print_cfg: bool) -> int:
    from omegaconf import OmegaConf

    from deltairis.train.configuration import apply_overrides, load_run_config

    run_dir: Path | None = None
    rest: list[str] = []
    for arg in overrides:
        if arg.startswith("hydra.run.dir="):
            run_dir = Path(arg.split("=", 1)[1])
        elif _is_hydra_override(arg):
            continue  # Hydra settings (output_subdir, job.chdir, ...) mean nothing for a resumed run
        elif arg.lstrip("+").startswith("common.resume="):
            continue
        else:
            rest.append(arg)
    run_dir = (run_dir or Path.cwd()).resolve()
    cfg = load_run_config(run_dir / "config" / "trainer.yaml")
    cfg = apply_overrides(cfg, [*rest, "common.resume=true"])
    if print_cfg:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    _train_in(cfg, run_dir)
    return 0


def _join_group(overrides: list[str], multirun: bool) -> tuple[Any, str | None]:
    """Under torchrun: join the process group (every rank, before anything else). Returns the context
    and the ``distributed.store_dir`` of this command line (a node's own replica folder).

    The backend follows ``common.device`` of the command line (NCCL for CUDA, gloo for CPU; ``auto``: CUDA
    when available), the collective timeout ``distributed.timeout_s`` of the command line.
    """
    from deltairis import distributed as dist
    from deltairis.errors import ConfigError
    from deltairis.runtime import resolve_device

    world = dist.env_world()
    if world is None or world[1] == 1:
        return dist.current(), None
    if multirun:
        raise ConfigError("a sweep (-m) cannot run under torchrun: start one torchrun per job")
    values = {}
    for arg in overrides:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("common.device", "distributed.timeout_s", "distributed.store_dir"):
            values[key] = value
    try:
        timeout = float(values.get("distributed.timeout_s", 1800.0))
    except ValueError as exc:
        raise ConfigError(f"distributed.timeout_s must be a number ({exc})") from exc
    if timeout <= 0:
        raise ConfigError(f"distributed.timeout_s must be > 0, got {timeout}")
    device = resolve_device(values.get("common.device", "auto"))
    ctx = dist.init(device.type, timeout)
    return ctx, values.get("distributed.store_dir") or None


def _follow(store_dir: str | None) -> int:
    """A rank > 0: everything (config, run folder path, checkpoint) comes from rank 0, except this
    node's replica folder when its own command line gives ``distributed.store_dir``."""
    from deltairis import distributed as dist
    from deltairis.train.trainer import follow

    rank = dist.current().rank
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler()
        h.setFormatter(
            logging.Formatter(f"[%(asctime)s rank {rank} %(levelname)s %(name)s] %(message)s", "%H:%M:%S")
        )
        root.addHandler(h)
    root.setLevel(logging.WARNING)  # quieter: rank 0 reports the run
    follow(store_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(USAGE)
        return 0
    try:
        return _main(argv)
    finally:
        from deltairis import distributed as dist

        dist.shutdown()


def _main(argv: list[str]) -> int:
    try:
        from deltairis.train.configuration import ConfigError, compose_config

        try:
            argv = _normalise(argv)
        except _ArgumentError as exc:
            print(f"deltairis-train: {exc}\n{USAGE}", file=sys.stderr)
            return 2
        overrides = _overrides(argv)
        multirun = any(a in ("-m", "--multirun") for a in argv)
        printing = any(
            a in ("--cfg", "-c", "--info", "-i", "-sc", "--shell-completion", "--hydra-help", "--version")
            or a.startswith(("--cfg=", "--info="))
            for a in argv
        )
        if printing:  # under torchrun too: rank 0 prints, the other ranks have nothing to do
            from deltairis.distributed import env_world

            world = env_world()
            if world is not None and world[0] > 0:
                return 0
        else:
            ctx, store_dir = _join_group(overrides, multirun)
            if not ctx.is_main:
                return _follow(store_dir)
        resume = any(
            a.lstrip("+").startswith("common.resume=") and a.split("=", 1)[1].strip().lower() in _TRUE
            for a in overrides
        )
        if resume:
            if multirun:
                raise ConfigError(
                    "common.resume=true resumes one run folder; resume each job of a sweep with its own "
                    "scripts/resume.sh"
                )
            return _resume(
                overrides, print_cfg=any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv)
            )
        custom_config = any(
            a.split("=", 1)[0] in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
            for a in argv
        )
        informational = any(
            a in ("--info", "-i", "--shell-completion", "-sc", "--hydra-help", "--version") for a in argv
        )
        if not custom_config and not informational:
            # Validate before Hydra starts (every job of a sweep, see _job_override_sets), so that a bad
            # key exits with code 2 and a message naming it instead of Hydra's traceback.
            job_overrides = [a for a in overrides if not _is_hydra_override(a)]
            for sets in _job_override_sets(job_overrides, multirun):
                _check_game(compose_config(sets))
        return _run_hydra(argv)
    except (Exception, KeyboardInterrupt) as exc:
        code = _report(exc)
        if code:
            return code
        raise


if __name__ == "__main__":  # pragma: no cover
    # `python -m deltairis.cli.train`: run the package module's main, so that Hydra's task function is
    # `deltairis.cli.train.task` (importable by launchers that pickle it), not a copy in `__main__`.
    from deltairis.cli.train import main as _main

    sys.exit(_main())
