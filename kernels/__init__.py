"""Fused log-prob / entropy / GRPO-loss ops over vocab-parallel logits (`megatron_s2l.kernels`).

How to call them from a Megatron learner::

    from megatron_s2l.kernels import logprobs_and_entropy
    # logits: [..., V / tp] output of the vocab-parallel (ColumnParallelLinear) output layer,
    #         bf16 or fp32, NOT gathered over tensor parallelism;
    # targets: [...] global vocab ids (the next tokens), ignore_index marks padding.
    logp, entropy = logprobs_and_entropy(
        logits, targets, temperature=rollout_temperature,
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        vocab_size=tokenizer_vocab_size,  # Megatron's padded ids then get no probability
    )

`tp_group` is the tensor-parallel process group over which the vocab is split: rank r of the
group holds vocab ids [r * V/tp, (r + 1) * V/tp). None means the logits hold the whole vocab. Every
rank of the group gets the same fp32 logp and entropy, and the backward yields each rank's own
shard of dlogits (the loss is replicated over the group, as Megatron's vocab-parallel cross
entropy assumes). Other keyword arguments: `compute_entropy=False` skips the entropy (returns
None); `inplace_backward=True` writes dlogits into the logits' storage when nothing else needs
the logits afterwards; `vocab_size` (the real, unpadded vocab size) makes the columns of padded
ids count as -inf without reading or writing them.

The GRPO loss in one forward and one backward pass over the logits, and the chunked variant that
never materialises them (hidden [B, T, H] replicated over the TP group, weight [V/tp, H] this
rank's shard of the output layer)::

    from megatron_s2l.kernels import fused_grpo_loss, fused_linear_grpo_loss
    loss, metrics, logp, entropy = fused_grpo_loss(
        logits, targets, old_logprobs, advantages, mask, loss_cfg, ref_logprobs=ref_logprobs,
        temperature=t, tp_group=tp_group, global_tokens=n_tokens, global_seqs=n_seqs,
    )
    loss, metrics, logp, entropy = fused_linear_grpo_loss(hidden, output_weight, targets, ...)

The backend follows the device: Triton kernels for CUDA tensors, the torch reference path
(`kernels/reference.py`) otherwise. `backend="triton"` forces the kernels (on CPU they then need
TRITON_INTERPRET=1 set before this package is imported).
"""

from .fused_linear import default_chunk_size, fused_linear_logprobs_and_entropy
from .grpo_loss import GRPOResult, fused_grpo_loss, fused_linear_grpo_loss
from .logprobs import Backend, logprobs_and_entropy

__all__ = [
    "Backend",
    "GRPOResult",
    "default_chunk_size",
    "fused_grpo_loss",
    "fused_linear_grpo_loss",
    "fused_linear_logprobs_and_entropy",
    "logprobs_and_entropy",
]
