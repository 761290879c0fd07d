"""Rewards: rule-based scoring of responses by data source, and a time-limited process pool for it."""

from megatron_s2l.reward.scorer import RewardConfig, RewardResult, RewardScorer
from megatron_s2l.reward.sources import (
    AIME_SOURCE_PREFIX,
    BOXED_SOURCES,
    CHOICE_SOURCES,
    DAPO_SOURCES,
    GSM8K_SOURCES,
    RELEASED_LENIENT_SOURCE,
    check_data_source,
    compute_score,
    wrong_answer_score,
)

__all__ = [
    "AIME_SOURCE_PREFIX",
    "BOXED_SOURCES",
    "CHOICE_SOURCES",
    "DAPO_SOURCES",
    "GSM8K_SOURCES",
    "RELEASED_LENIENT_SOURCE",
    "RewardConfig",
    "RewardResult",
    "RewardScorer",
    "check_data_source",
    "compute_score",
    "wrong_answer_score",
]
