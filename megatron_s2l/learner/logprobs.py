"""Per-token log-probs (and entropy) of given sequences from vocab-parallel logits.

The full vocabulary is never gathered on one rank: `megatron_s2l.kernels.logprobs_and_entropy`
combines per-shard statistics with one all-reduce over the TP group. Padded vocabulary rows (ids >=
the real vocab size) carry no probability: the op skips them (`vocab_size`), with no masked copy of
the logits. The op takes the model's full-length logits and targets shifted by one
(`shifted_targets`): slicing the logits to L-1 positions would copy all of them.
"""

from __future__ import annotations

import torch

from megatron_s2l.kernels import fused_linear_logprobs_and_entropy, logprobs_and_entropy

IGNORE_INDEX = -100
"""Target of positions the kernels skip: the last one, and any outside the loss mask."""


def shifted_targets(input_ids_BL: torch.Tensor, loss_mask_BT: torch.Tensor) -> torch.Tensor:
    """[B, L] targets: column t holds token t + 1 where `loss_mask_BT[:, t]` counts, else the ignore
    index (always in the last column)."""
    targets_BL = torch.full_like(input_ids_BL, IGNORE_INDEX)
    targets_BL[:, :-1] = torch.where(loss_mask_BT.bool(), input_ids_BL[:, 1:], IGNORE_INDEX)
    return targets_BL


def token_logprobs_from_logits(
    logits_BLV: torch.Tensor,
    targets_BL: torch.Tensor,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    inplace_backward: bool = False,
    output_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target under the logits at its position and optionally the entropy of those
    distributions: ([B, L], [B, L] | None), fp32, 0 at ignored positions, differentiable w.r.t. the
    vocab-parallel `logits_BLV` ([B, L, V_padded / tp], any float dtype). `inplace_backward`: the
    gradient is written into the logits' storage (only when nothing reads them afterwards).
    `output_weight` ([V_padded / tp, H]): `logits_BLV` are then the final hidden states [B, L, H],
    multiplied with it a chunk of tokens at a time (the logits are never held whole)."""
    from megatron.core import parallel_state

    tp_group = parallel_state.get_tensor_model_parallel_group()
    use_group = tp_group if parallel_state.get_tensor_model_parallel_world_size() > 1 else None
    common = {"compute_entropy": compute_entropy, "vocab_size": vocab_size, "ignore_index": IGNORE_INDEX}
    if output_weight is not None:
        hidden_BLH = logits_BLV
        return fused_linear_logprobs_and_entropy(
            hidden_BLH, output_weight, targets_BL, temperature, use_group, **common
        )
    return logprobs_and_entropy(
        logits_BLV, targets_BL, temperature, use_group, inplace_backward=inplace_backward, **common
    )
