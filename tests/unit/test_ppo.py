"""PPO mini-batches of a rollout step: whole groups, every row once per epoch, a seeded order, and
the per-step means over updates."""

import math

import pytest

from megatron_s2l.algo import AlgoConfig, mean_over_updates, ppo_mini_batch_rows

NUM_GPUS = 0


def _rows(slices: list[slice]) -> list[list[int]]:
    return [list(range(s.start, s.stop)) for s in slices]


def test_zero_means_one_update_over_the_whole_step() -> None:
    assert ppo_mini_batch_rows(32, 16, 0, epochs=1, seed=0, step=1) == [slice(0, 512)]
    assert ppo_mini_batch_rows(32, 16, 32, epochs=1, seed=0, step=1) == [slice(0, 512)]


@pytest.mark.parametrize(
    ("prompts", "group", "per_update", "epochs"), [(32, 8, 8, 1), (12, 3, 2, 3), (6, 5, 1, 2)]
)
def test_mini_batches_take_whole_groups_and_cover_each_row_once_per_epoch(
    prompts: int, group: int, per_update: int, epochs: int
) -> None:
    updates = ppo_mini_batch_rows(prompts, group, per_update, epochs=epochs, seed=3, step=7)
    per_epoch = prompts // per_update
    assert (
        len(updates)
        == per_epoch * epochs
        == AlgoConfig(ppo_mini_batch_prompts=per_update, ppo_epochs=epochs).updates_per_step(prompts)
    )
    for epoch in range(epochs):
        rows = _rows(updates[epoch * per_epoch : (epoch + 1) * per_epoch])
        assert sorted(r for mb in rows for r in mb) == list(range(prompts * group))
        for mb in rows:
            assert len(mb) == per_update * group and mb[0] % group == 0  # starts at a group boundary


def test_order_is_seeded_by_run_seed_step_and_epoch() -> None:
    args = (64, 4, 4)
    first = ppo_mini_batch_rows(*args, epochs=2, seed=1, step=5)
    assert first == ppo_mini_batch_rows(*args, epochs=2, seed=1, step=5)  # a resume makes the same updates
    assert first != ppo_mini_batch_rows(*args, epochs=2, seed=2, step=5)
    assert first != ppo_mini_batch_rows(*args, epochs=2, seed=1, step=6)
    assert first[:16] != first[16:]  # each epoch draws its own order
    assert first[:16] != sorted(first[:16], key=lambda s: s.start)  # shuffled (16! orders: not by chance)


def test_sizes_that_do_not_divide_are_an_error() -> None:
    with pytest.raises(ValueError, match="do not divide into mini-batches of 3 prompts"):
        ppo_mini_batch_rows(32, 8, 3, epochs=1, seed=0, step=1)


def test_mean_over_updates() -> None:
    updates = [
        {"loss": 1.0, "approx_kl": 0.0, "clipfrac_high": 0.0, "grad_norm": 2.0, "lr": 1e-3, "skipped": 0.0},
        {
            "loss": math.nan,
            "approx_kl": 0.5,
            "clipfrac_high": 0.2,
            "grad_norm": math.nan,
            "lr": 1e-3,
            "skipped": 1.0,
        },
        {"loss": 3.0, "approx_kl": 1.0, "clipfrac_high": 0.4, "grad_norm": 4.0, "lr": 2e-3, "skipped": 0.0},
    ]
    metrics = mean_over_updates(updates)
    assert metrics["updates"] == 3 and metrics["skipped"] == 1
    assert metrics["approx_kl"] == pytest.approx(0.5) and metrics["clipfrac_high"] == pytest.approx(0.2)
    assert metrics["grad_norm"] == pytest.approx(3.0)  # over the applied updates only
    assert metrics["lr"] == 2e-3  # the last update's
    assert math.isnan(metrics["loss"])  # a skipped update's loss is reported, not hidden
