"""What the torch and Triton backends share: the per-shard op interface, the one TP collective, and
the flattening of logits of any leading shape into rows.

Shapes: T tokens (rows), V the local vocab shard, R the tensor-parallel world size. The per-token
statistics of one shard form a [4, T] fp32 block, in the order of the STAT_* indices:
    max    m_r = max_v x_v                  (x = logits / temperature)
    sumexp s_r = sum_v exp(x_v - m_r)
    target x_target when this shard owns the target id, else 0
    xexp   w_r = sum_v exp(x_v - m_r) * (x_v - m_r)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

STAT_MAX, STAT_SUMEXP, STAT_TARGET, STAT_XEXP = range(4)
NUM_STATS = 4


@dataclass(frozen=True, slots=True)
class ShardOps:
    """The three passes a backend implements; everything else is backend-independent."""

    shard_stats: Callable[..., None]
    """(logits_TV, targets_T, vocab_start, temperature, ignore_index, compute_entropy, out_4T): one
    read of the logits shard, writing its [4, T] statistics into `out_4T` (a view into the
    [R, 4, T] buffer). Rows whose target is ignore_index get those of an empty shard (max -inf,
    sums 0) and need not be read."""
    combine: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    """(stats_R4T, targets_T, ignore_index, compute_entropy) -> (logp_T, entropy_T, lse_2T), fp32;
    lse_2T holds the global max and log sum exp(x - max): kept apart (not added into the lse) so
    that x - max stays exact in fp32 for logits in the thousands."""
    logits_grad: Callable[..., torch.Tensor]
    """(logits_TV, targets_T, vocab_start, temperature, ignore_index, lse_2T, entropy_T, grad_logp_T,
    grad_entropy_T or None, out_TV) -> out_TV: one read of the logits, one write of dlogits (out_TV
    may be the logits themselves). Rows whose target is ignore_index get zeros and need not be
    read."""


def tp_rank_and_size(tp_group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, world size) inside the tensor-parallel group; (0, 1) without one."""
    if tp_group is None:
        return 0, 1
    return dist.get_rank(tp_group), dist.get_world_size(tp_group)


def new_stats_buffer(
    num_tokens: int, tp_group: dist.ProcessGroup | None, device: torch.device
) -> torch.Tensor:
    """[R, 4, T] fp32 buffer; other ranks' slots are zero so that a SUM all-reduce fills them."""
    _, tp = tp_rank_and_size(tp_group)
    return torch.zeros((tp, NUM_STATS, num_tokens), dtype=torch.float32, device=device)


def all_reduce_stats(stats_R4T: torch.Tensor, tp_group: dist.ProcessGroup | None) -> None:
    """Give every rank all ranks' statistics with ONE collective: max and sums would need two
    reductions, but each rank writing only its own slot turns a SUM all-reduce into a gather.
    (A -inf max, from a shard of all -inf logits, survives the sum: -inf + 0 == -inf.)"""
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        dist.all_reduce(stats_R4T, group=tp_group)


def real_shard_width(shard_width: int, vocab_start: int, vocab_size: int | None) -> int:
    """Columns of a vocab shard that hold real ids (< vocab_size): Megatron pads the vocab to a
    multiple of 128 x tp, and the padded ids' logits must carry no probability. Slicing them off
    costs nothing, unlike writing -inf into them."""
    if vocab_size is None:
        return shard_width
    return min(shard_width, max(0, vocab_size - vocab_start))


def compute_logprobs_entropy(
    ops: ShardOps,
    logits_TV: torch.Tensor,
    targets_T: torch.Tensor,
    temperature: float,
    tp_group: dist.ProcessGroup | None,
    compute_entropy: bool,
    ignore_index: int,
    vocab_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward of the op without autograd: (logp_T, entropy_T, lse_2T), all fp32."""
    rank, _ = tp_rank_and_size(tp_group)
    vocab_start = rank * logits_TV.shape[1]
    real = real_shard_width(logits_TV.shape[1], vocab_start, vocab_size)
    stats_R4T = new_stats_buffer(targets_T.shape[0], tp_group, logits_TV.device)
    ops.shard_stats(
        logits_TV[:, :real],
        targets_T,
        vocab_start,
        temperature,
        ignore_index,
        compute_entropy,
        stats_R4T[rank],
    )
    all_reduce_stats(stats_R4T, tp_group)
    return ops.combine(stats_R4T, targets_T, ignore_index, compute_entropy)


@dataclass(frozen=True, slots=True)
class RowLayout:
    """How a [..., V] tensor was flattened to rows [T, V] in memory order (so that the flattening
    is a view even for Megatron's sequence-first [S, B, V] logits seen as [B, S, V])."""

    perm: tuple[int, ...]
    """Leading dimensions in decreasing-stride order."""
    shape: tuple[int, ...]
    """The original leading shape."""

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """A per-token tensor of the original leading shape -> [T] in row order."""
        return x.permute(*self.perm).reshape(-1)

    def from_rows(self, x_T: torch.Tensor) -> torch.Tensor:
        """[T] in row order -> the original leading shape."""
        inverse = sorted(range(len(self.perm)), key=self.perm.__getitem__)
        return x_T.reshape([self.shape[d] for d in self.perm]).permute(*inverse)


def flatten_rows(x: torch.Tensor) -> tuple[torch.Tensor, RowLayout]:
    """[..., V] -> ([T, V] rows with unit vocab stride, layout). A view whenever the rows of x are
    evenly strided in some order of its leading dimensions (a copy otherwise)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    lead = x.ndim - 1
    perm = tuple(sorted(range(lead), key=lambda d: x.stride(d), reverse=True))
    rows_TV = x.permute(*perm, lead).reshape(-1, x.shape[-1])
    return rows_TV, RowLayout(perm=perm, shape=tuple(x.shape[:-1]))
