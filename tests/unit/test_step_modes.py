"""One metrics row per step from the two half-steps of `schedule.mode: alternating`
(run/steps.py `merge_half_steps`), against values worked out by hand."""

from typing import get_args

import pytest

from megatron_s2l.algo.schedule import ScheduleMode
from megatron_s2l.run.steps import STEP_MODES, merge_half_steps

NUM_GPUS = 0

EXPLORER = {
    "schedule/g_explorer": 6,
    "schedule/g_learner": 0,
    "rollout/explorer_samples": 48.0,
    "rollout/learner_samples": 0.0,
    "train/updates": 12.0,
    "train/skipped": 1.0,
    "loss/total": 1.0,
    "reward/mean": 0.5,
    "reward/explorer": 0.5,
    "adv/explorer_mean": 0.0,
    "data/position": 16,
    "time/train": 2.0,
    "train/lr": 1e-3,
    "rollout/explorer_weight_version": "default",
}
LEARNER = {
    "schedule/g_explorer": 0,
    "schedule/g_learner": 3,
    "rollout/explorer_samples": 0.0,
    "rollout/learner_samples": 24.0,
    "train/updates": 2.0,
    "train/skipped": 0.0,
    "loss/total": 4.0,
    "reward/mean": 0.2,
    "reward/learner": 0.2,
    "adv/learner_mean": 0.0,
    "data/position": 24,
    "time/train": 1.0,
    "train/lr": 2e-3,
    "rollout/learner_weight_version": "2-explorer",
}


def test_both_halves_make_one_row() -> None:
    row = merge_half_steps(EXPLORER, LEARNER)
    assert (row["schedule/g_explorer"], row["schedule/g_learner"]) == (6, 3)
    assert (row["rollout/explorer_samples"], row["rollout/learner_samples"]) == (48, 24)
    assert (row["train/updates"], row["train/updates_explorer"], row["train/skipped"]) == (14, 12, 1)
    assert row["loss/total"] == pytest.approx((12 * 1.0 + 2 * 4.0) / 14)  # over the step's updates
    assert row["reward/mean"] == pytest.approx((6 * 0.5 + 3 * 0.2) / 9)  # over the step's samples
    assert (row["reward/explorer"], row["reward/learner"]) == (0.5, 0.2)
    assert (row["adv/explorer_mean"], row["adv/learner_mean"]) == (0.0, 0.0)
    assert row["data/position"] == 24 and row["train/lr"] == 2e-3  # the later half's
    assert row["time/train"] == 3.0
    assert row["rollout/learner_weight_version"] == "2-explorer"
    assert row["rollout/explorer_weight_version"] == "default"


def test_one_half_alone() -> None:
    assert merge_half_steps(EXPLORER, None) == {**EXPLORER, "train/updates_explorer": 12.0}
    assert merge_half_steps(None, LEARNER) == {**LEARNER, "train/updates_explorer": 0.0}


def test_every_schedule_mode_has_its_step_function() -> None:
    assert set(STEP_MODES) == set(get_args(ScheduleMode))
