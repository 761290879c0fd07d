"""Where a run is: each step's phases timed into its metrics, and the current step and phase in the
run directory's `status.json` (written by the driver when a phase starts). An operator reads it to
see what a run is doing; the fault tests read it to kill the trainer inside a chosen phase."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Phases:
    def __init__(self, status_file: Path | None) -> None:
        self.status_file = status_file
        """None on ranks other than the driver: they time their phases but write nothing."""

    def enter(self, step: int, phase: str) -> None:
        """Record that `phase` of `step` starts now (atomically: a reader never sees half a file)."""
        if self.status_file is None:
            return
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "phase": phase, "since": time.time()}))
        os.replace(tmp, self.status_file)

    @contextmanager
    def timed(self, step: int, phase: str, metrics: dict[str, Any]) -> Iterator[None]:
        """`enter` the phase, and add its wall time to `metrics["time/<phase>"]`."""
        self.enter(step, phase)
        started = time.perf_counter()
        yield
        metrics[f"time/{phase}"] = time.perf_counter() - started


def read_status(status_file: Path) -> dict[str, Any] | None:
    """The last phase a run entered, or None before its first."""
    try:
        return json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
