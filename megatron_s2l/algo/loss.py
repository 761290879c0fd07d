"""The GRPO objective as pure tensor functions: PPO-clip policy loss with clip-higher and dual clip,
the loss aggregation modes, KL penalty estimators and the entropy bonus (verl semantics).

Shapes: B sequences (rows) x T response positions; `mask_BT` is 1 on response tokens that count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossAgg = Literal[
    "token-mean",
    "token-mean-micro-batch",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
]
KLEstimator = Literal["k1", "k2", "k3"]
LOSS_AGG_MODES: tuple[str, ...] = LossAgg.__args__  # type: ignore[attr-defined]
KL_ESTIMATORS: tuple[str, ...] = KLEstimator.__args__  # type: ignore[attr-defined]

_LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps the ratio finite for wildly off-policy tokens
_K3_CLAMP = 10.0


@dataclass(kw_only=True, slots=True)
class LossConfig:
    clip_low: float = 0.2
    """PPO lower clip: the ratio is clipped at 1 - clip_low."""
    clip_high: float = 0.2
    """PPO upper clip: 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    clip_c: float | None = None
    """Dual-clip bound (> 1) for negative advantages; None disables dual clip (verl uses 3.0)."""
    agg: LossAgg = "token-mean"
    """How token losses become one number; token-mean is over all tokens of the global batch;
    token-mean-micro-batch is the mean over micro-batches (of every DP rank) of each micro-batch's own
    token mean, as the verl of the S2L-PO authors' released runs trained (its result depends on how
    the batch is cut into micro-batches: set `learner.parallel.micro_batch_size` as theirs)."""
    norm_len: int | None = None
    """Constant length for seq-mean-token-sum-norm (Dr.GRPO); None: the padded response length of
    each optimizer update's batch (its longest response; set max_new_tokens for verl's constant)."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the reference policy; 0 disables it (no reference forward pass)."""
    kl_estimator: KLEstimator = "k3"
    """k1: log-ratio; k2: 0.5 * log-ratio^2; k3: the low-variance estimator (clamped to [-10, 10])."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss); 0 disables it."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low must be in [0, 1), got {self.clip_low}")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high must be >= 0, got {self.clip_high}")
        if self.clip_c is not None and self.clip_c <= 1.0:
            raise ValueError(f"clip_c must be > 1 (or null to disable dual clip), got {self.clip_c}")
        if self.norm_len is not None and self.norm_len < 1:
            raise ValueError(f"norm_len must be >= 1, got {self.norm_len}")
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over mask == 1 (0 when the mask is empty); masked values never reach the result."""
    keep = mask.bool()
    return torch.where(keep, x, 0.0).sum() / keep.sum().clamp(min=1)


def select_masked(mask_BT: torch.Tensor, *tensors_BT: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor with its masked positions replaced by 0 (selected, not multiplied: a NaN or inf
    in padding, e.g. an engine's -inf log-prob, would survive `x * 0` and poison sums and grads)."""
    keep_BT = mask_BT.bool()
    return [torch.where(keep_BT, t, 0.0) for t in tensors_BT]


def aggregate(
    loss_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    agg: LossAgg = "token-mean",
    *,
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    norm_len: int | None = None,
    micro_batches: int = 1,
) -> torch.Tensor:
    """Reduce per-token losses to a scalar.

    - token-mean: sum over all tokens / number of tokens.
    - token-mean-micro-batch: this batch's own token mean / `micro_batches` (the number of
      micro-batches of the global batch, over all DP ranks): summed over them, the mean of the
      micro-batches' token means. This is verl's `token-mean` before its global-batch normalisation
      (verl/workers/actor/dp_actor.py `update_policy`: `agg_loss` per micro-batch, a masked mean with
      a local token count, times `loss_scale_factor = 1 / gradient_accumulation`, gradients then
      averaged over DP ranks), what the S2L-PO authors' released runs used. Longer micro-batches'
      tokens weigh less than in token-mean. `global_tokens` does not apply.
    - seq-mean-token-sum: mean over sequences of the per-sequence token sum.
    - seq-mean-token-mean: mean over sequences of the per-sequence token mean.
    - seq-mean-token-sum-norm (Dr.GRPO): mean over sequences of token sum / norm_len, where
      norm_len defaults to the batch's padded response length (its longest response).

    The seq-mean modes average over the sequences that have at least one counted token (as verl
    does): a fully masked row adds nothing and does not dilute the mean. `global_tokens` (token-mean)
    and `global_seqs` (non-empty sequences, seq-mean modes) replace the local counts with those of
    the whole global batch, so that summing the losses of micro-batches and data-parallel ranks
    gives exactly the loss, and gradient, of one big batch.
    """
    if agg not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {agg!r}; expected one of {LOSS_AGG_MODES}")
    (masked_BT,) = select_masked(mask_BT, loss_BT)
    tokens_B = mask_BT.bool().sum(dim=-1)
    if agg == "token-mean":
        denom = tokens_B.sum().clamp(min=1) if global_tokens is None else global_tokens
        return masked_BT.sum() / denom
    if agg == "token-mean-micro-batch":
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        return masked_BT.sum() / tokens_B.sum().clamp(min=1) / micro_batches
    seq_sum_B = masked_BT.sum(dim=-1)
    if agg == "seq-mean-token-sum":
        seq_loss_B = seq_sum_B
    elif agg == "seq-mean-token-mean":
        seq_loss_B = seq_sum_B / tokens_B.clamp(min=1)
    else:
        seq_loss_B = seq_sum_B / (norm_len if norm_len is not None else max(int(tokens_B.max()), 1))
    num_seqs = int((tokens_B > 0).sum()) if global_seqs is None else global_seqs
    return seq_loss_B.sum() / max(num_seqs, 1)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
    agg: LossAgg = "token-mean",
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    norm_len: int | None = None,
    micro_batches: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip policy loss with clip-higher and dual clip, aggregated by `agg`.

    ratio = exp(clamp(logp - old_logp, -20, 20));
    loss  = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high));
    for A < 0 with dual clip: loss = min(loss, -A * clip_c).
    `advantages` is [B] (one per sequence) or [B, T]. Metrics (detached, local to this batch):
    clipfrac_high (A > 0 tokens clipped at 1 + clip_high), clipfrac_low (A < 0 tokens clipped at
    1 - clip_low), clipfrac_dual (dual clip active) and approx_kl (mean of old_logp - logp).
    """
    if advantages.ndim == 1:
        advantages = advantages.unsqueeze(-1)
    mask_BT = mask.to(logprobs.dtype)
    adv_BT = advantages.expand_as(logprobs).to(logprobs.dtype)
    logprobs, old_logprobs, adv_BT = select_masked(mask_BT, logprobs, old_logprobs, adv_BT)
    log_ratio_BT = torch.clamp(logprobs - old_logprobs, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio_BT = torch.exp(log_ratio_BT)
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
    loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    is_clipped_BT = clipped_BT > unclipped_BT
    dual_BT = torch.zeros_like(is_clipped_BT)
    if clip_c is not None:
        dual_bound_BT = -adv_BT * clip_c
        dual_BT = (adv_BT < 0) & (loss_BT > dual_bound_BT)
        loss_BT = torch.where(adv_BT < 0, torch.minimum(loss_BT, dual_bound_BT), loss_BT)
    loss = aggregate(
        loss_BT,
        mask_BT,
        agg,
        global_tokens=global_tokens,
        global_seqs=global_seqs,
        norm_len=norm_len,
        micro_batches=micro_batches,
    )
    with torch.no_grad():
        metrics = {
            "clipfrac_high": masked_mean((is_clipped_BT & (adv_BT > 0)).to(mask_BT.dtype), mask_BT),
            "clipfrac_low": masked_mean((is_clipped_BT & (adv_BT < 0)).to(mask_BT.dtype), mask_BT),
            "clipfrac_dual": masked_mean(dual_BT.to(mask_BT.dtype), mask_BT),
            "approx_kl": masked_mean(-log_ratio_BT, mask_BT),
        }
    return loss, metrics


def truncated_importance_weights(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling (TIS) weights [B, T] of the sampled tokens, as verl's
    `compute_policy_loss_vanilla` (verl/trainer/ppo/core_algos.py, `tis_imp_ratio_cap`):
    min(exp(old_logp - rollout_logp), cap), where rollout_logp is the engine's log-prob of the
    token as it was sampled. verl multiplies each token's policy loss by the weight; scaling the
    token's advantage by it instead gives the same loss and gradient (`policy_loss`: the weight is
    positive and detached, so it factors out of the max of the clipped terms and, A * w having A's
    sign, out of the dual clip's min as well; a weight that underflows to 0 zeroes the token's loss
    both ways).

    Weight 1 where `rollout_logprobs` is NaN (a token with nothing to correct against, e.g. an
    explorer sample's) or `mask` is 0. Metrics over the weighted response tokens (none without
    any): `tis_mean`, and `tis_clipped_frac` (the share whose weight was capped)."""
    weighted_BT = mask.bool() & ~rollout_logprobs.isnan()
    (log_ratio_BT,) = select_masked(weighted_BT, old_logprobs - rollout_logprobs)
    raw_BT = torch.exp(log_ratio_BT)
    weights_BT = torch.where(weighted_BT, raw_BT.clamp(max=cap), 1.0)
    tokens = int(weighted_BT.sum())
    if tokens == 0:
        return weights_BT, {}
    metrics = {
        "tis_mean": float(weights_BT[weighted_BT].sum()) / tokens,
        "tis_clipped_frac": float((weighted_BT & (raw_BT > cap)).sum()) / tokens,
    }
    return weights_BT, metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of the sampled tokens.

    k1 = logp - ref_logp; k2 = 0.5 (logp - ref_logp)^2; k3 = exp(d) - d - 1 with d = ref_logp - logp
    clamped to [-20, 20] and the result clamped to [-10, 10] (verl's low_var_kl).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        d = torch.clamp(-log_ratio, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(d) - d - 1.0, -_K3_CLAMP, _K3_CLAMP)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dimension, computed in float32."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def grpo_loss(
    cfg: LossConfig,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    global_tokens: int | float | None = None,
    global_seqs: int | None = None,
    micro_batches: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full GRPO objective: policy loss + kl_coef * KL - entropy_coef * entropy, each term
    aggregated the same way. `ref_logprobs` is required when kl_coef > 0, `entropy` when
    entropy_coef > 0 (and logged whenever given). `global_tokens`, `global_seqs` and
    `micro_batches` as in `aggregate`."""
    agg_kwargs = dict(
        global_tokens=global_tokens,
        global_seqs=global_seqs,
        norm_len=cfg.norm_len,
        micro_batches=micro_batches,
    )
    loss, metrics = policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        clip_c=cfg.clip_c,
        agg=cfg.agg,
        **agg_kwargs,
    )
    metrics["pg_loss"] = loss.detach()
    if cfg.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        logp_BT, ref_BT = select_masked(mask, logprobs, ref_logprobs)
        kl = aggregate(kl_penalty(logp_BT, ref_BT, cfg.kl_estimator), mask, cfg.agg, **agg_kwargs)
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = kl.detach()
    if entropy is not None:
        ent = aggregate(entropy, mask, cfg.agg, **agg_kwargs)
        metrics["entropy"] = ent.detach()
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * ent
    elif cfg.entropy_coef > 0:
        raise ValueError("entropy_coef > 0 needs the per-token entropy")
    return loss, metrics
