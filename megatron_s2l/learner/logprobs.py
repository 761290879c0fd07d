"""Per-token log-probs (and entropy) of given sequences from vocab-parallel logits.

The full vocabulary is never gathered on one rank: `megatron_s2l.kernels.logprobs_and_entropy`
combines per-shard statistics with one all-reduce over the TP group. Logits of the padded
vocabulary rows (ids >= the real vocab size) are masked to -inf first, so they carry no probability.
"""

from __future__ import annotations

import torch

from megatron_s2l.kernels import logprobs_and_entropy


def mask_padded_vocab(logits_BLV: torch.Tensor, vocab_size: int, tp_rank: int) -> torch.Tensor:
    """Set the logits of padded vocabulary ids (>= vocab_size) in this rank's shard to -inf."""
    shard = logits_BLV.shape[-1]
    first_padded = vocab_size - tp_rank * shard  # local index of the first padded id
    if first_padded >= shard:
        return logits_BLV
    padded_V = torch.arange(shard, device=logits_BLV.device) >= first_padded
    return logits_BLV.masked_fill(padded_V, float("-inf"))


def token_logprobs_from_logits(
    logits_BLV: torch.Tensor,
    input_ids_BL: torch.Tensor,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of token t under the logits at position t-1, for t = 1..L-1, and optionally the
    entropy of those distributions: ([B, L-1], [B, L-1] | None), fp32, differentiable w.r.t. the
    vocab-parallel `logits_BLV` ([B, L, V_padded / tp])."""
    from megatron.core import parallel_state

    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    logits_BLV = mask_padded_vocab(logits_BLV[:, :-1], vocab_size, tp_rank)
    targets_BL = input_ids_BL[:, 1:]
    use_group = tp_group if parallel_state.get_tensor_model_parallel_world_size() > 1 else None
    return logprobs_and_entropy(
        logits_BLV, targets_BL, temperature, use_group, compute_entropy=compute_entropy
    )
