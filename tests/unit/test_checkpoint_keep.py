"""Which run checkpoints `checkpoint.keep_last` / `keep_steps` delete (run/checkpoint.py), against
the expected survivors written out by hand, over many saves in a row as training makes them (each
save is followed by a prune), and the config checks of both fields."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from megatron_s2l.config import CheckpointConfig, load_config
from megatron_s2l.configio import ConfigError
from megatron_s2l.run.checkpoint import checkpoint_dir, checkpoints_to_prune

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]


def save(checkpoints: Path, step: int, *, complete: bool = True) -> None:
    """What save_run_checkpoint leaves on disk (a failed save: no loop.pt)."""
    directory = checkpoint_dir(checkpoints, step)
    (directory / "learner").mkdir(parents=True, exist_ok=True)
    if complete:
        (directory / "loop.pt").write_bytes(b"state")


def save_and_prune(checkpoints: Path, step: int, keep_last: int, keep_steps: tuple[int, ...] = ()) -> None:
    save(checkpoints, step)
    for old in checkpoints_to_prune(checkpoints, keep_last, keep_steps):
        shutil.rmtree(old)


def on_disk(checkpoints: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step_")) for p in checkpoints.glob("step_*"))


@pytest.mark.parametrize(
    ("keep_last", "keep_steps", "survivors"),
    [
        (2, (), [19, 20]),
        (1, (), [20]),
        (0, (), list(range(1, 21))),  # keep all
        (2, (4, 8, 16), [4, 8, 16, 19, 20]),
        (1, (4, 20), [4, 20]),  # a kept step that is also the newest
        (0, (4,), list(range(1, 21))),
    ],
)
def test_many_saves_in_a_row(tmp_path: Path, keep_last: int, keep_steps: tuple, survivors: list) -> None:
    """20 saves, 10 to 20 times keep_last, each pruned right after it is saved; checked after every
    save, so a prune that works once but not on the next save fails too."""
    for step in range(1, 21):
        save_and_prune(tmp_path, step, keep_last, keep_steps)
        newest = range(max(1, step - keep_last + 1) if keep_last else 1, step + 1)
        expected = sorted({*newest, *(s for s in keep_steps if s <= step)})
        assert on_disk(tmp_path) == expected, step
    assert on_disk(tmp_path) == survivors
    # The same prune again changes nothing.
    assert checkpoints_to_prune(tmp_path, keep_last, keep_steps) == []


def test_order_is_by_step_number_not_name(tmp_path: Path) -> None:
    """step_1000000 (7 digits) sorts before step_999999 by name; it is the newer one."""
    for step in (999_998, 999_999, 1_000_000):
        save(tmp_path, step)
    assert [p.name for p in checkpoints_to_prune(tmp_path, 2, ())] == ["step_999998"]


def test_a_failed_save_does_not_count_as_kept(tmp_path: Path) -> None:
    """A save that failed midway (no loop.pt) cannot be restored: it must not take the place of a
    complete checkpoint among the newest keep_last, and it is deleted."""
    save(tmp_path, 1)
    save(tmp_path, 2)
    save(tmp_path, 3, complete=False)  # the disk filled up
    save_and_prune(tmp_path, 4, keep_last=2)
    assert on_disk(tmp_path) == [2, 4]


def test_other_entries_are_left_alone(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save(tmp_path, step)
    (tmp_path / "latest").write_text("step_000003")
    (tmp_path / "step_notes").mkdir()
    assert [p.name for p in checkpoints_to_prune(tmp_path, 1)] == ["step_000001", "step_000002"]


def test_config_fields() -> None:
    assert CheckpointConfig(keep_last=0).keep_last == 0
    with pytest.raises(ValueError, match="keep_last must be >= 0"):
        CheckpointConfig(keep_last=-1)
    with pytest.raises(ValueError, match="keep_steps must be steps >= 1"):
        CheckpointConfig(keep_steps=[0, 4])


def test_keep_steps_the_run_never_saves_are_refused() -> None:
    config = str(ROOT / "yaml" / "demo-cpu.yaml")
    cfg = load_config(
        config, ["schedule.steps=16", "checkpoint.every_steps=4", "checkpoint.keep_steps=[4,8,16]"]
    )
    assert cfg.checkpoint.keep_steps == [4, 8, 16]
    load_config(config, ["schedule.steps=16", "checkpoint.every_steps=0", "checkpoint.keep_steps=[16]"])
    with pytest.raises(ConfigError, match=r"checkpoint.keep_steps \[6\]: no checkpoint is saved"):
        load_config(config, ["schedule.steps=16", "checkpoint.every_steps=4", "checkpoint.keep_steps=[4,6]"])
