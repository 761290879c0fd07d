"""Per-token log-probs (and entropy) of given sequences from vocab-parallel logits.

The full vocabulary is never gathered on one rank: `megatron_s2l.kernels.logprobs_and_entropy`
combines per-shard statistics with one all-reduce over the TP group. Padded vocabulary rows (ids >=
the real vocab size) carry no probability: the op skips them (`vocab_size`), with no masked copy of
the logits.
"""

from __future__ import annotations

import torch

from megatron_s2l.kernels import logprobs_and_entropy


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
    use_group = tp_group if parallel_state.get_tensor_model_parallel_world_size() > 1 else None
    return logprobs_and_entropy(
        logits_BLV[:, :-1],
        input_ids_BL[:, 1:],
        temperature,
        use_group,
        compute_entropy=compute_entropy,
        vocab_size=vocab_size,
    )
