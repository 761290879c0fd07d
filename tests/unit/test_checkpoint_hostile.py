"""Checkpoints from a run directory that may not be ours are loaded without running code from them:
a pickle whose `__reduce__` calls a function is refused (nothing runs), and the `latest` pointer
must name a `step_NNNNNN` directory of the run (no path elsewhere)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from megatron_s2l.learner.checkpoint import CheckpointError, load_state_file
from megatron_s2l.run.checkpoint import LATEST, latest_checkpoint


class _WritesMarker:
    """Unpickling this calls `os.system`, as a hostile checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"step": 3, "payload": _WritesMarker(marker), "weights": torch.ones(2)}, path)
    return path


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = _hostile_checkpoint(tmp_path / "loop.pt", marker)
    # The reference: an unrestricted load really would run it (the test's payload works).
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_state_file(path)
    assert not marker.exists()


def test_plain_state_still_loads(tmp_path) -> None:
    import random

    state = {
        "step": 4,
        "python_rng": random.getstate(),
        "torch_rng": torch.get_rng_state(),
        "prompts": {"epoch": 1, "order": [3, 1, 2], "position": 2},
        "model": {"w": torch.randn(3, 2, dtype=torch.bfloat16)},
    }
    torch.save(state, tmp_path / "state.pt")
    loaded = load_state_file(tmp_path / "state.pt")
    assert loaded["python_rng"] == state["python_rng"] and loaded["prompts"] == state["prompts"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])


@pytest.mark.parametrize(
    "pointer", ["/etc", "../other-run/checkpoints/step_000001", "step_1", "step_000002/.."]
)
def test_latest_must_name_a_step_directory_of_the_run(tmp_path, pointer) -> None:
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step_000001").mkdir(parents=True)
    (tmp_path / "other-run" / "checkpoints" / "step_000001").mkdir(parents=True)
    (checkpoints / LATEST).write_text(pointer)
    with pytest.raises(CheckpointError, match="not a step_NNNNNN checkpoint directory"):
        latest_checkpoint(checkpoints)


def test_latest_naming_a_step_directory_resolves(tmp_path) -> None:
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step_000001").mkdir(parents=True)
    assert latest_checkpoint(checkpoints) is None
    (checkpoints / LATEST).write_text("step_000001\n")
    assert latest_checkpoint(checkpoints) == checkpoints / "step_000001"
