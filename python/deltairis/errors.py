"""The package's one error hierarchy.

Every error delta-iris raises on purpose derives from :class:`DeltaIrisError`, and also from the
built-in exception a caller would naturally catch (``ValueError`` for bad settings and bad files,
``OSError`` for storage, ``RuntimeError`` for a run that cannot go on), so ``except ValueError`` keeps
working where it did. This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations


class DeltaIrisError(Exception):
    """Base class of the errors delta-iris raises on purpose; the message names the problem."""


class ConfigError(DeltaIrisError, ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class CheckpointError(DeltaIrisError, ValueError):
    """A checkpoint that cannot be loaded (corrupt, wrong layout, mismatched shapes)."""


class CorruptCheckpointError(CheckpointError, RuntimeError):
    """A checkpoint file exists but cannot be read, or the files of a checkpoint set disagree."""


class CheckpointWriteError(DeltaIrisError, OSError):
    """A checkpoint could not be written (full disk, I/O error, read-only folder); the previous checkpoint
    set is intact."""


class ResumeError(DeltaIrisError, RuntimeError):
    """A run cannot be resumed (missing files, or a config that changes the model)."""


class Preempted(DeltaIrisError):
    """The run stopped on SIGTERM/SIGINT after writing a mid-epoch checkpoint; ``scripts/resume.sh`` goes
    on from there. ``deltairis-train`` exits with :data:`deltairis.train.preemption.PREEMPTED_EXIT_CODE`."""


class NonFiniteError(DeltaIrisError, RuntimeError):
    """Training produced non-finite losses, gradients or weights too often to go on."""


class RunFolderBusyError(DeltaIrisError, RuntimeError):
    """Another process is already training in this run folder."""


class DistributedError(DeltaIrisError, RuntimeError):
    """A collective of a multi-process run failed or timed out; the message names this rank (and the
    missing ones when known)."""


class ReplayStoreError(DeltaIrisError, OSError):
    """A replay store could not be written or read (full disk, read-only directory, corrupt index...)."""


class ReportError(DeltaIrisError, ValueError):
    """An evaluation report cannot be made from the given files."""


__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigError",
    "CorruptCheckpointError",
    "DeltaIrisError",
    "DistributedError",
    "NonFiniteError",
    "Preempted",
    "ReplayStoreError",
    "ReportError",
    "ResumeError",
    "RunFolderBusyError",
]
