"""The counts of `schedule.mode: alternating` (the authors' released scripts) against the numbers
their issue states and the ones worked out by hand: both counts rounded up (`schedule.rounding:
ceil-both`), pure half-steps, and explorer mini-batches that count samples
(`algo.explorer_mini_batch: samples`)."""

import pytest

from megatron_s2l.algo import (
    AlgoConfig,
    ScheduleConfig,
    StepRollout,
    ppo_mini_batch_rows,
    s2l_split,
    step_rollouts,
)

NUM_GPUS = 0


def test_ceil_both_gives_17_samples_per_prompt_at_steps_2_to_7_of_the_8b_run() -> None:
    """G = 16, T_mix = 8: the released scripts' groups, by hand (ceil(alpha G), ceil((1 - alpha) G))."""
    expected = [(16, 0), (14, 3), (12, 5), (10, 7), (7, 10), (5, 12), (3, 14), (0, 16), (0, 16)]
    assert [s2l_split(step, 8, 16, "ceil-both") for step in range(1, 10)] == expected
    assert [sum(s2l_split(step, 8, 16, "ceil-both")) for step in range(1, 9)] == [16] + [17] * 6 + [16]
    # exact (Algorithm 1, today's default) keeps every group at G.
    assert [s2l_split(step, 8, 16) for step in range(1, 9)] == [
        (16, 0),
        (14, 2),
        (12, 4),
        (10, 6),
        (7, 9),
        (5, 11),
        (3, 13),
        (0, 16),
    ]
    # Integers: 1 - 2/3 of 9 is 3 exactly (3.0000000000000004 in floats would round up to 4).
    assert s2l_split(2, 4, 9, "ceil-both") == (6, 3)


def test_bad_rounding_is_an_error() -> None:
    with pytest.raises(ValueError, match="rounding"):
        s2l_split(1, 4, 8, "floor")
    with pytest.raises(ValueError, match="rounding"):
        ScheduleConfig(rounding="floor")
    with pytest.raises(ValueError, match="mode"):
        ScheduleConfig(mode="interleaved")


def test_step_rollouts_by_mode() -> None:
    alternating = ScheduleConfig(t_mix=4, group_size=8, mode="alternating", rounding="ceil-both")
    assert step_rollouts(1, alternating) == [StepRollout(1, "explorer", 8, 0)]  # G_s = 0: no learner half
    assert step_rollouts(2, alternating) == [
        StepRollout(2, "explorer", 6, 0),
        StepRollout(2, "learner", 0, 3),
    ]
    assert step_rollouts(5, alternating) == [StepRollout(5, "learner", 0, 8)]  # after T_mix: plain GRPO
    combined = ScheduleConfig(t_mix=4, group_size=8)
    assert step_rollouts(2, combined) == [StepRollout(2, "combined", 6, 2)]
    assert step_rollouts(5, combined) == [StepRollout(5, "combined", 0, 8)]


def _updates(algo: AlgoConfig, rollout: StepRollout, prompts: int, seed: int = 0) -> int:
    group = rollout.g_explorer + rollout.g_learner
    rows = ppo_mini_batch_rows(
        prompts,
        group,
        algo.ppo_mini_batch_prompts,
        epochs=algo.ppo_epochs,
        seed=seed,
        step=rollout.step,
        by_samples=algo.by_samples(rollout.part),
    )
    assert len(rows) == algo.updates_per_rollout(rollout.part, prompts, group)
    return len(rows)


def test_explorer_updates_of_the_8b_run_512_at_step_1_and_2144_in_all() -> None:
    """1,024 prompts per step, mini-batches of 32 counting samples, G = 16, T_mix = 8: 32 x G_w
    updates per explorer half-step (the issue's 512 at step 1; 32 x (16+14+12+10+7+5+3) in all)."""
    schedule = ScheduleConfig(
        steps=8, t_mix=8, group_size=16, prompts_per_step=1024, mode="alternating", rounding="ceil-both"
    )
    algo = AlgoConfig(ppo_mini_batch_prompts=32, explorer_mini_batch="samples")
    explorer = {
        step: _updates(algo, r, 1024)
        for step in range(1, 9)
        for r in step_rollouts(step, schedule)
        if r.part == "explorer"
    }
    assert explorer[1] == 512
    assert sum(explorer.values()) == 2144 and sorted(explorer) == list(range(1, 8))
    learner = [_updates(algo, r, 1024) for r in step_rollouts(2, schedule) if r.part == "learner"]
    assert learner == [32]  # learner half-steps: mini-batches of 32 prompts (whole groups)
    # Counting prompts (Algorithm 1's unit), the explorer half of step 1 makes 32 updates.
    assert _updates(AlgoConfig(ppo_mini_batch_prompts=32), step_rollouts(1, schedule)[0], 1024) == 32


def test_the_issue_acceptance_run_counts() -> None:
    """The demo acceptance run: G 8, T_mix 4, 3 steps of 8 prompts, mini-batches of 4."""
    schedule = ScheduleConfig(
        steps=3, t_mix=4, group_size=8, prompts_per_step=8, mode="alternating", rounding="ceil-both"
    )
    algo = AlgoConfig(ppo_mini_batch_prompts=4, explorer_mini_batch="samples")
    rows = []
    for step in (1, 2, 3):
        halves = {r.part: r for r in step_rollouts(step, schedule)}
        explorer, learner = halves.get("explorer"), halves.get("learner")
        rows.append(
            (
                sum(_updates(algo, r, 8) for r in halves.values()),
                _updates(algo, explorer, 8) if explorer else 0,
                8 * (explorer.g_explorer if explorer else 0),
                8 * (learner.g_learner if learner else 0),
            )
        )
    assert rows == [(16, 16, 64, 0), (14, 12, 48, 24), (8, 6, 24, 48)]


def test_samples_mini_batches_cover_each_row_once_and_may_split_groups() -> None:
    updates = ppo_mini_batch_rows(8, 6, 4, epochs=2, seed=1, step=2, by_samples=True)
    assert len(updates) == 24 and all(s.stop - s.start == 4 for s in updates)
    for epoch in (updates[:12], updates[12:]):
        assert sorted(r for s in epoch for r in range(s.start, s.stop)) == list(range(48))
    assert any(s.start % 6 for s in updates)  # a mini-batch starting inside a group
    with pytest.raises(ValueError, match="samples"):
        ppo_mini_batch_rows(3, 3, 4, epochs=1, seed=0, step=1, by_samples=True)
    # 0 = the step's prompt count, counted in samples: G updates of `num_prompts` rows each.
    whole = ppo_mini_batch_rows(8, 6, 0, epochs=1, seed=1, step=2, by_samples=True)
    assert len(whole) == 6 and all(s.stop - s.start == 8 for s in whole)
    assert len(ppo_mini_batch_rows(8, 6, 0, epochs=1, seed=1, step=2)) == 1
