"""Micro-batch plans and the logits path of the real Megatron learner (gloo ranks, tiny Qwen3).

- Gradients (Megatron DDP's reduced buffers) and forward log-probs do not depend on how the global
  batch is cut: fixed-size micro-batches of 1 or 4 rows and token budgets of several sizes, at DP 1
  and DP 2, agree to float32 rounding (log-probs within 1e-6 relative, gradients within 2e-6 of each
  tensor's largest entry) for every loss aggregation mode (the normalisation is global).
- What reaches the log-prob op is the model's own output: bf16 (no fp32 copy), the full trimmed
  length (no [:, :-1] slice copy), the same storage, `inplace_backward` in training, and each
  micro-batch trimmed to its longest needed row.

    .venv/bin/pytest tests/integration/test_learner_micro_batches.py
"""

from __future__ import annotations

import pytest
import torch
from distributed_utils import run_ranks

pytestmark = pytest.mark.slow

AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# name -> (micro_batch_size, max_tokens_per_micro_batch)
PLANS = {
    "rows1": (1, None),
    "rows4": (4, None),
    "budget13": (1, 13),
    "budget40": (1, 40),
    "budget1k": (1, 1000),
}
LENGTHS = (24, 7, 15, 4, 19, 11, 22, 9)  # tokens that matter per row; the batch is padded to 30


def varied_batch(vocab_size: int):
    """8 rows, a 3-token prompt, responses ending at LENGTHS (then padding to 30 tokens)."""
    from megatron_s2l.learner.batch import TrainBatch

    generator = torch.Generator().manual_seed(11)
    input_ids = torch.randint(0, vocab_size, (len(LENGTHS), 30), generator=generator)
    loss_mask = torch.zeros(len(LENGTHS), 29)
    for row, length in enumerate(LENGTHS):
        loss_mask[row, 2 : length - 1] = 1.0
    advantages = torch.linspace(-1.0, 1.2, len(LENGTHS))
    return TrainBatch(input_ids=input_ids, loss_mask=loss_mask, advantages=advantages)


def _grad_body(rank: int, world_size: int, hf_dir: str) -> dict:
    import dataclasses

    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    # lr 1e-30: the optimizer steps leave every weight as it was, so each step's gradient is taken at
    # the same point (and read from the DDP buffer, which keeps it until the next step).
    cfg = LearnerConfig(parallel=ParallelConfig(), optimizer=OptimizerConfig(lr=1e-30, grad_clip=0.0))
    base_loss = LossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.1, entropy_coef=0.01)
    learner = Learner.from_hf(cfg, hf_dir, loss=base_loss, temperature=0.9)
    batch = varied_batch(learner.arch.vocab_size)
    noise = torch.Generator().manual_seed(5)
    out: dict = {"logprobs": {}, "grads": {}, "micro_batches": {}}
    for name, (rows, budget) in PLANS.items():
        cfg.parallel.micro_batch_size, cfg.parallel.max_tokens_per_micro_batch = rows, budget
        out["logprobs"][name] = learner.compute_logprobs(batch)
    logprobs = out["logprobs"]["rows1"]
    batch.old_logprobs = logprobs + 0.3 * torch.randn(logprobs.shape, generator=noise)
    batch.ref_logprobs = logprobs - 0.2 * torch.randn(logprobs.shape, generator=noise)
    for agg in AGGS:
        learner.loss = dataclasses.replace(base_loss, agg=agg)
        for name, (rows, budget) in PLANS.items():
            cfg.parallel.micro_batch_size, cfg.parallel.max_tokens_per_micro_batch = rows, budget
            metrics = learner.train_step(batch)
            out["micro_batches"][name] = metrics["micro_batches"]
            out["grads"][agg, name] = {
                n: p.main_grad.detach().clone() for n, p in learner.model.named_parameters()
            }
    return out


@pytest.fixture(scope="module")
def plans(tiny_qwen3_dirs) -> dict[int, dict]:
    """world size -> rank 0's log-probs and gradients under every plan and aggregation mode."""
    return {
        world: run_ranks(_grad_body, world, str(tiny_qwen3_dirs["untied"]), timeout=600)[0]
        for world in (1, 2)
    }


@pytest.mark.parametrize("world", [1, 2])
def test_logprobs_do_not_depend_on_the_plan(plans, world: int) -> None:
    reference = plans[1]["logprobs"]["rows1"]
    mask = torch.zeros_like(reference, dtype=torch.bool)
    for row, length in enumerate(LENGTHS):
        mask[row, 2 : length - 1] = True
    assert reference[mask].abs().min() > 0 and (reference[~mask] == 0).all()  # only masked positions
    for name, logprobs in plans[world]["logprobs"].items():
        torch.testing.assert_close(logprobs, reference, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("agg", AGGS)
def test_gradients_do_not_depend_on_the_plan(plans, world: int, agg: str) -> None:
    reference = plans[1]["grads"][agg, "rows1"]
    assert max(g.abs().max().item() for g in reference.values()) > 1e-3  # a real gradient
    for name in PLANS:
        grads = plans[world]["grads"][agg, name]
        assert grads.keys() == reference.keys()
        for param, grad in grads.items():
            # 2e-6 of the tensor's scale: float32 GEMMs of other batch shapes round differently (the
            # largest seen: 1.6e-6 of it, the embedding gradient with 4-row micro-batches).
            atol = 2e-6 * max(1.0, reference[param].abs().max().item())
            torch.testing.assert_close(grad, reference[param], rtol=0, atol=atol, msg=f"{name} {param}")


def test_token_budgets_make_fewer_micro_batches_than_rows(plans) -> None:
    counts = plans[1]["micro_batches"]
    assert counts["rows1"] == 8 and counts["rows4"] == 2
    assert counts["budget1k"] == 1  # 8 rows x 24 tokens fit in one
    assert counts["budget13"] > counts["budget40"] > counts["budget1k"]
    assert plans[2]["micro_batches"]["rows1"] == 4  # per DP rank


def _logits_body(rank: int, world_size: int, hf_dir: str) -> tuple[list[dict], list[dict]]:
    import megatron_s2l.learner.logprobs as logprobs_module
    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.model import unwrap_model
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    cfg = LearnerConfig(
        parallel=ParallelConfig(max_tokens_per_micro_batch=40),
        optimizer=OptimizerConfig(lr=1e-4),
        params_dtype="bfloat16",
    )
    learner = Learner.from_hf(cfg, hf_dir, loss=LossConfig(), temperature=1.0)
    outputs: list[torch.Tensor] = []
    unwrap_model(learner.model).register_forward_hook(lambda _m, _i, out: outputs.append(out))
    seen: list[dict] = []
    real_op = logprobs_module.logprobs_and_entropy

    def recording_op(logits, targets, *args, **kwargs):
        seen.append(
            {
                "dtype": logits.dtype,
                "shape": tuple(logits.shape),
                "is_model_output": logits is outputs[-1],
                "inplace_backward": kwargs["inplace_backward"],
                "ignored": (targets == logprobs_module.IGNORE_INDEX).sum().item(),
            }
        )
        return real_op(logits, targets, *args, **kwargs)

    logprobs_module.logprobs_and_entropy = recording_op
    batch = varied_batch(learner.arch.vocab_size)
    batch.old_logprobs = learner.compute_logprobs(batch)
    forward_calls = len(seen)
    learner.train_step(batch)
    return seen[:forward_calls], seen[forward_calls:]


def test_the_op_gets_the_models_own_bf16_logits(tiny_qwen3_dirs) -> None:
    forward, training = run_ranks(_logits_body, 1, str(tiny_qwen3_dirs["untied"]), timeout=300)[0]
    seen = forward + training
    assert seen and all(call["dtype"] == torch.bfloat16 for call in seen)  # no fp32 copy
    assert all(call["is_model_output"] for call in seen)  # no slice or cast in between
    # Forward pass (budget 80): rows sorted longest first, cut at the longest of each micro-batch.
    assert not any(call["inplace_backward"] for call in forward)
    assert all(call["inplace_backward"] for call in training)
    lengths = sorted(LENGTHS, reverse=True)
    assert [call["shape"][:2] for call in forward] == [(3, 24), (5, 15)]  # 3 x 24 <= 80 < 4 x 24
    assert sum(call["shape"][0] for call in training) == len(LENGTHS)
    assert max(call["shape"][0] * call["shape"][1] for call in training) <= 40
    assert training[0]["shape"][1] == lengths[0]
    # Ignored targets: the last position and everything outside the loss mask.
    padded = sum(call["shape"][0] * call["shape"][1] for call in forward)
    assert sum(call["ignored"] for call in forward) == padded - sum(length - 3 for length in LENGTHS)
