"""Graceful stop on SIGTERM (Kubernetes preemption, `kill`) and SIGINT (Ctrl-C).

The handler only records the signal; the training loop asks `stop_agreed()` after every
step (every 10th under a multi-process launch). Every rank must take the same decision at
the same step (the checkpoint is a collective), so the local flags are gathered: if any
rank was signalled, all stop after that step, save a checkpoint and exit with 128 + the
signal number (143 for SIGTERM), which tells a Job the run did not finish. `accelerate launch` forwards SIGTERM to
its workers and gives them 30 s; a checkpoint of these models takes well under a second.
"""

from __future__ import annotations

import signal
import threading

import torch

from job.core.errors import JobError


class Preempted(JobError):
    """The run stopped early on a signal, after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Records SIGTERM/SIGINT while active (a context manager); restores the old handlers."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    CHECK_EVERY = 10

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _record(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def stop_agreed(self, acc, step: int) -> int:
        """The signal number to stop on (the same on every rank), or 0 to go on.

        With several processes the flags are compared every CHECK_EVERY steps only: the
        comparison is a collective that waits for the device, and a stop a few steps later
        is still well inside the grace period."""
        if acc.num_processes == 1:
            return self.signum
        if step % self.CHECK_EVERY:
            return 0
        flags = acc.gather(torch.tensor([self.signum], device=acc.device))  # one small collective a step
        return int(flags.max().item())
