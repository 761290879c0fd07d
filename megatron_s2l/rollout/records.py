"""Typed records that cross from the rollout engines to the trainer (STYLE.md 2.7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_s2l.algo.seeds import stable_seed

Source = Literal["explorer", "learner"]
FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True, slots=True)
class SampleRequest:
    """One sample to generate: the `sample_index`-th response of prompt `prompt_id`."""

    prompt_id: str
    sample_index: int
    input_ids: list[int]
    seed: int | None = None
    """SGLang `sampling_seed`: the same seed gives the same sample (reproducible runs, exact resume;
    a re-sent request draws the same sample again). None: the engine's own randomness."""


def sample_seed(
    run_seed: int, step: int, sampling_round: int, source: str, prompt_id: str, index: int
) -> int:
    """A stable 63-bit seed for one sample. The sampling round (dynamic sampling draws more prompts
    in later rounds of a step) is part of it: a prompt drawn again in a later round of the same step
    gets new samples, not the ones it already had."""
    return stable_seed(run_seed, step, sampling_round, source, prompt_id, index)


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """One generated response and what the engine said about it."""

    prompt_id: str
    sample_index: int
    """Index of this sample within its source's share of the group (0..G_w-1 or 0..G_s-1)."""
    source: Source
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    """The engine's log-prob of each response token (logged; the learner recomputes its own)."""
    finish_reason: FinishReason
    weight_version: str
    """The engine's weight version when the response finished (`meta_info.weight_version`)."""


@dataclass(slots=True)
class RolloutGroup:
    """All G samples of one prompt: the explorer's first, then the learner's."""

    prompt_id: str
    records: list[RolloutRecord]


@dataclass(slots=True)
class RolloutBatch:
    """The sampler's answer for one step: complete groups and what it cost."""

    step: int
    g_explorer: int
    g_learner: int
    groups: list[RolloutGroup]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt of the batch, already tokenized (chat template applied)."""

    prompt_id: str
    input_ids: list[int]
