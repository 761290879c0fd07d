"""Which sequences of a global batch go into which micro-batch, on which data-parallel rank.

RL responses range from tens to thousands of tokens, so a micro-batch padded to the longest sequence
of the whole batch is mostly padding. Two plans, both with the same number of micro-batches on every
DP rank (Megatron's schedule and the loss scaling in `grpo_step` need that):

- fixed size (`max_tokens=None`): DP rank d takes rows [d * B/dp, (d + 1) * B/dp) in
  `micro_batch_size` chunks (one chunk when it has fewer rows);
- token budget: the rows are dealt to the DP ranks longest first in snake order (each rank gets B/dp
  rows and about the same tokens), then each rank fills micro-batches first-fit, longest first, while
  rows x longest row (padded) or the sum of the rows (packed, `learner/packing.py`) <= `max_tokens`
  (a row longer than the budget gets a micro-batch of its own); a rank with fewer micro-batches than
  another splits its fullest ones.

Either way each micro-batch is then trimmed to its own longest row (`TrainBatch.trim`). The loss
is normalised over the global batch, so the plan changes no gradient, except with
`algo.loss.agg: token-mean-micro-batch`, which averages per micro-batch as the released S2L-PO runs did.
"""

from __future__ import annotations

import torch


def micro_batch_rows(rows_per_rank: int, micro_batch_size: int) -> int:
    """Rows of each fixed-size micro-batch: `micro_batch_size`, or all of a rank's rows when there are
    fewer (an update smaller than a micro-batch runs as one)."""
    return min(micro_batch_size, rows_per_rank)


def fits_micro_batches(rows_per_rank: int, micro_batch_size: int) -> bool:
    """Whether a rank's rows split into equal micro-batches of `micro_batch_rows`."""
    return rows_per_rank % micro_batch_rows(rows_per_rank, micro_batch_size) == 0


def plan_micro_batches(
    lengths_B: torch.Tensor, dp: int, *, micro_batch_size: int, max_tokens: int | None, packed: bool = False
) -> list[list[list[int]]]:
    """Row indices of every micro-batch of every DP rank: `plan[d][m]` is micro-batch m of rank d.
    `packed`: micro-batches are packed end to end (`learner/packing.py`), so a micro-batch costs the
    sum of its rows' lengths instead of rows x longest."""
    num_rows = len(lengths_B)
    if num_rows % dp:
        raise ValueError(f"global batch of {num_rows} sequences is not divisible by data_parallel ({dp})")
    per_rank = num_rows // dp
    if max_tokens is None:
        if not fits_micro_batches(per_rank, micro_batch_size):
            raise ValueError(
                f"global batch of {num_rows} sequences is not divisible by data_parallel ({dp}) * "
                f"micro_batch_size ({micro_batch_size})"
            )
        size = micro_batch_rows(per_rank, micro_batch_size)
        return [
            [list(range(start, start + size)) for start in range(first, first + per_rank, size)]
            for first in range(0, num_rows, per_rank)
        ]
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    lengths = [int(n) for n in lengths_B]
    # Stable sort: equal lengths keep their order, so every rank computes the same plan.
    longest_first = sorted(range(num_rows), key=lambda row: -lengths[row])
    rank_rows: list[list[int]] = [[] for _ in range(dp)]
    for i, row in enumerate(longest_first):
        lap, pos = divmod(i, dp)
        rank_rows[pos if lap % 2 == 0 else dp - 1 - pos].append(row)
    plan = [_first_fit(rows, lengths, max_tokens, packed) for rows in rank_rows]
    target = max(len(bins) for bins in plan)
    for bins in plan:  # every rank has per_rank >= target rows, so this always ends
        while len(bins) < target:
            fullest = max(range(len(bins)), key=lambda i: len(bins[i]))
            rows = bins.pop(fullest)
            bins += [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    return plan


def _first_fit(rows: list[int], lengths: list[int], max_tokens: int, packed: bool) -> list[list[int]]:
    """First-fit of `rows` (longest first) into bins of at most `max_tokens` tokens."""
    bins: list[list[int]] = []
    tokens: list[int] = []  # each bin's tokens with one more row of the current length
    for row in rows:
        for i, rows_in_bin in enumerate(bins):
            # Longest first: a bin's first row is its longest, so its padded size is known.
            cost = tokens[i] + lengths[row] if packed else (len(rows_in_bin) + 1) * lengths[rows_in_bin[0]]
            if cost <= max_tokens:
                rows_in_bin.append(row)
                tokens[i] += lengths[row]
                break
        else:
            bins.append([row])
            tokens.append(lengths[row])
    return bins
