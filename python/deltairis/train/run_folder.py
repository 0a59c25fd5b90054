"""The run folder of a training run: its layout, scripts, and reading its checkpoint set back.

Run folder (``outputs/YYYY-MM-DD/hh-mm-ss/``)::

    checkpoints/last.pt            agent weights + model config (deltairis.load_agent)
    checkpoints/optimizer.pt       the three optimizers and the epoch
    checkpoints/trainer_state.pt   epoch, seed, RNG states, collector (envs, running episodes), the
                                   train store's committed index (dataset + visit counts)
    checkpoints/dataset/{train,test}   the replay stores
    config/trainer.yaml            the resolved configuration (what scripts/resume.sh uses)
    media/episodes/{train,test}    a few episodes per epoch (NPZ; deltairis-play -e makes GIFs)
    media/reconstructions          original frames above their tokenizer reconstructions (PNG)
    scripts/resume.sh, play.sh     run deltairis.cli.train / .play with the interpreter that created the run
    metrics.jsonl, tensorboard/, train.log, wandb/ (when enabled)

Consistency: at the end of an epoch the stores are committed, then the checkpoint set (including a
copy of the train store's committed index) is written atomically. A crash between the two leaves the
store ahead of the checkpoint; resuming writes the saved index back (:func:`restore_store_index`),
which rolls the store (episodes, steps and visit counts) back to the checkpointed epoch.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from deltairis.agent import CHECKPOINT_VERSION, Agent
from deltairis.checkpoint import atomic_write_bytes, recover_checkpoint_set
from deltairis.config.models import AgentConfig
from deltairis.data.replay_store import INDEX_NAME
from deltairis.errors import CorruptCheckpointError, ResumeError, RunFolderBusyError
from deltairis.train.checkpointing import read_checkpoint_members
from deltairis.train.configuration import diff_dicts
from deltairis.train.state import STATE_VERSION, CheckpointSet

logger = logging.getLogger(__name__)

_SCRIPT_BODY = """set -euo pipefail
PYTHON={{python}}
if [ ! -x "$PYTHON" ]; then
  echo "{name}: $PYTHON (the Python that created this run) is missing; trying python3 from PATH" >&2
  PYTHON=python3
fi
cd "$(dirname "$0")/.."
exec "$PYTHON" -m {command} "$@"
"""


def _script(name: str, comment: str, command: str) -> str:
    """A run-folder script (format it with ``python=``): header comment, then run ``command`` with the
    interpreter that created the run."""
    return "#!/usr/bin/env bash\n" + comment + _SCRIPT_BODY.format(name=name, command=command)


RESUME_SH = _script(
    "resume.sh",
    """# Resume this run from its last complete epoch. Extra key=value overrides are passed on
# (e.g. common.epochs=2000 to train longer); a change of the model is refused.
# Same as `deltairis-train hydra.run.dir=RUN common.resume=true`, but with the Python that created the
# run, so no activated environment is needed; edit PYTHON if that environment moved.
""",
    'deltairis.cli.train hydra.run.dir="$PWD" common.resume=true',
)

PLAY_SH = _script(
    "play.sh",
    """# Watch the agent of this run (see `deltairis-play --help`):
#   ./scripts/play.sh       agent in the real environment      ./scripts/play.sh -w   you/random in the world model
#   ./scripts/play.sh -a    agent in the world model           ./scripts/play.sh -e   episodes of media/episodes
#   add -h for a header with step, reward and return. Frames are written as GIFs to media/play/.
# It runs the Python that created the run, so no activated environment is needed; edit PYTHON if it moved.
""",
    'deltairis.cli.play --run-dir "$PWD"',
)


LOCK_NAME = ".lock"


class RunFolderLock:
    """One writer per run folder: an exclusive ``flock`` on ``RUN/.lock`` held while a trainer runs.

    The lock file holds the pid of its holder (for the error message); the kernel drops the lock when
    the process ends, however it ends, so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderBusyError(
                f"{self.path.parent} is in use by another training process (pid {holder}); "
                "wait for it to finish, stop it, or choose another run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def make_layout(run_dir: Path) -> None:
    """Create the run folder's sub-folders and (re)write its scripts."""
    for sub in ("checkpoints/dataset", "config", "media/episodes", "media/reconstructions", "scripts"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    for name, text in (("resume.sh", RESUME_SH), ("play.sh", PLAY_SH)):
        path = run_dir / "scripts" / name
        atomic_write_bytes(path, text.format(python=shlex.quote(sys.executable)).encode())
        path.chmod(0o755)


def new_run_dir(base: Path | str = "outputs") -> Path:
    """``outputs/YYYY-MM-DD/hh-mm-ss`` (local time, like Hydra), made unique if it already exists."""
    now = time.localtime()
    path = Path(base) / time.strftime("%Y-%m-%d", now) / time.strftime("%H-%M-%S", now)
    candidate, k = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}_{k}")
        k += 1
    return candidate


def read_checkpoint(run_dir: Path, trust: bool = False) -> CheckpointSet:
    """The checkpoint set of a run folder (trainer state, agent, optimizers), recovered after a crash
    between its two phases, read as data and checked to be one epoch's (``trust``: an earlier version's
    set is loaded once and rewritten safely, see :func:`deltairis.train.checkpointing.read_checkpoint_members`)."""
    ckpt_dir = run_dir / "checkpoints"
    if not (ckpt_dir / "trainer_state.pt").exists() and not (ckpt_dir / ".journal.json").exists():
        raise ResumeError(f"nothing to resume in {run_dir}: no checkpoints/trainer_state.pt")
    recover_checkpoint_set(ckpt_dir)
    state, agent, optim = read_checkpoint_members(ckpt_dir, trust)
    for name, payload, version in (
        ("trainer_state.pt", state, STATE_VERSION),
        ("last.pt", agent, CHECKPOINT_VERSION),
        ("optimizer.pt", optim, STATE_VERSION),
    ):
        if not isinstance(payload, dict):
            raise CorruptCheckpointError(
                f"{ckpt_dir / name} holds a {type(payload).__name__}, not a checkpoint"
            )
        found = payload.get("version", version)  # optimizer files of older runs carry none
        if not isinstance(found, int) or found > version:
            raise CorruptCheckpointError(
                f"{ckpt_dir / name} has format version {found!r}, newer than this delta-iris reads ({version}); "
                "upgrade delta-iris to resume this run (the file was left untouched)"
            )
    epochs = {
        int(state.get("epoch", -1)),
        int(agent.get("epoch", state.get("epoch", -1))),
        int(optim.get("epoch", -1)),
    }
    if len(epochs) != 1:
        raise CorruptCheckpointError(
            f"checkpoint files in {ckpt_dir} are from different epochs {sorted(epochs)}; they were left untouched"
        )
    if "state_dict" not in agent or "config" not in agent:
        raise CorruptCheckpointError(f"{ckpt_dir / 'last.pt'} is not a delta-iris agent checkpoint")
    return CheckpointSet.from_members(state, agent, optim)


def check_same_model(saved: dict[str, Any], agent_cfg: AgentConfig) -> None:
    """Refuse a resume whose config changes the shape of a parameter; warn about other model changes."""
    changes = diff_dicts(saved["config"], agent_cfg.to_dict())
    if not changes:
        return
    fresh = Agent(agent_cfg).state_dict()  # only built when the model settings changed
    old = saved["state_dict"]
    shape_changes = [
        f"{k}: {tuple(old[k].shape) if k in old else None} -> {tuple(v.shape)}"
        for k, v in fresh.items()
        if k not in old or tuple(old[k].shape) != tuple(v.shape)
    ] + [f"{k}: removed" for k in old if k not in fresh]
    if shape_changes:
        raise ResumeError(
            "resume refused: the configuration changes the model's shape ("
            + "; ".join(changes[:10])
            + "). Parameters affected: "
            + "; ".join(shape_changes[:10])
            + ". Resume with the run's own config/trainer.yaml or start a new run."
        )
    logger.warning("resuming with changed model settings (same shapes): %s", "; ".join(changes))


def restore_store_index(directory: Path, payload: bytes | None) -> None:
    """Write a checkpointed replay-store index back, rolling the store back to the checkpointed epoch."""
    path = directory / INDEX_NAME
    if payload is None:
        if path.exists():  # the store was created after the checkpoint: roll it back to empty
            path.unlink()
        return
    if not path.exists() or path.read_bytes() != payload:
        logger.warning("rolling the replay store %s back to the checkpointed epoch", directory)
        atomic_write_bytes(path, payload)


__all__ = [
    "LOCK_NAME",
    "PLAY_SH",
    "RESUME_SH",
    "STATE_VERSION",
    "RunFolderLock",
    "check_same_model",
    "make_layout",
    "new_run_dir",
    "read_checkpoint",
    "restore_store_index",
]
