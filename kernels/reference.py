"""Torch path of the vocab-parallel log-prob / entropy op (the CPU backend, and the readable
statement of what the Triton kernels compute), plus the plain full-vocab reference.

Shapes: T tokens, V the local vocab shard, R ranks; statistics as in `common.py`. Per token, with
x = logits / temperature and p = softmax(x) over the global vocab:
    lse = log sum_v exp(x_v)    logp = x_target - lse    H = -sum_v p_v log p_v = lse - sum_v p_v x_v
Backward (no communication), with g = dL/dlogp and h = dL/dH:
    dx_v = g * (onehot_v - p_v) - h * p_v * (log p_v + H),    dlogits = dx / temperature
"""

from __future__ import annotations

import torch

from .common import STAT_MAX, STAT_SUMEXP, STAT_TARGET, STAT_XEXP, ShardOps


def shard_stats_torch(
    logits_TV: torch.Tensor,
    targets_T: torch.Tensor,
    vocab_start: int,
    temperature: float,
    ignore_index: int,
    compute_entropy: bool,
    out_4T: torch.Tensor,
) -> None:
    """The [4, T] statistics of one vocab shard, written into out_4T; ignored rows get those of an
    empty shard (max -inf, sums 0) whatever their logits hold."""
    valid_T = targets_T != ignore_index
    x_TV = torch.where(valid_T[:, None], logits_TV.float() / temperature, float("-inf"))
    vocab = x_TV.shape[1]
    if vocab == 0:  # a shard of padded vocab only: no mass (the -inf max is what combine expects)
        out_4T[STAT_MAX] = float("-inf")
        out_4T[STAT_SUMEXP:] = 0.0
        return
    m_T = x_TV.max(dim=-1).values
    # A shard of all -inf logits keeps m = -inf (it then weighs nothing in the combination).
    m_safe_T = torch.where(torch.isfinite(m_T), m_T, torch.zeros_like(m_T))
    xm_TV = x_TV - m_safe_T[:, None]
    e_TV = torch.exp(xm_TV)
    local_T = targets_T - vocab_start
    owned_T = valid_T & (local_T >= 0) & (local_T < vocab)
    target_T = x_TV.gather(1, torch.where(owned_T, local_T, 0)[:, None]).squeeze(1)
    out_4T[STAT_MAX] = m_T
    out_4T[STAT_SUMEXP] = e_TV.sum(dim=-1)
    out_4T[STAT_TARGET] = torch.where(owned_T, target_T, 0.0)
    if compute_entropy:
        # exp(-inf) * (-inf) is nan: zero-probability entries add nothing to the sum.
        out_4T[STAT_XEXP] = torch.where(e_TV > 0, e_TV * xm_TV, 0.0).sum(dim=-1)


def combine_torch(
    stats_R4T: torch.Tensor, targets_T: torch.Tensor, ignore_index: int, compute_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge all ranks' statistics into (logp_T, entropy_T, lse_2T); ignored tokens get 0, 0."""
    max_RT = stats_R4T[:, STAT_MAX]
    m_T = max_RT.max(dim=0).values
    m_T = torch.where(torch.isfinite(m_T), m_T, torch.zeros_like(m_T))
    scale_RT = torch.exp(max_RT - m_T)  # rescales each shard's sums to the global max
    sumexp_RT = stats_R4T[:, STAT_SUMEXP] * scale_RT
    valid_T = targets_T != ignore_index
    s_T = torch.where(valid_T, sumexp_RT.sum(dim=0), 1.0)  # ignored rows: empty statistics, no log(0)
    log_s_T = torch.log(s_T)
    logp_T = torch.where(valid_T, (stats_R4T[:, STAT_TARGET].sum(dim=0) - m_T) - log_s_T, 0.0)
    lse_2T = torch.stack([m_T, log_s_T])
    if not compute_entropy:
        return logp_T, torch.zeros_like(log_s_T), lse_2T
    # sum_v exp(x_v - m) (x_v - m), rebuilt from each shard's sum around its own max m_r.
    shift_RT = torch.where(scale_RT > 0, max_RT - m_T, 0.0)
    xexp_T = (scale_RT * stats_R4T[:, STAT_XEXP] + sumexp_RT * shift_RT).sum(dim=0)
    entropy_T = torch.where(valid_T, log_s_T - xexp_T / s_T, 0.0)
    return logp_T, entropy_T, lse_2T


def logits_grad_torch(
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
    """dL/dlogits of the local shard from the saved lse and entropy, written into out_TV."""
    valid_T = targets_T != ignore_index
    g_T = torch.where(valid_T, grad_logp_T.float(), 0.0)
    logp_TV = (logits_TV.float() / temperature - lse_2T[0, :, None]) - lse_2T[1, :, None]
    p_TV = torch.exp(logp_TV)
    dx_TV = -g_T[:, None] * p_TV
    local_T = targets_T - vocab_start
    rows_T = torch.nonzero((local_T >= 0) & (local_T < logits_TV.shape[1])).squeeze(1)
    dx_TV[rows_T, local_T[rows_T]] += g_T[rows_T]
    if grad_entropy_T is not None:
        h_T = torch.where(valid_T, grad_entropy_T.float(), 0.0)
        ent_TV = torch.where(p_TV > 0, p_TV * (logp_TV + entropy_T[:, None]), 0.0)
        dx_TV -= h_T[:, None] * ent_TV
    # Ignored rows get zeros (0 * p would be nan where their logits are not finite).
    return out_TV.copy_(torch.where(valid_T[:, None], dx_TV / temperature, 0.0))


TORCH_OPS = ShardOps(shard_stats=shard_stats_torch, combine=combine_torch, logits_grad=logits_grad_torch)


def logprobs_and_entropy_plain(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused full-vocab baseline (no TP, no ignore_index): log_softmax in fp32 (or float64
    for float64 input), gather and entropy, differentiated by autograd. Materialises several
    [T, V] fp32 tensors; the benchmark's "plain torch" and the tests' ground truth."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logp_all = torch.log_softmax(x, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1)
    return logp, entropy
