"""Stopping a run early on SIGTERM (SLURM's warning before the time limit, `scancel`, `docker stop`):
the trainer finishes the step it is in, writes a checkpoint and exits with STOPPED_EXIT_CODE, and
`s2l train --resume RUN_DIR` (or `s2l launch --resume RUN_DIR`, or a requeued job) continues from
the next step.

The ranks are SPMD: each records the signal in its own process, and at every step boundary rank 0's
record is broadcast, so that every rank stops after the same step (a rank that stopped alone would
leave the others waiting in a collective).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import torch.distributed as dist

from megatron_s2l.run.checkpoint import completed_step, latest_checkpoint
from megatron_s2l.run.rundir import RunDir

STOPPED_EXIT_CODE = 75
"""Exit status of `s2l train` / `s2l launch` stopped by SIGTERM with a checkpoint to resume from
(EX_TEMPFAIL of sysexits.h: a temporary failure, worth trying again)."""

logger = logging.getLogger(__name__)


class StopSignal:
    """Records SIGTERM in this process from `install()` until `restore()`."""

    def __init__(self) -> None:
        self.received = False
        self._previous: signal.Handlers | None = None

    @classmethod
    def install(cls) -> StopSignal:
        stop = cls()
        stop._previous = signal.signal(signal.SIGTERM, stop._record)
        return stop

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            logger.warning("SIGTERM: the run stops after this step, with a checkpoint")
        self.received = True

    def agreed(self, step: int) -> bool:
        """Collective, at a step boundary: whether rank 0 has received SIGTERM (then every rank stops
        after `step`)."""
        holder = [self.received]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(holder, src=0)
        if holder[0] and (not dist.is_initialized() or dist.get_rank() == 0):
            logger.warning("stopping after step %d (SIGTERM); resume with --resume", step)
        return bool(holder[0])


@contextmanager
def forwarding_sigterm_to_children() -> Iterator[None]:
    """While ranks run as this process's children (`s2l train` without torchrun), pass SIGTERM on to
    them instead of dying: they stop at the next step boundary and this process returns."""

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_at(run: RunDir, steps: int) -> int | None:
    """The step of the run's latest checkpoint when the run ended before its last step (a run that
    stopped on SIGTERM, resumable), else None (finished, or no checkpoint to resume from)."""
    try:
        latest = latest_checkpoint(run.checkpoints)
    except Exception:  # a broken pointer: nothing this can resume from
        return None
    if latest is None:
        return None
    step = completed_step(latest)
    return step if step < steps else None
