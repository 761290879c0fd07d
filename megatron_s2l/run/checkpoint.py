"""Run checkpoints: the learner's state plus the driver's loop state, made durable atomically.

    checkpoints/step_000008/learner/...   Learner.save (model, optimizer, scheduler, step)
    checkpoints/step_000008/loop.pt       step, data order position, RNG states
    checkpoints/step_000009_explorer/...  after the explorer half-step of step 9 (schedule.mode
                                          alternating): loop.pt has step 8 and `explorer_half`
    checkpoints/latest                    the name of the last complete checkpoint

(`checkpoints/` is `RunDir.checkpoints`.)

`latest` is replaced (atomic rename) only after a checkpoint is complete, so a run killed while
saving resumes from the previous one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_s2l.learner.checkpoint import CheckpointError, load_state_file
from megatron_s2l.learner.parallel import any_rank

LATEST = "latest"
_STEP_NAME = re.compile(r"step_([0-9]{6,})(_explorer)?")
_EXPLORER_HALF = "_explorer"
logger = logging.getLogger(__name__)


def checkpoint_dir(checkpoints: Path, step: int, explorer_half: bool = False) -> Path:
    """`step`'s checkpoint, or (`explorer_half`) the one between its two half-steps."""
    return checkpoints / (f"step_{step:06d}" + (_EXPLORER_HALF if explorer_half else ""))


def checkpoint_progress(directory: Path) -> tuple[int, int]:
    """How far the run had got: (step, 0) after step's explorer half-step, (step, 1) after the
    whole step (an order: step_000009_explorer comes after step_000008, before step_000009)."""
    match = _STEP_NAME.fullmatch(directory.name)
    if match is None:
        raise ValueError(f"{directory}: not a step_NNNNNN checkpoint directory")
    return int(match.group(1)), 0 if match.group(2) else 1


def completed_step(directory: Path) -> int:
    """The last step a checkpoint holds complete (the step before a half-step checkpoint's)."""
    step, whole = checkpoint_progress(directory)
    return step - 1 + whole


def checkpoints_to_prune(checkpoints: Path, keep_last: int, keep_steps: Collection[int] = ()) -> list[Path]:
    """The step directories to delete: all but the newest `keep_last` complete checkpoints (with
    `loop.pt`; ordered by step number, not name: step_1000000 is newer than step_999999) and those
    of `keep_steps`. A partial one (a save that failed) does not count as kept and goes too. Nothing
    when `keep_last` is 0 (keep all). A half-step checkpoint (`step_NNNNNN_explorer`) is kept only
    while it is the newest complete one, and does not count in `keep_last`. Only these directories
    are considered."""
    saved = sorted(
        (p for p in checkpoints.iterdir() if p.is_dir() and _STEP_NAME.fullmatch(p.name)),
        key=checkpoint_progress,
    )
    complete = [p for p in saved if (p / "loop.pt").is_file()]
    whole = [p for p in saved if checkpoint_progress(p)[1]]
    keep = set(complete[-1:])
    if keep_last == 0:
        keep.update(whole)
    else:
        keep.update([p for p in complete if p in whole][-keep_last:])
        keep.update(p for p in whole if checkpoint_progress(p)[0] in set(keep_steps))
    return [p for p in saved if p not in keep]


def save_run_checkpoint(
    checkpoints: Path,
    step: int,
    learner,
    loop_state: dict[str, Any] | None,
    keep_last: int,
    keep_steps: Collection[int] = (),
    *,
    explorer_half: bool = False,
) -> Path:
    """Collective: every learner rank saves its learner shard; rank 0 adds the loop state and
    publishes the checkpoint as `latest`, then prunes all but the last `keep_last` (0: none) and
    those of `keep_steps` (config.CheckpointConfig). `explorer_half`: saved between the two
    half-steps of `step` (loop.pt's `step` is then the step before, the last one complete)."""
    directory = checkpoint_dir(checkpoints, step, explorer_half)
    learner.save(directory / "learner")
    if dist.get_rank() == 0:
        tmp = directory / "loop.pt.tmp"
        torch.save({"step": step - 1 if explorer_half else step, **(loop_state or {})}, tmp)
        os.replace(tmp, directory / "loop.pt")
        pointer = checkpoints / (LATEST + ".tmp")
        pointer.write_text(directory.name)
        os.replace(pointer, checkpoints / LATEST)
        for old in checkpoints_to_prune(checkpoints, keep_last, keep_steps):
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return directory


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint `latest` names; it must name a `step_NNNNNN` directory inside `checkpoints`
    (an absolute path or `..` in a copied run directory would redirect the resume elsewhere)."""
    pointer = checkpoints / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not _STEP_NAME.fullmatch(name) or not (checkpoints / name).is_dir():
        raise CheckpointError(
            f"{pointer} names {name[:80]!r}: not a step_NNNNNN checkpoint directory of {checkpoints}"
        )
    return checkpoints / name


def load_run_checkpoint(directory: Path, learner) -> dict[str, Any]:
    """Collective: restore the learner; returns the loop state (step, driver state). Raises
    CheckpointError on every rank when any rank cannot read its part."""
    learner.load(directory / "learner")
    error = None
    try:
        loop = load_state_file(directory / "loop.pt")
    except Exception as e:  # truncated, corrupted, missing or refused (code in the pickle)
        error, loop = e, {}
    if any_rank(error is not None):
        raise CheckpointError(f"{directory / 'loop.pt'}: unreadable ({error or 'on another rank'})")
    return loop


def load_latest_run_checkpoint(checkpoints: Path, learner) -> dict[str, Any] | None:
    """Collective: restore the newest checkpoint that loads, newest first (`latest`, then the older
    ones `keep_last` kept); a truncated or corrupted one is reported, naming the file, and skipped.
    None when there is none; CheckpointError when none of them loads."""
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        return None
    older = sorted(
        (
            p
            for p in checkpoints.glob("step_*")
            if p.is_dir()
            and _STEP_NAME.fullmatch(p.name)
            and checkpoint_progress(p) < checkpoint_progress(latest)
        ),
        key=checkpoint_progress,
        reverse=True,
    )
    failures = []
    for directory in [latest, *older]:
        try:
            loop = load_run_checkpoint(directory, learner)
            logger.info("resuming from %s (after step %d)", directory, loop["step"])
            return loop
        except CheckpointError as error:
            logger.error("skipping checkpoint %s: %s", directory, error)
            failures.append(str(error))
    raise CheckpointError(f"no checkpoint in {checkpoints} loads:\n" + "\n".join(failures))
