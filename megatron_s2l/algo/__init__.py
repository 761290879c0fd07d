"""The S2L-PO algorithm: schedule, GRPO advantages, the policy loss and its extras. Pure tensor code."""

from megatron_s2l.algo.advantages import grpo_advantages
from megatron_s2l.algo.filters import groups_with_signal, overlong_penalty
from megatron_s2l.algo.loss import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    LossConfig,
    aggregate,
    entropy_from_logits,
    grpo_loss,
    kl_penalty,
    masked_mean,
    policy_loss,
)
from megatron_s2l.algo.schedule import ScheduleRow, s2l_alpha, s2l_schedule, s2l_split

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "LossConfig",
    "ScheduleRow",
    "aggregate",
    "entropy_from_logits",
    "groups_with_signal",
    "grpo_advantages",
    "grpo_loss",
    "kl_penalty",
    "masked_mean",
    "overlong_penalty",
    "policy_loss",
    "s2l_alpha",
    "s2l_schedule",
    "s2l_split",
]
