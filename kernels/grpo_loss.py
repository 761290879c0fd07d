"""The GRPO loss straight from logits (or from hidden states and the output weight) at the cost of
one forward and one backward pass over the logits.

The per-token loss is `megatron_s2l.algo.loss.grpo_loss` itself (ratio, clip-higher, dual clip,
optional KL, entropy bonus, every aggregation) applied to the [B, T] log-probs and entropies
of the fused op. Autograd hands that op's backward dL/dlogp and dL/dH for every token at once, so
the gradient of the whole loss is folded into its single backward kernel pass:
    dlogits = dL/dlogp * (onehot - p) - dL/dH * p * (log p + H)
and the loss math has one definition, shared with the unfused path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_s2l.algo.loss import LossConfig, grpo_loss

from .fused_linear import fused_linear_logprobs_and_entropy
from .logprobs import Backend, logprobs_and_entropy

GRPOResult = tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]
"""(loss, metrics, logp_BT, entropy_BT): the scalar loss to backpropagate; the detached metrics
of `grpo_loss` (entropy included); the detached per-token log-probs and entropies."""


def _apply_grpo_loss(
    cfg: LossConfig,
    logp_BT: torch.Tensor,
    entropy_BT: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    global_tokens: int | float | None,
    global_seqs: int | None,
    micro_batches: int,
) -> GRPOResult:
    # A detached entropy keeps the entropy term out of the backward kernel when it has no weight.
    entropy_in = entropy_BT if cfg.entropy_coef > 0 else entropy_BT.detach()
    loss, metrics = grpo_loss(
        cfg,
        logp_BT,
        old_logprobs,
        advantages,
        mask,
        ref_logprobs=ref_logprobs,
        entropy=entropy_in,
        global_tokens=global_tokens,
        global_seqs=global_seqs,
        micro_batches=micro_batches,
    )
    return loss, metrics, logp_BT.detach(), entropy_BT.detach()


def fused_grpo_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    micro_batches: int = 1,
    ignore_index: int = -100,
    inplace_backward: bool = False,
    vocab_size: int | None = None,
    backend: Backend = "auto",
) -> GRPOResult:
    """GRPO loss of vocab-parallel logits [B, T, V_local] (any memory layout, e.g. Megatron's
    [S, B, V] transposed to [B, S, V]) for targets, old_logprobs, mask, ref_logprobs [B, T] and
    advantages [B] or [B, T]; `global_tokens` / `global_seqs` / `micro_batches` as in `aggregate`;
    the other arguments as in `logprobs_and_entropy`. Returns `GRPOResult`; the loss is
    differentiable w.r.t. the logits only."""
    logp_BT, entropy_BT = logprobs_and_entropy(
        logits,
        targets,
        temperature,
        tp_group,
        compute_entropy=True,
        ignore_index=ignore_index,
        inplace_backward=inplace_backward,
        vocab_size=vocab_size,
        backend=backend,
    )
    return _apply_grpo_loss(
        cfg,
        logp_BT,
        entropy_BT,
        old_logprobs,
        advantages,
        mask,
        ref_logprobs,
        global_tokens,
        global_seqs,
        micro_batches,
    )


def fused_linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    micro_batches: int = 1,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    reduce_grad_hidden: bool = True,
    vocab_size: int | None = None,
    backend: Backend = "auto",
) -> GRPOResult:
    """`fused_grpo_loss` of `hidden [B, T, H] @ weight [V_local, H]^T` through the chunked fused
    linear op (see `fused_linear_logprobs_and_entropy` for hidden, weight and the TP contract);
    differentiable w.r.t. hidden and weight."""
    logp_BT, entropy_BT = fused_linear_logprobs_and_entropy(
        hidden,
        weight,
        targets,
        temperature,
        tp_group,
        compute_entropy=True,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        reduce_grad_hidden=reduce_grad_hidden,
        vocab_size=vocab_size,
        backend=backend,
    )
    return _apply_grpo_loss(
        cfg,
        logp_BT,
        entropy_BT,
        old_logprobs,
        advantages,
        mask,
        ref_logprobs,
        global_tokens,
        global_seqs,
        micro_batches,
    )
