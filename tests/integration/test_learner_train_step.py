"""One GRPO train step at TP=2, PP=2, DP=2 (distributed optimizer) and TP=2 x PP=2 (4 ranks) gives
the same metrics and updated weights as TP=1/PP=1/DP=1 on the same global batch, for token-mean and
(at DP=2) seq-mean-token-mean and token-mean-micro-batch aggregation. Gloo ranks, tied-embedding
tiny Qwen3, so PP=2 also exercises the embedding-gradient reduction between the stages. Needs 0 GPUs.

    .venv/bin/pytest tests/integration/test_learner_train_step.py
"""

from __future__ import annotations

import pytest
import torch
from distributed_utils import run_ranks

pytestmark = pytest.mark.slow

# name -> (tensor_parallel, pipeline_parallel, world size, distributed optimizer, micro-batch size,
#          loss aggregation); each name ending in a mode is compared with "reference-<mode>".
LAYOUTS = {
    "reference": (1, 1, 1, False, 1, "token-mean"),
    "tp2": (2, 1, 2, False, 2, "token-mean"),
    "pp2": (1, 2, 2, False, 1, "token-mean"),
    "dp2-distopt": (1, 1, 2, True, 1, "token-mean"),
    "tp2-pp2": (2, 2, 4, False, 1, "token-mean"),
    "reference-seq-mean-token-mean": (1, 1, 1, False, 1, "seq-mean-token-mean"),
    "dp2-seq-mean-token-mean": (1, 1, 2, False, 1, "seq-mean-token-mean"),
    # verl's per-micro-batch token mean: the same micro-batches of 2 rows ([0, 1], [2, 3]) as two
    # micro-batches of one rank, or one on each of two DP ranks, must give the same step.
    "reference-token-mean-micro-batch": (1, 1, 1, False, 2, "token-mean-micro-batch"),
    "dp2-token-mean-micro-batch": (1, 1, 2, False, 2, "token-mean-micro-batch"),
}


def grpo_batch(vocab_size: int):
    """4 right-padded sequences (3 prompt tokens, varied response lengths), old log-probs TBD."""
    from megatron_s2l.learner.batch import TrainBatch

    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, vocab_size, (4, 12), generator=generator)
    loss_mask = torch.ones(4, 11)
    loss_mask[:, :2] = 0  # prompt tokens do not count
    loss_mask[1, 7:] = 0  # a short response: right padding
    loss_mask[3, 9:] = 0
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.3])
    return TrainBatch(input_ids=input_ids, loss_mask=loss_mask, advantages=advantages)


def _rank_body(rank: int, world_size: int, hf_dir: str, layouts: list[tuple]) -> list:
    """Run one step per layout, one after another in the same ranks."""
    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    results = []
    for tp, pp, _, distributed_optimizer, micro_batch_size, agg in layouts:
        cfg = LearnerConfig(
            parallel=ParallelConfig(
                tensor_parallel=tp,
                pipeline_parallel=pp,
                micro_batch_size=micro_batch_size,
                distributed_optimizer=distributed_optimizer,
            ),
            # adam_eps 1e-3: Adam's first step is ~sign(grad), which turns float32 rounding in
            # near-zero gradients into lr-sized differences; a large eps keeps the update a smooth
            # function of the gradient, so scaling errors still show (grad_norm is compared too).
            optimizer=OptimizerConfig(lr=1e-3, adam_eps=1e-3, grad_clip=1.0),
            vocab_pad_multiple=48,
        )
        loss = LossConfig(clip_low=0.2, clip_high=0.28, clip_c=3.0, kl_coef=0.1, entropy_coef=0.01, agg=agg)
        learner = Learner.from_hf(cfg, hf_dir, loss=loss, temperature=0.9)
        batch = grpo_batch(learner.arch.vocab_size)
        logprobs = learner.compute_logprobs(batch)
        noise = torch.Generator().manual_seed(5)
        # Off-policy old log-probs so that ratios differ from 1 and some tokens are clipped.
        batch.old_logprobs = logprobs + 0.3 * torch.randn(logprobs.shape, generator=noise)
        batch.ref_logprobs = logprobs - 0.2 * torch.randn(logprobs.shape, generator=noise)
        metrics = learner.train_step(batch)
        results.append((metrics, dict(learner.iter_hf_weights())))
    return results


@pytest.fixture(scope="module")
def results(tiny_qwen3_dirs) -> dict[str, tuple[dict, dict]]:
    """name -> (metrics, full HF weights after the step); one spawn per world size."""
    out = {}
    for world in (1, 2, 4):
        names = [n for n, layout in LAYOUTS.items() if layout[2] == world]
        layouts = [LAYOUTS[n] for n in names]
        per_rank = run_ranks(_rank_body, world, str(tiny_qwen3_dirs["tied"]), layouts, timeout=400)
        for i, name in enumerate(names):
            weights: dict[str, torch.Tensor] = {}
            for rank_results in per_rank:
                weights.update(rank_results[i][1])
            out[name] = (per_rank[0][i][0], weights)
    return out


def test_reference_step_changes_weights(results, tiny_qwen3_dirs) -> None:
    from megatron_s2l.learner.hf_loader import SafetensorsSource

    metrics, weights = results["reference"]
    source = SafetensorsSource(tiny_qwen3_dirs["tied"])
    moved = max((weights[name] - source.read(name)).abs().max().item() for name in weights)
    assert moved > 1e-4  # the comparisons below are far above float32 noise
    assert metrics["clipfrac_high"] + metrics["clipfrac_low"] > 0  # clipping is exercised
    assert metrics["kl"] > 0 and metrics["entropy"] > 0 and metrics["skipped"] == 0
    # Unequal response lengths: the two aggregations give different losses, so both are tested.
    assert abs(results["reference-seq-mean-token-mean"][0]["loss"] - metrics["loss"]) > 1e-3
    assert abs(results["reference-token-mean-micro-batch"][0]["loss"] - metrics["loss"]) > 1e-3


@pytest.mark.parametrize("name", [n for n in LAYOUTS if not n.startswith("reference")])
def test_parallel_step_matches_reference(name: str, results) -> None:
    agg = LAYOUTS[name][5]
    ref_metrics, ref_weights = results["reference" if agg == "token-mean" else f"reference-{agg}"]
    metrics, weights = results[name]
    for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm", "lr"):
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-5, abs=1e-6), key
    assert weights.keys() == ref_weights.keys()
    max_diff = max((weights[n] - ref_weights[n]).abs().max().item() for n in ref_weights)
    print(f"{name}: max |weight - reference| after one step = {max_diff:.2e}")
    assert max_diff <= 1e-5
