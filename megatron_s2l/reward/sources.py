"""Which reward function scores which data source (the `data_source` column of verl-format data)."""

from __future__ import annotations

from collections.abc import Callable

from megatron_s2l.reward.choice import CHOICE_WRONG, score_choice
from megatron_s2l.reward.gsm8k import GSM8K_WRONG, score_gsm8k
from megatron_s2l.reward.math_reward import (
    BOXED_WRONG,
    DAPO_WRONG,
    score_boxed,
    score_boxed_or_answer,
    score_dapo,
)
from megatron_s2l.reward.released_lenient import LENIENT_WRONG, score_released_lenient

ScoreFn = Callable[[str, str], dict[str, float | bool | str]]

# verl's routing (verl.utils.reward_score.default_compute_score) for the names it knows, except
# aime*, plus ours (synthetic_arith, math_boxed, commonsense_qa, s2l_released_lenient).
DAPO_SOURCES = ("math_dapo", "math", "math_dapo_reasoning", "synthetic_arith")
AIME_SOURCE_PREFIX = "aime"
"""Every source whose name starts with this (aime24, aime_2025, ...) gets `score_boxed_or_answer`
(+1 / -1), not verl's DAPO reward: the S2L-PO authors' plain AIME prompt draws a `\\boxed{}` answer,
which the DAPO reward never reads, and DAPO-prompted `Answer:` lines still score."""
BOXED_SOURCES = (
    "math_boxed",
    "lighteval/MATH",
    "DigitalLearningGmbH/MATH-lighteval",
    "HuggingFaceH4/MATH-500",
)
GSM8K_SOURCES = ("openai/gsm8k",)
CHOICE_SOURCES = ("commonsense_qa",)
RELEASED_LENIENT_SOURCE = "s2l_released_lenient"
"""The S2L-PO authors' released explorer check (1 / 0, substring matching: released_lenient.py); no
data set carries this name: `reward.explorer_source` selects it for explorer samples."""


def _route(data_source: str) -> tuple[ScoreFn, float]:
    """(reward function, score of a wrong answer) for a data source."""
    if data_source in DAPO_SOURCES:
        return score_dapo, DAPO_WRONG
    if data_source.startswith(AIME_SOURCE_PREFIX):
        return score_boxed_or_answer, DAPO_WRONG
    if data_source in BOXED_SOURCES:
        return score_boxed, BOXED_WRONG
    if data_source in GSM8K_SOURCES:
        return score_gsm8k, GSM8K_WRONG
    if data_source in CHOICE_SOURCES:
        return score_choice, CHOICE_WRONG
    if data_source == RELEASED_LENIENT_SOURCE:
        return score_released_lenient, LENIENT_WRONG
    known = ", ".join(
        DAPO_SOURCES + BOXED_SOURCES + GSM8K_SOURCES + CHOICE_SOURCES + (RELEASED_LENIENT_SOURCE,)
    )
    raise ValueError(
        f"unknown data source {data_source!r}: known sources are {known}, "
        f"and any name starting with {AIME_SOURCE_PREFIX!r}"
    )


def check_data_source(data_source: str) -> None:
    """Raise ValueError naming the supported sources when no reward function scores `data_source`."""
    _route(data_source)


def compute_score(data_source: str, solution_str: str, ground_truth: str) -> dict[str, float | bool | str]:
    """Score one response: {"score": float, "acc": bool, "pred": str}.

    No time limit here (see math_reward.py): score model output through `RewardScorer`.
    """
    score_fn, _ = _route(data_source)
    return score_fn(solution_str, ground_truth)


def wrong_answer_score(data_source: str) -> float:
    """The score a wrong (or missing, or timed-out) answer gets for this data source."""
    _, wrong = _route(data_source)
    return wrong
