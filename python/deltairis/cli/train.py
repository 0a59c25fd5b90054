"""``deltairis-train``: train a Δ-IRIS agent. A Hydra application (``key=value`` overrides, multirun
sweeps, launcher plugins, ``--cfg``/``--info``/shell completion), like the reference.

Examples::

    deltairis-train                                             # Crafter, Crafter preset
    deltairis-train env=atari params=atari env.train.id=BreakoutNoFrameskip-v4
    deltairis-train env=toy params=tiny common.device=cpu wandb.mode=disabled
    deltairis-train hydra.run.dir=outputs/my-run common.resume=true   # what scripts/resume.sh does
    deltairis-train params.training.world_model.batch_num_samples=16  # the reference's paths work too
    deltairis-train agent.path_to_ckpt=last.pt agent.load_actor_critic=false   # warm start (fresh actor-critic)
    deltairis-train env=gymnasium params=tiny env.train.id=CartPole-v1  # any pixel gymnasium env
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

Before the first collection a run makes its memory plan (README "Memory plan"): a component whose
training step would not fit the device's memory stops the run with status 2 and a message that names
the component, the estimate, what is available and the ``grad_acc_steps``/``batch_size`` that fit
(``training.auto_grad_acc=true`` trains in that split instead).

Exit codes: 0 done, 2 bad arguments or configuration (the message names the key) or a memory plan that
does not fit (the message names the component and the overrides that fit), 1 a run that cannot
start, resume or go on (corrupt checkpoint, run folder in use, full disk, non-finite training, ...),
75 stopped by SIGTERM/SIGINT after writing a mid-epoch checkpoint (resume with scripts/resume.sh),
69 a distributed run lost a rank (died, hung past ``distributed.timeout_s`` or unreachable; the message
names it; the last checkpoint is intact: resume), 130 interrupted outside training.
"""

# How it is built: Hydra's argument parser reads the command line and ``hydra.main`` runs :func:`task`.
# The :class:`CheckConfig` callback (``hydra.callbacks`` of trainer.yaml) checks the configuration before
# Hydra creates a folder (every job of a sweep before the first starts); :func:`task` turns it into the
# schema's dataclasses. Glue where Hydra has no mechanism, kept small: a bare ``--cfg`` means ``--cfg job``;
# ``--help`` prints this module's usage; Hydra's errors exit with status 2, not 1 (its HYDRA_FULL_ERROR
# switch lets them reach :func:`main`); resume and the torchrun start read the overrides (with Hydra's
# override parser) before Hydra runs, since neither composes the config.

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deltairis.errors import ConfigError, DeltaIrisError, DistributedError, Preempted
from deltairis.train.configuration import (
    CONFIG_MODULE,
    CONFIG_NAME,
    _register_schema,
    apply_overrides,
    format_error,
    load_run_config,
    typed_config,
    validate_config,
)
from deltairis.train.preemption import PREEMPTED_EXIT_CODE

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

    from deltairis.config.schema import TrainerConfig

logger = logging.getLogger(__name__)

USAGE = """usage: deltairis-train [-m] [--cfg job|hydra|all] [--info [WHAT]] [-sc install=bash] [--help]
                       [--hydra-help] [key=value ...]

Config groups:  env=crafter|atari|toy|gymnasium   params=crafter|atari|tiny
                hydra/launcher=basic|submitit_local|submitit_slurm
Common keys:    common.epochs=N common.seed=N common.device=auto|cpu|cuda wandb.mode=online|offline|disabled
                env.train.id=BreakoutNoFrameskip-v4 collection.train.num_steps=N training.tokenizer.batch_size=N ...
                (every key of deltairis/config/trainer.yaml and the selected groups; unknown keys and
                wrong types are rejected)
Run folder:     hydra.run.dir=DIR (default outputs/YYYY-MM-DD/hh-mm-ss)
Sweep:          -m / --multirun with comma lists (common.seed=0,1,2) or ranges (common.seed=range(5)); one run
                folder per job in hydra.sweep.dir (default multirun/YYYY-MM-DD/hh-mm-ss)/N
Resume:         common.resume=true [hydra.run.dir=RUN]   (or RUN/scripts/resume.sh)
Warm start:     agent.path_to_ckpt=FILE|RUN [agent.load_tokenizer|load_world_model|load_actor_critic=false]
Reference:      the reference's paths (params.common.epochs=..., params.training.learning_rate=...,
                params.initialization.path_to_checkpoint=..., ...) are mapped onto ours (README
                "Coming from the reference"); a key we cannot honour exits 2 naming it
--cfg [job]     print the composed configuration and exit (--cfg hydra / --cfg all: Hydra's part too)
--info [WHAT]   Hydra's information (all|config|defaults|defaults-tree|plugins|searchpath)
-sc install=bash   shell completion (eval "$(deltairis-train -sc install=bash)")
--hydra-help    Hydra's own help (launchers, sweepers, flags)
"""

_TRUE = {"true", "1", "yes", "on"}
_CFG_CHOICES = ("job", "hydra", "all")
#: the console format of hydra/job_logging/deltairis.yaml, also used for each run's train.log
_LOG_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"
#: exit code of a distributed run that lost a rank (EX_UNAVAILABLE of sysexits.h, like 75 = EX_TEMPFAIL)
DISTRIBUTED_EXIT_CODE = 69


def _report(exc: BaseException) -> int:
    """Print a known error the way the CLI always has; returns the exit code (0: not a known error)."""
    if isinstance(exc, Preempted):
        print(f"deltairis-train: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if isinstance(exc, DistributedError):
        print(f"deltairis-train: distributed error: {exc}", file=sys.stderr)
        return DISTRIBUTED_EXIT_CODE
    from deltairis.train.memory import MemoryPlanError

    if isinstance(exc, MemoryPlanError):  # a configuration this machine cannot train: change the batch
        print(f"deltairis-train: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, (ConfigError, HydraException, OmegaConfBaseException)):
        # Hydra's composition errors (unknown key, bad value or override, missing group option) name the key
        text = str(exc) if isinstance(exc, ConfigError) else format_error(exc)
        print(f"deltairis-train: configuration error: {text}", file=sys.stderr)
        return 2
    # resume refused, corrupt checkpoint, run folder in use, non-finite training, store I/O ...
    if isinstance(exc, (DeltaIrisError, FileNotFoundError)):
        print(f"deltairis-train: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, KeyboardInterrupt):
        print("deltairis-train: interrupted; resume with scripts/resume.sh", file=sys.stderr)
        return 130
    return 0


@contextmanager
def _known_errors_exit() -> Iterator[None]:
    """Inside Hydra: a known error ends the process with its exit code (``SystemExit`` passes through
    Hydra's job runner and callbacks, and also stops a sweep on the basic launcher)."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        code = _report(exc)
        if code:
            raise SystemExit(code) from exc
        raise


def _job_config(config: DictConfig) -> DictConfig:
    """The job's part of a config Hydra composed (its ``hydra`` node left out)."""
    return OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])


def _job_override_sets(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The job override lists to check before a sweep starts: the first job, then each other value of
    each swept key (with the other keys at their first value)."""
    if not multirun:
        return [overrides]
    choices: list[list[str]] = []
    for text, item in zip(overrides, _parse_overrides(overrides)):
        if item.is_sweep_override():
            try:
                values = list(item.sweep_string_iterator())
            except Exception as exc:  # noqa: BLE001 (interval sweeps (optuna, ...) have no value list)
                logger.debug("not checked before the sweep: %s (%s)", text, exc)
                continue
            choices.append([f"{item.get_key_element()}={v}" for v in values] or [text])
        else:
            choices.append([text])
    first = [c[0] for c in choices]
    sets = [first]
    for k, c in enumerate(choices):
        sets.extend([*first[:k], value, *first[k + 1 :]] for value in c[1:])
    return sets


class CheckConfig(Callback):
    """Hydra callback (``hydra.callbacks.check_config`` of trainer.yaml): check the configuration before
    Hydra creates a run folder, and every job of a sweep before the first job starts. A bad value ends
    the process with status 2 and a message naming the key (Hydra's callbacks only warn on exceptions)."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        with _known_errors_exit():
            _check_fresh_run(validate_config(_job_config(config)))

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        loader = GlobalHydra.instance().config_loader()
        with _known_errors_exit():
            for job in _job_override_sets(list(config.hydra.overrides.task), True):
                # what the sweeper composes for each job (Hydra's part of the command line included)
                _check_fresh_run(validate_config(_job_config(loader.load_sweep_config(config, job))))


def _check_fresh_run(cfg: DictConfig) -> None:
    """What only a fresh run (Hydra's path; a resume does not compose) needs: a warm start's checkpoint
    exists, so that a mistyped path stops before a run folder is made."""
    from deltairis.train.warm_start import checkpoint_file

    path = cfg.agent.path_to_ckpt
    if path and not cfg.common.resume:
        try:
            checkpoint_file(path)
        except FileNotFoundError as exc:
            raise ConfigError(f"agent.path_to_ckpt (initialization.path_to_checkpoint): {exc}") from exc


def _train_in(cfg: TrainerConfig, run_dir: Path) -> None:
    """Train in ``run_dir``; the log also goes to its ``train.log`` (and to the console on resume)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from deltairis.train.trainer import train

    logging.basicConfig(format=_LOG_FORMAT, datefmt="%H:%M:%S")  # a console log where Hydra set none up
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT, "%H:%M:%S"))
    root.addHandler(handler)
    try:
        with logging_redirect_tqdm():
            train(cfg, run_dir)
    finally:
        root.removeHandler(handler)
        handler.close()


#: set when the task function starts: an exception after that is the run's, not a usage error
_task_started = False


def task(cfg: DictConfig) -> None:
    """Hydra's task function: the job's config as the schema's dataclasses, trained in the job's folder."""
    from hydra.core.hydra_config import HydraConfig

    global _task_started
    _task_started = True
    with _known_errors_exit():
        _train_in(typed_config(cfg), Path(HydraConfig.get().runtime.output_dir))


def _run_hydra(argv: list[str]) -> int:
    import hydra

    global _task_started
    _register_schema()
    app = hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base=None)(task)
    GlobalHydra.instance().clear()
    saved_argv, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["deltairis-train", *argv]
    # Hydra prints its own errors and exits with status 1; with its HYDRA_FULL_ERROR switch they reach
    # main(), which names the key and exits with status 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _task_started = False
    try:
        app()
    except SystemExit as exc:
        return _exit_code(exc)
    except (ValueError, TypeError) as exc:
        if _task_started:
            raise
        print(f"deltairis-train: {exc}", file=sys.stderr)  # e.g. two of --cfg, -m, --info
        return 2
    finally:
        sys.argv = saved_argv
        os.environ.pop("HYDRA_FULL_ERROR")
        if full_error is not None:
            os.environ["HYDRA_FULL_ERROR"] = full_error
        GlobalHydra.instance().clear()
    return 0


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return int(exc.code or 0)
    print(exc.code, file=sys.stderr)
    return 1


def _parse_overrides(overrides: Sequence[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(overrides))


def _value(overrides: Sequence[Override], key: str) -> str | None:
    """The value a (non-sweep) command-line override gives ``key``, as text; None when none does."""
    found = [o for o in overrides if o.key_or_group == key and not (o.is_delete() or o.is_sweep_override())]
    value = found[-1].value() if found else None
    return None if value is None else str(value)


def _resume(texts: list[str], overrides: list[Override], print_cfg: str | None, given: list[str]) -> int:
    """``common.resume=true``: the run folder's saved config plus the other job overrides (no composition).
    The reference's paths among the ``given`` overrides are mapped under the run's own env and preset."""
    from deltairis.config.reference_paths import rewrite_overrides

    run_dir = Path(_value(overrides, "hydra.run.dir") or Path.cwd()).resolve()
    saved = load_run_config(run_dir / "config" / "trainer.yaml")
    groups = [f"env={saved.env.name}", f"params={saved.agent.preset}"]
    texts = rewrite_overrides([*groups, *given])[len(groups) :]  # the group choices come out first, as given
    overrides = _parse_overrides(texts)
    # Hydra settings (output_subdir, job.chdir, ...) mean nothing for a resumed run
    skip = [o.is_hydra_override() or o.key_or_group == "common.resume" for o in overrides]
    rest = [text for text, skipped in zip(texts, skip) if not skipped]
    cfg = apply_overrides(saved, [*rest, "common.resume=true"])
    if print_cfg is not None:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    _train_in(typed_config(cfg), run_dir)
    return 0


def _start_distributed(args: argparse.Namespace, overrides: list[Override]) -> int | None:
    """Under torchrun: every rank joins the process group before anything else; returns the exit code of
    a rank > 0 (it printed nothing or followed rank 0's run), None for rank 0 and without torchrun.

    The backend follows ``common.device`` of the command line (NCCL for CUDA, gloo for CPU; ``auto``: CUDA
    when available), the collective timeout ``distributed.timeout_s`` of the command line; a follower's
    ``distributed.store_dir`` is its node's replica folder.
    """
    from deltairis import distributed as dist
    from deltairis.config.schema import DistributedConfig
    from deltairis.runtime import resolve_device

    world = dist.env_world()
    if world is None or world[1] == 1:
        return None
    if args.cfg or args.info or args.shell_completion or args.hydra_help:
        return None if world[0] == 0 else 0  # rank 0 prints, the others have nothing to do
    if args.multirun:
        raise ConfigError("a sweep (-m) cannot run under torchrun: start one torchrun per job")
    try:
        timeout = float(_value(overrides, "distributed.timeout_s") or DistributedConfig.timeout_s)
    except ValueError as exc:
        raise ConfigError(f"distributed.timeout_s must be a number ({exc})") from exc
    if timeout <= 0:
        raise ConfigError(f"distributed.timeout_s must be > 0, got {timeout}")
    ctx = dist.init(resolve_device(_value(overrides, "common.device") or "auto").type, timeout)
    return None if ctx.is_main else _follow(_value(overrides, "distributed.store_dir"))


def _follow(store_dir: str | None) -> int:
    """A rank > 0: everything (config, run folder path, checkpoint) comes from rank 0, except this
    node's replica folder when its own command line gives ``distributed.store_dir``."""
    from deltairis import distributed as dist
    from deltairis.train.trainer import follow

    rank = dist.current().rank
    logging.basicConfig(
        format=f"[%(asctime)s rank {rank} %(levelname)s %(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger().setLevel(logging.WARNING)  # quieter: rank 0 reports the run
    follow(store_dir or None)
    return 0


def _bare_cfg_means_job(argv: Sequence[str]) -> list[str]:
    """``--cfg`` / ``-c`` without a value means ``--cfg job`` (what the first CLI printed); Hydra's
    parser requires the value."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in ("--cfg", "-c") and (i + 1 == len(argv) or argv[i + 1] not in _CFG_CHOICES):
            out.append("job")
    return out


def _reference_paths(argv: list[str], texts: list[str]) -> tuple[list[str], list[str]]:
    """The command line with the reference's override paths (``params.training.learning_rate=...``)
    rewritten to ours (deltairis.config.reference_paths), before Hydra or the resume path reads them:
    the options, then the rewritten overrides."""
    from deltairis.config.reference_paths import rewrite_overrides

    notes: list[str] = []
    mapped = rewrite_overrides(texts, notes)
    for note in notes:
        print(f"deltairis-train: note: {note}", file=sys.stderr)
    options: list[str] = []
    todo = list(texts)
    for arg in argv:  # the overrides are argparse's positional arguments, in order
        if todo and arg == todo[0]:
            todo.pop(0)
        else:
            options.append(arg)
    return [*options, *mapped], mapped


def _parser() -> argparse.ArgumentParser:
    from hydra._internal.utils import get_args_parser  # the parser hydra.main uses

    parser = get_args_parser()
    parser.prog = "deltairis-train"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = _bare_cfg_means_job(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)  # an unknown option: argparse prints the usage, exits 2
    except SystemExit as exc:
        return _exit_code(exc)
    if args.help:
        print(f"{__doc__}\n{USAGE}")
        return 0
    try:
        given = list(args.overrides)
        argv, args.overrides = _reference_paths(argv, args.overrides)
        overrides = _parse_overrides(args.overrides)
        code = _start_distributed(args, overrides)
        if code is not None:
            return code
        if (_value(overrides, "common.resume") or "").lower() in _TRUE:
            if args.multirun:
                raise ConfigError(
                    "common.resume=true resumes one run folder; resume each job of a sweep with its own "
                    "scripts/resume.sh"
                )
            if not (args.info or args.shell_completion or args.hydra_help or args.cfg == "hydra"):
                return _resume(args.overrides, overrides, args.cfg, given)
        return _run_hydra(argv)
    except (Exception, KeyboardInterrupt) as exc:
        code = _report(exc)
        if code:
            return code
        raise
    finally:
        from deltairis import distributed as dist

        dist.shutdown()


if __name__ == "__main__":  # pragma: no cover
    # `python -m deltairis.cli.train`: run the package module's main, so that Hydra's task function is
    # `deltairis.cli.train.task` (importable by launchers that pickle it), not a copy in `__main__`.
    from deltairis.cli.train import main as _package_main

    sys.exit(_package_main())
