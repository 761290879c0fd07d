"""The S2L-PO algorithm: schedule, GRPO advantages, the policy loss and its extras. Pure tensor code."""

from megatron_s2l.algo.advantages import grpo_advantages
from megatron_s2l.algo.config import AlgoConfig
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
    select_masked,
)
from megatron_s2l.algo.ppo import mean_over_updates, ppo_mini_batch_rows
from megatron_s2l.algo.schedule import (
    ScheduleConfig,
    ScheduleRow,
    StepRollout,
    s2l_alpha,
    s2l_schedule,
    s2l_split,
    step_rollouts,
)

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "AlgoConfig",
    "LossConfig",
    "ScheduleConfig",
    "ScheduleRow",
    "StepRollout",
    "aggregate",
    "entropy_from_logits",
    "groups_with_signal",
    "grpo_advantages",
    "grpo_loss",
    "kl_penalty",
    "masked_mean",
    "mean_over_updates",
    "overlong_penalty",
    "policy_loss",
    "ppo_mini_batch_rows",
    "s2l_alpha",
    "s2l_schedule",
    "s2l_split",
    "select_masked",
    "step_rollouts",
]
