"""Sample n responses per evaluation prompt from an engine pool and score them: the one evaluation
path of `s2l eval` and of the evaluation inside a training run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from megatron_s2l.data import PromptDataset, prompt_id
from megatron_s2l.eval.metrics import avg_at_k, maj_at_k, pass_at_k
from megatron_s2l.reward import RewardScorer
from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.records import SampleRequest, sample_seed
from megatron_s2l.rollout.sampling_params import SamplingConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class ProblemResult:
    """The n scored samples of one evaluation prompt."""

    index: int
    data_source: str
    responses: list[str]
    predictions: list[str]
    """The answer each response gave, as its reward function read it ("" when none)."""
    correct: list[bool]


async def sample_and_score(
    client: RolloutClient,
    dataset: PromptDataset,
    tokenizer: PreTrainedTokenizerBase,
    scorer: RewardScorer,
    *,
    n: int,
    sampling: SamplingConfig,
    seed: int,
    step: int = 0,
) -> list[ProblemResult]:
    """`n` seeded samples of every prompt of `dataset`, decoded and scored, in dataset order."""
    requests = [
        SampleRequest(
            prompt_id("eval", i), j, dataset.prompt_ids[i], sample_seed(seed, step, 0, "eval", str(i), j)
        )
        for i in range(len(dataset))
        for j in range(n)
    ]
    records = await client.generate(requests, sampling)  # in request order
    texts = tokenizer.batch_decode([r.response_ids for r in records], skip_special_tokens=True)
    items = [(dataset[k // n].data_source, t, dataset[k // n].ground_truth) for k, t in enumerate(texts)]
    scores = scorer.score(items)
    return [
        ProblemResult(
            index=i,
            data_source=dataset[i].data_source,
            responses=texts[i * n : (i + 1) * n],
            predictions=[s.pred for s in scores[i * n : (i + 1) * n]],
            correct=[s.acc for s in scores[i * n : (i + 1) * n]],
        )
        for i in range(len(dataset))
    ]


def ks_up_to(n: int) -> list[int]:
    """The k of the pass@k curve: 1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def summarize(results: Sequence[ProblemResult], n: int) -> dict:
    """avg@n and its standard error over problems, unbiased pass@k for `ks_up_to(n)`, and maj@n,
    averaged over problems."""
    if not results:
        raise ValueError("no problems to summarize")
    count = len(results)
    per_problem = [avg_at_k(r.correct) for r in results]
    mean = sum(per_problem) / count
    # The noise band of avg@n: problems and samples both vary, and the per-problem means carry both.
    variance = sum((a - mean) ** 2 for a in per_problem) / (count - 1) if count > 1 else 0.0
    return {
        "problems": count,
        "avg@n": mean,
        "avg@n_se": math.sqrt(variance / count),
        "pass@k": {
            str(k): sum(pass_at_k(n, sum(r.correct), k) for r in results) / count for k in ks_up_to(n)
        },
        "maj@n": sum(maj_at_k(r.predictions, r.correct) for r in results) / count,
    }
