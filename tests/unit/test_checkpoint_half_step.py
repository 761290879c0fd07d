"""Checkpoints between the two half-steps of `schedule.mode: alternating` (run/checkpoint.py): their
place in the run's order, which step they hold complete, and that pruning keeps one only while it is
the newest (a later complete checkpoint supersedes it), over a run's saves in a row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from megatron_s2l.run.checkpoint import (
    checkpoint_dir,
    checkpoint_progress,
    checkpoints_to_prune,
    completed_step,
)

NUM_GPUS = 0


def test_names_order_and_completed_step(tmp_path: Path) -> None:
    half = checkpoint_dir(tmp_path, 9, explorer_half=True)
    assert half.name == "step_000009_explorer"
    names = ["step_000009", "step_000009_explorer", "step_000008", "step_1000000", "step_999999_explorer"]
    ordered = sorted((tmp_path / n for n in names), key=checkpoint_progress)
    assert [p.name for p in ordered] == [
        "step_000008",
        "step_000009_explorer",
        "step_000009",
        "step_999999_explorer",
        "step_1000000",
    ]
    assert completed_step(half) == 8 and completed_step(checkpoint_dir(tmp_path, 9)) == 9
    with pytest.raises(ValueError, match="not a step_NNNNNN"):
        checkpoint_progress(tmp_path / "step_000009_learner")


def _save(checkpoints: Path, step: int, explorer_half: bool = False) -> None:
    directory = checkpoint_dir(checkpoints, step, explorer_half)
    (directory / "learner").mkdir(parents=True)
    (directory / "loop.pt").write_bytes(b"state")


@pytest.mark.parametrize(
    ("keep_last", "keep_steps", "survivors"),
    [
        (2, (), ["step_000009", "step_000010"]),
        (1, (4,), ["step_000004", "step_000010"]),
        (0, (), [f"step_{s:06d}" for s in range(1, 11)]),  # keep all whole steps, no stale half
    ],
)
def test_a_half_step_checkpoint_lives_until_the_next_save(
    tmp_path: Path, keep_last: int, keep_steps: tuple, survivors: list
) -> None:
    def whole_steps() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("_explorer"))

    for step in range(1, 11):
        for half in (True, False):
            before = whole_steps()
            _save(tmp_path, step, explorer_half=half)
            for old in checkpoints_to_prune(tmp_path, keep_last, keep_steps):
                shutil.rmtree(old)
            halves = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith("_explorer"))
            if half:  # the newest: kept, and it pushes no whole step out
                assert halves == [f"step_{step:06d}_explorer"] and whole_steps() == before
            else:  # superseded by the whole step
                assert halves == []
    assert sorted(p.name for p in tmp_path.iterdir()) == survivors
