"""Triton kernels of the vocab-parallel log-prob / entropy op and its autograd function.

Forward: `_logprobs_fwd_kernel` reads each row of the logits shard once (online max / sum-exp /
entropy term over BLOCK_V-wide blocks) and writes the row's 4 statistics; after the single TP
all-reduce, `_logprobs_combine_kernel` turns them into logp, entropy and the row's max and
log-sum-exp (kept apart for precision). Backward:
`_logprobs_bwd_kernel` reads each row once and writes dlogits once (into the logits' own storage
when asked). The math is spelled out in `reference.py`; all arithmetic is fp32 whatever the
logits' dtype. Only core `tl` ops are used, so the kernels build on Triton 3.6 to 3.9.

Both passes over a row load its full BLOCK_V-wide blocks without a mask and mask only the one tail
block past the last multiple of BLOCK_V (HAS_TAIL): a mask bounded by a width that is not a
multiple of 16 (the Qwen3 tokenizer's 151,669 real ids) would turn every load into a scalar one.
A row whose target is ignore_index is not read at all: forward gives it the statistics of an
empty shard (max -inf, sums 0), backward writes its dlogits row as zeros.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from .common import (
    STAT_MAX,
    STAT_SUMEXP,
    STAT_TARGET,
    STAT_XEXP,
    ShardOps,
    compute_logprobs_entropy,
    flatten_rows,
    real_shard_width,
    tp_rank_and_size,
)
from .reference import TORCH_OPS

Backend = Literal["auto", "triton", "torch"]

MAX_BLOCK_V = 4096
"""Widest vocab block a program loads at once (tests lower it to exercise the block loop)."""
BLOCK_T = 128
"""Tokens per program in the combine kernel."""

# Jitted code may only read globals that are constexpr.
_MAX, _SUMEXP, _TARGET, _XEXP = (tl.constexpr(i) for i in (STAT_MAX, STAT_SUMEXP, STAT_TARGET, STAT_XEXP))


def _block_and_warps(vocab: int) -> tuple[int, int]:
    block_v = min(MAX_BLOCK_V, triton.next_power_of_2(max(vocab, 16)))
    return block_v, (8 if block_v >= 2048 else 4)


@triton.jit
def _online_block(x, m, s, w, COMPUTE_ENTROPY: tl.constexpr):
    """Fold one block x [BLOCK_V] (fp32, already / temperature) into the running max m, sum-exp s
    and entropy term w of a row; returns the new (m, s, w)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    # While every logit so far is -inf, shift by 0 instead (exp(-inf - -inf) is nan).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    e = tl.exp(x - m_safe)
    if COMPUTE_ENTROPY:
        # Move the running sum of e * (x - m) to the new max: w' = alpha * (w + s * (m - m')).
        shift = tl.where(s > 0, m - m_safe, 0.0)
        w = alpha * (w + s * shift) + tl.sum(e * tl.where(e > 0, x - m_safe, 0.0), axis=0)
    s = s * alpha + tl.sum(e, axis=0)
    return m_new, s, w


@triton.jit
def _logprobs_fwd_kernel(
    logits_ptr,
    targets_ptr,
    stats_ptr,
    vocab,
    stride_row,
    stride_stat,
    vocab_start,
    inv_temp,
    ignore_index,
    BLOCK_V: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    COMPUTE_ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: T * V exceeds 2^31 at 16k tokens x 152k vocab
    row_ptr = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    target = tl.load(targets_ptr + row)
    valid = target != ignore_index
    m = float("-inf")
    s = 0.0
    w = 0.0
    if valid:  # an ignored row is not read: its statistics are those of an empty shard
        # Full blocks without a mask (vector loads: a bound like 151,669 is not a multiple of 16),
        # then at most one masked tail block.
        for block in range(0, vocab // BLOCK_V):
            x = tl.load(row_ptr + block * BLOCK_V + cols).to(tl.float32) * inv_temp
            m, s, w = _online_block(x, m, s, w, COMPUTE_ENTROPY)
        if HAS_TAIL:
            offs = (vocab // BLOCK_V) * BLOCK_V + cols
            x = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32) * inv_temp
            m, s, w = _online_block(x, m, s, w, COMPUTE_ENTROPY)
    local = target - vocab_start
    owned = valid & (local >= 0) & (local < vocab)
    x_target = tl.load(row_ptr + tl.where(owned, local, 0), mask=owned, other=0.0).to(tl.float32)
    out_ptr = stats_ptr + row
    tl.store(out_ptr + _MAX * stride_stat, m)
    tl.store(out_ptr + _SUMEXP * stride_stat, s)
    tl.store(out_ptr + _TARGET * stride_stat, tl.where(owned, x_target * inv_temp, 0.0))
    if COMPUTE_ENTROPY:
        tl.store(out_ptr + _XEXP * stride_stat, w)


@triton.jit
def _logprobs_combine_kernel(
    stats_ptr,
    targets_ptr,
    logp_ptr,
    entropy_ptr,
    lse_ptr,
    num_tokens,
    num_ranks,
    ignore_index,
    BLOCK_T: tl.constexpr,
    COMPUTE_ENTROPY: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    in_range = offs < num_tokens
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)
    for r in range(num_ranks):
        base = stats_ptr + r * 4 * num_tokens + offs
        m = tl.maximum(m, tl.load(base + _MAX * num_tokens, mask=in_range, other=0.0))
    m = tl.where(m == float("-inf"), 0.0, m)
    s = tl.zeros([BLOCK_T], tl.float32)
    x_target = tl.zeros([BLOCK_T], tl.float32)
    xexp = tl.zeros([BLOCK_T], tl.float32)
    for r in range(num_ranks):
        base = stats_ptr + r * 4 * num_tokens + offs
        m_r = tl.load(base + _MAX * num_tokens, mask=in_range, other=0.0)
        s_r = tl.load(base + _SUMEXP * num_tokens, mask=in_range, other=0.0)
        scale = tl.exp(m_r - m)
        s += scale * s_r
        x_target += tl.load(base + _TARGET * num_tokens, mask=in_range, other=0.0)
        if COMPUTE_ENTROPY:
            w_r = tl.load(base + _XEXP * num_tokens, mask=in_range, other=0.0)
            xexp += scale * (w_r + s_r * tl.where(scale > 0, m_r - m, 0.0))
    valid = tl.load(targets_ptr + offs, mask=in_range, other=ignore_index) != ignore_index
    # Padding lanes and ignored rows (statistics of an empty shard): no log(0) (the interpreter warns).
    s = tl.where(in_range & valid, s, 1.0)
    log_s = tl.log(s)
    tl.store(lse_ptr + offs, m, mask=in_range)
    tl.store(lse_ptr + num_tokens + offs, log_s, mask=in_range)
    tl.store(logp_ptr + offs, tl.where(valid, (x_target - m) - log_s, 0.0), mask=in_range)
    if COMPUTE_ENTROPY:
        tl.store(entropy_ptr + offs, tl.where(valid, log_s - xexp / s, 0.0), mask=in_range)
    else:
        tl.store(entropy_ptr + offs, tl.zeros([BLOCK_T], tl.float32), mask=in_range)


@triton.jit
def _grad_block(x, offs, local, row_max, log_s, g, h, entropy, inv_temp, HAS_GRAD_ENTROPY: tl.constexpr):
    """dlogits of one block x [BLOCK_V] (fp32, already / temperature) of a row."""
    logp = (x - row_max) - log_s
    p = tl.exp(logp)
    dx = tl.where(offs == local, g, 0.0) - g * p
    if HAS_GRAD_ENTROPY:
        dx -= h * p * tl.where(p > 0, logp + entropy, 0.0)
    return dx * inv_temp


@triton.jit
def _logprobs_bwd_kernel(
    logits_ptr,
    dlogits_ptr,
    targets_ptr,
    lse_ptr,
    entropy_ptr,
    grad_logp_ptr,
    grad_entropy_ptr,
    num_tokens,
    vocab,
    stride_row,
    stride_drow,
    vocab_start,
    inv_temp,
    ignore_index,
    BLOCK_V: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    drow_ptr = dlogits_ptr + row * stride_drow
    out_ty = dlogits_ptr.dtype.element_ty
    target = tl.load(targets_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    num_full = vocab // BLOCK_V
    tail = num_full * BLOCK_V + cols
    if target != ignore_index:
        local = target - vocab_start
        row_max = tl.load(lse_ptr + row)
        log_s = tl.load(lse_ptr + num_tokens + row)
        g = tl.load(grad_logp_ptr + row)
        h = 0.0
        entropy = 0.0
        if HAS_GRAD_ENTROPY:
            h = tl.load(grad_entropy_ptr + row)
            entropy = tl.load(entropy_ptr + row)
        for block in range(0, num_full):  # full blocks unmasked, then at most one masked tail block
            offs = block * BLOCK_V + cols
            x = tl.load(row_ptr + offs).to(tl.float32) * inv_temp
            dx = _grad_block(x, offs, local, row_max, log_s, g, h, entropy, inv_temp, HAS_GRAD_ENTROPY)
            tl.store(drow_ptr + offs, dx.to(out_ty))
        if HAS_TAIL:
            in_vocab = tail < vocab
            x = tl.load(row_ptr + tail, mask=in_vocab, other=float("-inf")).to(tl.float32) * inv_temp
            dx = _grad_block(x, tail, local, row_max, log_s, g, h, entropy, inv_temp, HAS_GRAD_ENTROPY)
            tl.store(drow_ptr + tail, dx.to(out_ty), mask=in_vocab)
    else:  # an ignored row: zeros written, the logits not read
        zeros = tl.zeros([BLOCK_V], dtype=out_ty)
        for block in range(0, num_full):
            tl.store(drow_ptr + block * BLOCK_V + cols, zeros)
        if HAS_TAIL:
            tl.store(drow_ptr + tail, zeros, mask=tail < vocab)


def shard_stats_triton(
    logits_TV: torch.Tensor,
    targets_T: torch.Tensor,
    vocab_start: int,
    temperature: float,
    ignore_index: int,
    compute_entropy: bool,
    out_4T: torch.Tensor,
) -> None:
    """Host wrapper of `_logprobs_fwd_kernel`; see `ShardOps.shard_stats`."""
    num_tokens, vocab = logits_TV.shape
    if num_tokens == 0:
        return
    assert logits_TV.stride(1) == 1 and out_4T.stride(1) == 1
    block_v, num_warps = _block_and_warps(vocab)
    _logprobs_fwd_kernel[(num_tokens,)](
        logits_TV,
        targets_T,
        out_4T,
        vocab,
        logits_TV.stride(0),
        out_4T.stride(0),
        vocab_start,
        1.0 / temperature,
        ignore_index,
        BLOCK_V=block_v,
        HAS_TAIL=vocab % block_v != 0,
        COMPUTE_ENTROPY=compute_entropy,
        num_warps=num_warps,
    )


def combine_triton(
    stats_R4T: torch.Tensor, targets_T: torch.Tensor, ignore_index: int, compute_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Host wrapper of `_logprobs_combine_kernel`; see `ShardOps.combine`."""
    num_ranks, _, num_tokens = stats_R4T.shape
    out_4T = torch.empty((4, num_tokens), dtype=torch.float32, device=stats_R4T.device)
    logp_T, entropy_T, lse_2T = out_4T[0], out_4T[1], out_4T[2:]
    if num_tokens > 0:
        _logprobs_combine_kernel[(triton.cdiv(num_tokens, BLOCK_T),)](
            stats_R4T.contiguous(),
            targets_T,
            logp_T,
            entropy_T,
            lse_2T,
            num_tokens,
            num_ranks,
            ignore_index,
            BLOCK_T=BLOCK_T,
            COMPUTE_ENTROPY=compute_entropy,
        )
    return logp_T, entropy_T, lse_2T


def logits_grad_triton(
    logits_TV: torch.Tensor,
    targets_T: torch.Tensor,
    vocab_start: int,
    temperature: float,
    ignore_index: int,
    lse_2T: torch.Tensor,
    entropy_T: torch.Tensor,
    grad_logp_T: torch.Tensor,
    grad_entropy_T: torch.Tensor | None,
    out_TV: torch.Tensor,
) -> torch.Tensor:
    """Host wrapper of `_logprobs_bwd_kernel`; see `ShardOps.logits_grad`."""
    num_tokens, vocab = logits_TV.shape
    if num_tokens == 0:
        return out_TV
    assert logits_TV.stride(1) == 1 and out_TV.stride(1) == 1
    block_v, num_warps = _block_and_warps(vocab)
    has_grad_entropy = grad_entropy_T is not None
    _logprobs_bwd_kernel[(num_tokens,)](
        logits_TV,
        out_TV,
        targets_T,
        lse_2T.contiguous(),
        entropy_T,
        grad_logp_T.float().contiguous(),
        grad_entropy_T.float().contiguous() if has_grad_entropy else entropy_T,
        num_tokens,
        vocab,
        logits_TV.stride(0),
        out_TV.stride(0),
        vocab_start,
        1.0 / temperature,
        ignore_index,
        BLOCK_V=block_v,
        HAS_TAIL=vocab % block_v != 0,
        HAS_GRAD_ENTROPY=has_grad_entropy,
        num_warps=num_warps,
    )
    return out_TV


TRITON_OPS = ShardOps(shard_stats=shard_stats_triton, combine=combine_triton, logits_grad=logits_grad_triton)


class LogprobsEntropy(torch.autograd.Function):
    """(logits_TV, targets_T, ...) -> (logp_T, entropy_T), with the passes of `ops` (Triton or
    torch). See `megatron_s2l.kernels.logprobs_and_entropy` for the arguments."""

    @staticmethod
    def forward(
        ctx,
        logits_TV: torch.Tensor,
        targets_T: torch.Tensor,
        temperature: float,
        tp_group: dist.ProcessGroup | None,
        compute_entropy: bool,
        ignore_index: int,
        inplace_backward: bool,
        vocab_size: int | None,
        ops: ShardOps,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logp_T, entropy_T, lse_2T = compute_logprobs_entropy(
            ops, logits_TV, targets_T, temperature, tp_group, compute_entropy, ignore_index, vocab_size
        )
        ctx.save_for_backward(logits_TV, targets_T, lse_2T, entropy_T)
        # An output the loss does not use (the entropy, often, kept for a metric) gets no zero-filled
        # gradient: backward then skips the entropy term per logit instead of multiplying by zeros.
        ctx.set_materialize_grads(False)
        ctx.vocab_start = tp_rank_and_size(tp_group)[0] * logits_TV.shape[1]
        ctx.real_width = real_shard_width(logits_TV.shape[1], ctx.vocab_start, vocab_size)
        ctx.temperature, ctx.ignore_index, ctx.ops = temperature, ignore_index, ops
        ctx.compute_entropy, ctx.inplace_backward = compute_entropy, inplace_backward
        return logp_T, entropy_T

    @staticmethod
    def backward(ctx, grad_logp_T: torch.Tensor | None, grad_entropy_T: torch.Tensor | None):
        logits_TV, targets_T, lse_2T, entropy_T = ctx.saved_tensors
        if grad_logp_T is None:
            grad_logp_T = torch.zeros_like(entropy_T)
        if not ctx.compute_entropy:
            grad_entropy_T = None
        out_TV = logits_TV if ctx.inplace_backward else torch.empty_like(logits_TV)
        real = ctx.real_width
        ctx.ops.logits_grad(
            logits_TV[:, :real],
            targets_T,
            ctx.vocab_start,
            ctx.temperature,
            ctx.ignore_index,
            lse_2T,
            entropy_T,
            grad_logp_T,
            grad_entropy_T,
            out_TV[:, :real],
        )
        out_TV[:, real:] = 0.0
        return out_TV, None, None, None, None, None, None, None, None


def logprobs_and_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    tp_group: dist.ProcessGroup | None = None,
    *,
    compute_entropy: bool = True,
    ignore_index: int = -100,
    inplace_backward: bool = False,
    vocab_size: int | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-prob of `targets` and entropy of softmax(logits / temperature), both fp32.

    logits: [..., V_local] vocab-parallel logits (bf16 or fp32); targets: [...] global vocab ids.
    Returns (logp [...], entropy [...] or None when compute_entropy is False). Both are
    differentiable w.r.t. `logits`. Tokens whose target equals `ignore_index` get logp = entropy
    = 0 and a zero gradient, and their logits are not read (they may hold anything, NaN
    included). `inplace_backward=True` writes dlogits into the logits' storage (the
    caller promises nothing else reads those logits after this op's backward). `vocab_size`, the
    real (unpadded) global vocab size, makes the columns of ids >= vocab_size count as -inf logits
    (they get no probability and a zero gradient) without reading or writing them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    logits_TV, layout = flatten_rows(logits)
    logp_T, entropy_T = LogprobsEntropy.apply(
        logits_TV,
        layout.to_rows(targets).long().contiguous(),  # the kernels index targets by row
        float(temperature),
        tp_group,
        compute_entropy,
        ignore_index,
        inplace_backward,
        vocab_size,
        select_ops(backend, logits),
    )
    return layout.from_rows(logp_T), layout.from_rows(entropy_T) if compute_entropy else None


def select_ops(backend: Backend, logits: torch.Tensor) -> ShardOps:
    """Triton passes for CUDA tensors (or when forced), torch passes otherwise."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown backend {backend!r}; expected auto, triton or torch")
    use_triton = backend == "triton" or (backend == "auto" and logits.is_cuda)
    return TRITON_OPS if use_triton else TORCH_OPS
