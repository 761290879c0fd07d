"""Chunked fused linear + log-prob / entropy: from the final hidden states and the vocab-parallel
output weight, without ever holding the [T, V] logits of all tokens.

Forward, per chunk of C tokens: logits_CV = hidden_CH @ weight_VH^T (a torch matmul), then the
statistics pass of `ops` into that chunk's slice of the [R, 4, T] buffer; ONE all-reduce after the
last chunk, then the combination. Backward recomputes each chunk's logits, turns them into dlogits
in place (one kernel pass), and accumulates d_hidden = dlogits @ weight and d_weight +=
dlogits^T @ hidden. Peak extra memory: one chunk of logits, d_hidden, and (for more than one chunk
of bf16/fp16) a fp32 accumulator plus a scratch buffer of the weight's shape.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .common import (
    ShardOps,
    all_reduce_stats,
    flatten_rows,
    new_stats_buffer,
    real_shard_width,
    tp_rank_and_size,
)
from .logprobs import Backend, select_ops

MIN_CHUNK_TOKENS = 256
"""Below this, the chunk matmuls get too thin to run near peak."""


def default_chunk_size(num_tokens: int, hidden: int, vocab: int) -> int:
    """Tokens per chunk such that one chunk of logits is no larger than the hidden states of all
    tokens (C * V <= T * H), so the op needs at most about twice the memory of its input."""
    chunk = max(MIN_CHUNK_TOKENS, num_tokens * hidden // max(vocab, 1))
    return max(1, min(num_tokens, chunk // 64 * 64))


class FusedLinearLogprobsEntropy(torch.autograd.Function):
    """(hidden_TH, weight_VH, targets_T, ...) -> (logp_T, entropy_T); see
    `megatron_s2l.kernels.fused_linear_logprobs_and_entropy` for the arguments."""

    @staticmethod
    def forward(
        ctx,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        targets_T: torch.Tensor,
        temperature: float,
        tp_group: dist.ProcessGroup | None,
        compute_entropy: bool,
        ignore_index: int,
        chunk_size: int,
        reduce_grad_hidden: bool,
        vocab_size: int | None,
        ops: ShardOps,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rank, _ = tp_rank_and_size(tp_group)
        num_tokens, vocab_start = hidden_TH.shape[0], rank * weight_VH.shape[0]
        real = real_shard_width(weight_VH.shape[0], vocab_start, vocab_size)
        stats_R4T = new_stats_buffer(num_tokens, tp_group, hidden_TH.device)
        for start in range(0, num_tokens, chunk_size):
            end = min(start + chunk_size, num_tokens)
            logits_CV = hidden_TH[start:end] @ weight_VH[:real].T
            ops.shard_stats(
                logits_CV,
                targets_T[start:end],
                vocab_start,
                temperature,
                ignore_index,
                compute_entropy,
                stats_R4T[rank, :, start:end],
            )
        all_reduce_stats(stats_R4T, tp_group)
        logp_T, entropy_T, lse_2T = ops.combine(stats_R4T, targets_T, ignore_index, compute_entropy)
        ctx.save_for_backward(hidden_TH, weight_VH, targets_T, lse_2T, entropy_T)
        ctx.set_materialize_grads(False)  # an unused output (the entropy): no zero-filled gradient
        ctx.vocab_start, ctx.temperature, ctx.ignore_index = vocab_start, temperature, ignore_index
        ctx.tp_group, ctx.compute_entropy, ctx.chunk_size = tp_group, compute_entropy, chunk_size
        ctx.reduce_grad_hidden, ctx.real_width, ctx.ops = reduce_grad_hidden, real, ops
        return logp_T, entropy_T

    @staticmethod
    def backward(ctx, grad_logp_T: torch.Tensor | None, grad_entropy_T: torch.Tensor | None):
        hidden_TH, weight_VH, targets_T, lse_2T, entropy_T = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        if grad_logp_T is None:
            grad_logp_T = torch.zeros_like(entropy_T)
        if not ctx.compute_entropy:
            grad_entropy_T = None
        num_tokens, chunk = hidden_TH.shape[0], ctx.chunk_size
        grad_hidden_TH = torch.empty_like(hidden_TH) if need_hidden else None
        # One chunk writes d_weight directly; several accumulate each chunk's product in fp32 (a
        # product rounded to bf16 per chunk, then summed, drifts with the number of chunks).
        accumulate_fp32 = need_weight and num_tokens > chunk and weight_VH.dtype != torch.float32
        grad_weight_VH = None
        if need_weight:
            grad_weight_VH = torch.zeros_like(weight_VH, dtype=torch.float32 if accumulate_fp32 else None)
        # Padded vocab rows (ids >= vocab_size) take no part and get a zero gradient.
        weight_RH = weight_VH[: ctx.real_width]
        grad_weight_RH = None if grad_weight_VH is None else grad_weight_VH[: ctx.real_width]
        for start in range(0, num_tokens, chunk):
            end = min(start + chunk, num_tokens)
            hidden_CH = hidden_TH[start:end]
            logits_CV = hidden_CH @ weight_RH.T
            grad_entropy_C = None if grad_entropy_T is None else grad_entropy_T[start:end]
            dlogits_CV = ctx.ops.logits_grad(
                logits_CV,
                targets_T[start:end],
                ctx.vocab_start,
                ctx.temperature,
                ctx.ignore_index,
                lse_2T[:, start:end],
                entropy_T[start:end],
                grad_logp_T[start:end],
                grad_entropy_C,
                logits_CV,
            )
            if need_hidden:
                torch.mm(dlogits_CV, weight_RH, out=grad_hidden_TH[start:end])
            if accumulate_fp32:  # chunk-sized fp32 copies; no [V, H] scratch
                grad_weight_RH.addmm_(dlogits_CV.T.float(), hidden_CH.float())
            elif need_weight:
                grad_weight_RH.addmm_(dlogits_CV.T, hidden_CH)
        if need_hidden and ctx.reduce_grad_hidden and tp_rank_and_size(ctx.tp_group)[1] > 1:
            # Each rank holds the part of d_hidden from its vocab shard (what Megatron's
            # copy_to_tensor_model_parallel_region does for ColumnParallelLinear's input).
            dist.all_reduce(grad_hidden_TH, group=ctx.tp_group)
        if need_weight:
            grad_weight_VH = grad_weight_VH.to(weight_VH.dtype)
        return grad_hidden_TH, grad_weight_VH, None, None, None, None, None, None, None, None, None


def fused_linear_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    *,
    compute_entropy: bool = True,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    reduce_grad_hidden: bool = True,
    vocab_size: int | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`logprobs_and_entropy(hidden @ weight.T, targets, ...)` without materialising the logits.

    hidden: [..., H] final hidden states, the same on every rank of `tp_group` (gathered over
    sequence parallelism); weight: [V_local, H] this rank's vocab shard of the output layer;
    targets: [...] global vocab ids. Differentiable w.r.t. hidden and weight. `chunk_size`
    tokens per chunk (default: `default_chunk_size`). `reduce_grad_hidden=True` all-reduces
    d_hidden over `tp_group` in backward, as ColumnParallelLinear does for its input; pass False
    when the caller's own op does that reduction (e.g. Megatron's sequence-parallel gather, whose
    backward reduce-scatters). `vocab_size` as in `logprobs_and_entropy` (padded rows of the
    weight are not multiplied).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.shape[:-1] != targets.shape or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and targets "
            f"{tuple(targets.shape)} disagree"
        )
    hidden_TH, layout = flatten_rows(hidden)
    num_tokens = hidden_TH.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(num_tokens, hidden_TH.shape[1], weight.shape[0])
    logp_T, entropy_T = FusedLinearLogprobsEntropy.apply(
        hidden_TH,
        weight,
        layout.to_rows(targets).long().contiguous(),  # the kernels index targets by row
        float(temperature),
        tp_group,
        compute_entropy,
        ignore_index,
        max(int(chunk_size), 1),
        reduce_grad_hidden,
        vocab_size,
        select_ops(backend, hidden),
    )
    return layout.from_rows(logp_T), layout.from_rows(entropy_T) if compute_entropy else None
