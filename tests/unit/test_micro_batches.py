"""Micro-batch plans (`learner/micro_batches.py`) and the trimming of `TrainBatch`."""

from __future__ import annotations

import pytest
import torch

from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.learner.micro_batches import micro_batch_rows, plan_micro_batches


def test_fixed_size_plan_is_contiguous_rows_per_rank() -> None:
    plan = plan_micro_batches(torch.tensor([5] * 8), 2, micro_batch_size=2, max_tokens=None)
    assert plan == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    with pytest.raises(ValueError, match="micro_batch_size"):
        plan_micro_batches(torch.tensor([5] * 8), 2, micro_batch_size=3, max_tokens=None)
    with pytest.raises(ValueError, match="data_parallel"):
        plan_micro_batches(torch.tensor([5] * 7), 2, micro_batch_size=1, max_tokens=64)


def test_a_rank_with_fewer_rows_than_a_micro_batch_takes_them_in_one() -> None:
    """An update smaller than a micro-batch (an explorer update of 4 samples on the demo's 128-row
    micro-batches) runs as one micro-batch per rank; a rank with more rows must split evenly."""
    assert plan_micro_batches(torch.ones(8), 2, micro_batch_size=128, max_tokens=None) == [
        [[0, 1, 2, 3]],
        [[4, 5, 6, 7]],
    ]
    assert plan_micro_batches(torch.ones(16), 2, micro_batch_size=8, max_tokens=None) == [
        [list(range(8))],
        [list(range(8, 16))],
    ]
    with pytest.raises(ValueError, match="not divisible by data_parallel"):
        plan_micro_batches(torch.ones(24), 2, micro_batch_size=8, max_tokens=None)  # 12 rows per rank
    assert [micro_batch_rows(rows, 8) for rows in (1, 4, 8, 16)] == [1, 4, 8, 8]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dp", [1, 2, 4])
@pytest.mark.parametrize("budget", [1, 50, 300, 4096, 10**6])
def test_token_budget_plan_covers_every_row_once_within_the_budget(
    dp: int, budget: int, packed: bool
) -> None:
    # 256 rows, lengths from 3 to 700: several times more rows and tokens than any one budget holds.
    lengths = torch.randint(3, 700, (256,), generator=torch.Generator().manual_seed(dp * 7 + budget))
    plan = plan_micro_batches(lengths, dp, micro_batch_size=1, max_tokens=budget, packed=packed)
    assert plan == plan_micro_batches(lengths, dp, micro_batch_size=1, max_tokens=budget, packed=packed)
    assert len(plan) == dp and len({len(bins) for bins in plan}) == 1  # same count on every rank
    rows = [row for bins in plan for rows_in_bin in bins for row in rows_in_bin]
    assert sorted(rows) == list(range(256))
    for bins in plan:
        assert sum(len(rows_in_bin) for rows_in_bin in bins) == 256 // dp
        for rows_in_bin in bins:
            assert rows_in_bin, "an empty micro-batch"
            sizes = [int(lengths[r]) for r in rows_in_bin]
            cost = sum(sizes) if packed else len(sizes) * max(sizes)
            assert cost <= budget or len(rows_in_bin) == 1
    tokens = [sum(int(lengths[r]) for bins_rows in bins for r in bins_rows) for bins in plan]
    assert max(tokens) - min(tokens) <= int(lengths.max())  # snake order balances the ranks


def test_packed_micro_batches_hold_more_rows_than_padded_ones() -> None:
    lengths = torch.tensor([100, 10, 10, 10, 10, 10])  # padded, 100 + any row costs 200
    padded = plan_micro_batches(lengths, 1, micro_batch_size=1, max_tokens=150)
    packed = plan_micro_batches(lengths, 1, micro_batch_size=1, max_tokens=150, packed=True)
    assert padded == [[[0], [1, 2, 3, 4, 5]]]
    assert packed == [[[0, 1, 2, 3, 4, 5]]]  # 150 tokens in one


def test_a_rank_with_fewer_micro_batches_splits_its_fullest() -> None:
    # Rank 0 gets the two long rows (one micro-batch each), rank 1 the short ones (one together).
    lengths = torch.tensor([100, 99, 2, 2])
    plan = plan_micro_batches(lengths, 2, micro_batch_size=1, max_tokens=150)
    assert [len(bins) for bins in plan] == [2, 2]
    assert sorted(map(sorted, plan[0] + plan[1])) == [[0], [1], [2], [3]]


def test_needed_lengths_and_trim() -> None:
    input_ids = torch.arange(24).reshape(3, 8)
    loss_mask = torch.zeros(3, 7)
    loss_mask[0, 2:5] = 1  # predicts tokens 3..5: needs 6 tokens
    loss_mask[1, 6] = 1  # the last column: needs all 8
    advantages = torch.tensor([1.0, -1.0, 0.5])
    batch = TrainBatch(input_ids=input_ids, loss_mask=loss_mask, advantages=advantages)  # row 2: no loss
    assert batch.needed_lengths().tolist() == [6, 8, 1]
    trimmed = batch.select(torch.tensor([0, 2])).trim(6)
    assert trimmed.input_ids.tolist() == [list(range(6)), list(range(16, 22))]
    assert trimmed.loss_mask.shape == (2, 5) and trimmed.loss_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert trimmed.advantages.tolist() == [1.0, 0.5]
    token_advantages = TrainBatch(input_ids=input_ids, loss_mask=loss_mask, advantages=torch.ones(3, 7))
    assert token_advantages.trim(4).advantages.shape == (3, 3)
