"""Stopping a run cleanly on SIGTERM/SIGINT (cluster preemption, Ctrl-C).

While :class:`StopSignals` is active, SIGTERM and SIGINT only raise a flag: the trainer finishes the
step it is in (a gradient step, a collection step, or abandons a test episode, which the evaluation
replays from its start), writes a mid-epoch checkpoint that records where it stopped, and exits with
:data:`PREEMPTED_EXIT_CODE`. Further signals while it does so are recorded and change nothing, so a
second SIGTERM cannot tear the checkpoint (which is atomic anyway).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

#: ``deltairis-train``'s exit status after a preemption checkpoint (EX_TEMPFAIL: "try again").
PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager: SIGTERM/SIGINT set :attr:`received` instead of ending the process.

    Outside the main thread (where Python cannot install handlers) it does nothing and never asks to stop.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            logger.warning("%s received: finishing the current step, then writing a checkpoint", name)
            self.received = name
        else:
            logger.warning("%s received again: already stopping (the checkpoint is being written)", name)

    def __call__(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


__all__ = ["PREEMPTED_EXIT_CODE", "StopSignals"]
