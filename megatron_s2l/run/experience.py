"""From a rollout batch to a train batch: decode, score, shape, group advantages, pad.

    scored = score_groups(rollout_batch.groups, prompts_by_id, tokenizer, scorer, algo, max_new_tokens)
    scored = keep_groups_with_signal(scored, "acc")  # DAPO dynamic sampling, when enabled
    experience = build_experience(scored, algo, pad_id)
    experience.batch        # TrainBatch for the learner (advantages over each group as sampled)
    experience.metrics      # rewards, accuracy and lengths by source, advantage statistics

The advantage of every sample is relative to its whole group (explorer + learner samples in
Algorithm 1's combined groups; one source's alone in a half-step of `schedule.mode: alternating`);
the explorer's samples are trained on like the learner's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_s2l.algo import AlgoConfig, groups_with_signal, grpo_advantages, overlong_penalty
from megatron_s2l.algo.config import FilterMetric
from megatron_s2l.data import PromptRecord
from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.reward import RewardScorer
from megatron_s2l.rollout.records import RolloutGroup, RolloutRecord

SOURCES = ("explorer", "learner")


@dataclass(slots=True)
class Experience:
    batch: TrainBatch
    records: list[RolloutRecord]
    """The samples in batch row order."""
    rewards: torch.Tensor
    """[B] shaped rewards (what the advantages were computed from)."""
    correct: torch.Tensor
    """[B] bool: the reward function's verdict."""
    metrics: dict[str, float]


@dataclass(slots=True)
class ScoredGroups:
    groups: list[RolloutGroup]
    rewards: list[list[float]]
    correct: list[list[bool]]
    timed_out: int
    """Responses whose scoring ran past `reward.timeout_s` (scored as wrong)."""
    failed: int = 0
    """Responses whose scoring failed: the reward function raised or its worker died (scored as wrong)."""


def cut_response(record: RolloutRecord, max_tokens: int) -> RolloutRecord:
    """`record` with its response cut to `max_tokens` tokens (then finished by `length`); unchanged
    when it is no longer."""
    if len(record.response_ids) <= max_tokens:
        return record
    return dataclasses.replace(
        record,
        response_ids=record.response_ids[:max_tokens],
        logprobs=record.logprobs[:max_tokens],
        finish_reason="length",
    )


def score_groups(
    groups: Sequence[RolloutGroup],
    prompts: dict[str, PromptRecord],
    tokenizer,
    scorer: RewardScorer,
    algo: AlgoConfig,
    max_new_tokens: int,
    *,
    explorer_train_max_new_tokens: int | None = None,
) -> ScoredGroups:
    """Reward every sample (decoded response text vs the prompt's ground truth), plus DAPO overlong
    shaping when `algo.overlong_buffer` > 0.

    Explorer samples: cut to `explorer_train_max_new_tokens` (None: kept whole) in the groups
    returned, which are what is trained on; scored on the whole response when
    `scorer.cfg.explorer_full_response`, else on the cut one; scored by the reward function of
    `scorer.cfg.explorer_source` when set, else by their prompt's data source."""
    reward_cfg = scorer.cfg
    whole = [r for g in groups for r in g.records]
    if explorer_train_max_new_tokens is not None:
        groups = [
            RolloutGroup(
                g.prompt_id,
                [
                    cut_response(r, explorer_train_max_new_tokens) if r.source == "explorer" else r
                    for r in g.records
                ],
            )
            for g in groups
        ]
    records = [r for g in groups for r in g.records]
    scored_records = [
        w if r.source == "explorer" and reward_cfg.explorer_full_response else r
        for w, r in zip(whole, records, strict=True)
    ]
    texts = tokenizer.batch_decode([r.response_ids for r in scored_records], skip_special_tokens=True)

    def source_of(record: RolloutRecord) -> str:
        if record.source == "explorer" and reward_cfg.explorer_source is not None:
            return reward_cfg.explorer_source
        return prompts[record.prompt_id].data_source

    items = [
        (source_of(r), text, prompts[r.prompt_id].ground_truth)
        for r, text in zip(records, texts, strict=True)
    ]
    results = scorer.score(items)
    scores = torch.tensor([res.score for res in results])
    if algo.overlong_buffer > 0:
        lengths = torch.tensor([len(r.response_ids) for r in records])
        scores = scores + overlong_penalty(
            lengths, max_new_tokens, algo.overlong_buffer, algo.overlong_penalty_factor
        )
    rewards, correct, start = [], [], 0
    for group in groups:
        end = start + len(group.records)
        rewards.append(scores[start:end].tolist())
        correct.append([res.acc for res in results[start:end]])
        start = end
    timed_out, failed = sum(res.timed_out for res in results), sum(res.failed for res in results)
    return ScoredGroups(list(groups), rewards, correct, timed_out, failed)


def keep_groups_with_signal(scored: ScoredGroups, metric: FilterMetric) -> ScoredGroups:
    """DAPO dynamic sampling: drop groups whose `metric` ("acc": the verdicts, "reward": the shaped
    scores) is the same for every sample (all right or all wrong: no learning signal)."""
    values = scored.correct if metric == "acc" else scored.rewards
    flat = torch.tensor([float(v) for vs in values for v in vs])
    index = torch.tensor([g for g, vs in enumerate(values) for _ in vs])
    keep_sample = groups_with_signal(flat, index) if flat.numel() else torch.zeros(0, dtype=torch.bool)
    keep = sorted({int(g) for g in index[keep_sample].tolist()})
    return ScoredGroups(
        [scored.groups[g] for g in keep],
        [scored.rewards[g] for g in keep],
        [scored.correct[g] for g in keep],
        scored.timed_out,
        scored.failed,
    )


def build_experience(scored: ScoredGroups, algo: AlgoConfig, pad_id: int) -> Experience:
    """Advantages over each combined group, then one right-padded TrainBatch."""
    records = [r for g in scored.groups for r in g.records]
    rewards = torch.tensor([r for rs in scored.rewards for r in rs])
    correct = torch.tensor([c for cs in scored.correct for c in cs])
    group_index = torch.tensor([g for g, rs in enumerate(scored.rewards) for _ in rs])
    advantages = grpo_advantages(rewards, group_index, norm_by_std=algo.norm_adv_by_std)
    batch = TrainBatch.from_sequences(
        [r.prompt_ids for r in records], [r.response_ids for r in records], advantages, pad_id=pad_id
    )
    if algo.rollout_correction == "tis":
        batch.rollout_logprobs = learner_engine_logprobs(records, batch.loss_mask.shape)
    return Experience(batch, records, rewards, correct, _metrics(records, rewards, correct, advantages))


def learner_engine_logprobs(records: list[RolloutRecord], shape: torch.Size) -> torch.Tensor:
    """[B, L-1] the learner engine's log-probs of each learner sample's response tokens, in the
    TrainBatch layout (column t: token t + 1); NaN elsewhere (prompts, padding, explorer samples,
    which truncated importance sampling leaves alone)."""
    out = torch.full(shape, float("nan"))
    for row, record in enumerate(records):
        if record.source == "learner":
            start = len(record.prompt_ids) - 1
            out[row, start : start + len(record.logprobs)] = torch.tensor(record.logprobs)
    return out


def _metrics(
    records: list[RolloutRecord], rewards: torch.Tensor, correct: torch.Tensor, advantages: torch.Tensor
) -> dict[str, float]:
    lengths = torch.tensor([len(r.response_ids) for r in records], dtype=torch.float32)
    metrics = {
        "reward/mean": rewards.mean().item(),
        "acc/mean": correct.float().mean().item(),
        "adv/mean": advantages.mean().item(),
        "adv/abs_mean": advantages.abs().mean().item(),
        "adv/zero_frac": (advantages == 0).float().mean().item(),
        "response_len/mean": lengths.mean().item(),
        "response_len/truncated_frac": sum(r.finish_reason == "length" for r in records) / len(records),
    }
    for source in SOURCES:
        rows = torch.tensor([r.source == source for r in records])
        if rows.any():
            metrics[f"reward/{source}"] = rewards[rows].mean().item()
            metrics[f"acc/{source}"] = correct[rows].float().mean().item()
            metrics[f"response_len/{source}"] = lengths[rows].mean().item()
            metrics[f"rollout/tokens_{source}"] = lengths[rows].sum().item()
            # About 0 for a source alone in its groups (alternating half-steps); in combined groups,
            # how much better than its group's mean each source did.
            metrics[f"adv/{source}_mean"] = advantages[rows].mean().item()
    return metrics


def engine_logprob_gaps(
    experience: Experience, learner_logprobs: torch.Tensor, learner_logprobs_explorer_t: torch.Tensor | None
) -> dict[str, float]:
    """Mean (engine log-prob - learner log-prob) over each source's response tokens, both at the
    temperature that source was sampled at (SGLang returns log-probs of the temperature-scaled
    distribution): `learner_logprobs` at the learner's, `learner_logprobs_explorer_t` at the
    explorer's (None: not computed this step, no explorer gap).

    For learner samples this is the train/inference mismatch (about 0 when both run the same
    weights); for explorer samples it is how much likelier the explorer finds its own tokens than
    the learner does (a per-token estimate of KL(explorer || learner) on the explorer's samples).
    """
    sums = {s: 0.0 for s in SOURCES}
    counts = {s: 0 for s in SOURCES}
    for row, record in enumerate(experience.records):
        start = len(record.prompt_ids) - 1
        reference = learner_logprobs_explorer_t if record.source == "explorer" else learner_logprobs
        if reference is None:  # not computed this step (logging.explorer_gap_every)
            continue
        learner = reference[row, start : start + len(record.logprobs)]
        sums[record.source] += (torch.tensor(record.logprobs) - learner).sum().item()
        counts[record.source] += len(record.logprobs)
    names = {
        "explorer": "explorer/engine_minus_learner_logprob",
        "learner": "mismatch/engine_minus_learner_logprob",
    }
    return {names[s]: sums[s] / counts[s] for s in SOURCES if counts[s]}
