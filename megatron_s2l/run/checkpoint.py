"""Run checkpoints: the learner's state plus the driver's loop state, made durable atomically.

    checkpoints/step_000008/learner/...   Learner.save (model, optimizer, scheduler, step)
    checkpoints/step_000008/loop.pt       step, data order position, RNG states
    checkpoints/latest                    the name of the last complete checkpoint

(`checkpoints/` is `RunDir.checkpoints`.)

`latest` is replaced (atomic rename) only after a checkpoint is complete, so a run killed while
saving resumes from the previous one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

LATEST = "latest"


def checkpoint_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step_{step:06d}"


def save_run_checkpoint(
    checkpoints: Path, step: int, learner, loop_state: dict[str, Any] | None, keep_last: int
) -> Path:
    """Collective: every learner rank saves its learner shard; rank 0 adds the loop state and
    publishes the checkpoint as `latest`, then prunes all but the last `keep_last`."""
    directory = checkpoint_dir(checkpoints, step)
    learner.save(directory / "learner")
    if dist.get_rank() == 0:
        tmp = directory / "loop.pt.tmp"
        torch.save({"step": step, **(loop_state or {})}, tmp)
        os.replace(tmp, directory / "loop.pt")
        pointer = checkpoints / (LATEST + ".tmp")
        pointer.write_text(directory.name)
        os.replace(pointer, checkpoints / LATEST)
        kept = sorted(p for p in checkpoints.glob("step_*") if p.is_dir())
        for old in kept[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return directory


def latest_checkpoint(checkpoints: Path) -> Path | None:
    pointer = checkpoints / LATEST
    return checkpoints / pointer.read_text().strip() if pointer.is_file() else None


def load_run_checkpoint(directory: Path, learner) -> dict[str, Any]:
    """Collective: restore the learner; returns the loop state (step, driver state)."""
    learner.load(directory / "learner")
    return torch.load(directory / "loop.pt", weights_only=False)
