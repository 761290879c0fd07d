"""A few GRPO steps on a fixed batch lower the loss, and resuming from a checkpoint reproduces the
next step exactly, with a warmup + cosine LR schedule: DP=2 with the distributed optimizer (fp32),
and one rank in bf16 (Megatron's mixed-precision optimizer with fp32 main params, the GPU default).
Gloo ranks; needs 0 GPUs.

    .venv/bin/pytest tests/integration/test_learner_checkpoint.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from distributed_utils import run_ranks
from test_learner_train_step import grpo_batch

pytestmark = pytest.mark.slow


# name -> (world size, distributed optimizer, parameter dtype)
SETUPS = {"dp2-distopt-fp32": (2, True, "float32"), "dp1-bf16": (1, False, "bfloat16")}


def _rank_body(rank: int, world_size: int, hf_dir: str, ckpt_dir: str, distributed: bool, dtype: str):
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    cfg = LearnerConfig(
        parallel=ParallelConfig(micro_batch_size=1, distributed_optimizer=distributed),
        optimizer=OptimizerConfig(lr=1e-4, min_lr=1e-5, warmup_steps=2, decay_steps=10, lr_schedule="cosine"),
        params_dtype=dtype,
        vocab_pad_multiple=48,
        max_consecutive_skips=3,
    )
    learner = Learner.from_hf(cfg, hf_dir)
    batch = grpo_batch(learner.arch.vocab_size)
    batch.old_logprobs = learner.compute_logprobs(batch)
    history = []
    for step in range(1, 5):
        if step == 4:
            learner.save(ckpt_dir)
        history.append(learner.train_step(batch))
    expected_weights = dict(learner.iter_hf_weights())

    resumed = Learner.from_hf(cfg, hf_dir)  # fresh weights and optimizer, then the checkpoint
    resumed.load(ckpt_dir)
    resumed_step = resumed.step
    resumed_metrics = resumed.train_step(batch)
    resumed_weights = dict(resumed.iter_hf_weights())

    # A finite loss whose gradient is not (fault injection: a hook turns one weight's gradient into
    # NaN, as an overflow in backward would) skips the update too: the optimizer never sees it.
    from megatron_s2l.learner.learner import NonFiniteUpdatesError
    from megatron_s2l.learner.model import unwrap_model

    hook = next(unwrap_model(resumed.model).parameters()).register_hook(
        lambda g: torch.full_like(g, float("nan"))
    )
    grad_metrics = resumed.train_step(batch)
    hook.remove()
    untouched = all(torch.equal(t, resumed_weights[n]) for n, t in resumed.iter_hf_weights())
    grad_outcome = (
        grad_metrics["skipped"],
        math.isfinite(grad_metrics["loss"]),
        grad_metrics["grad_norm"],
        untouched,
    )

    # A non-finite loss (here: NaN advantages) skips the update and is reported, not applied; with
    # learner.max_consecutive_skips = 3 the third skip in a row stops the run with a clear error.
    batch.advantages = torch.full_like(batch.advantages, float("nan"))
    nan_metrics = resumed.train_step(batch)
    untouched = untouched and all(torch.equal(t, resumed_weights[n]) for n, t in resumed.iter_hf_weights())
    nan_outcome = (nan_metrics["skipped"], resumed.step, untouched)
    try:
        resumed.train_step(batch)
        stopped = ""
    except NonFiniteUpdatesError as error:
        stopped = str(error)
    return (
        history,
        expected_weights,
        resumed_step,
        resumed_metrics,
        resumed_weights,
        nan_outcome,
        grad_outcome,
        stopped,
    )


@pytest.fixture(scope="module", params=list(SETUPS))
def run(request, tiny_qwen3_dirs, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Path]:
    world, distributed, dtype = SETUPS[request.param]
    ckpt_dir = tmp_path_factory.mktemp("learner_ckpt") / "step3"
    # A crashed earlier save left a half-written directory behind: it must not get in the way.
    (ckpt_dir.parent / "step3.partial").mkdir()
    (ckpt_dir.parent / "step3.partial" / "junk.pt").write_bytes(b"truncated")
    hf_dir = str(tiny_qwen3_dirs["untied"])
    return run_ranks(_rank_body, world, hf_dir, str(ckpt_dir), distributed, dtype, timeout=400), ckpt_dir


def test_steps_lower_the_loss_with_warmup_lr(run) -> None:
    history = run[0][0][0]
    losses = [m["loss"] for m in history]
    print("GRPO loss per step:", losses)
    assert losses[-1] < losses[0] - 0.05
    assert history[0]["lr"] == pytest.approx(5e-5) and history[1]["lr"] == pytest.approx(1e-4)
    assert history[2]["lr"] < 1e-4  # cosine decay after warmup


def test_resume_reproduces_next_step_exactly(run) -> None:
    results, ckpt_dir = run
    assert ckpt_dir.exists() and not ckpt_dir.with_name("step3.partial").exists()
    for history, expected_weights, resumed_step, resumed_metrics, resumed_weights, *_ in results:
        assert resumed_step == 3
        assert resumed_metrics == history[3]  # loss, grad norm, lr: bit-identical
        assert resumed_weights.keys() == expected_weights.keys()
        for name, tensor in expected_weights.items():
            assert torch.equal(resumed_weights[name], tensor), name


def test_non_finite_loss_skips_the_update(run) -> None:
    for *_, (skipped, step, weights_untouched), _, _ in run[0]:
        assert skipped == 1.0 and step == 4 and weights_untouched


def test_non_finite_gradient_norm_skips_the_update(run) -> None:
    for *_, (skipped, loss_finite, grad_norm, weights_untouched), _ in run[0]:
        assert skipped == 1.0 and loss_finite and math.isnan(grad_norm) and weights_untouched


def test_consecutive_skips_stop_the_run(run) -> None:
    for *_, stopped in run[0]:
        assert "3 optimizer updates in a row were skipped" in stopped and "max_consecutive_skips" in stopped
