"""The learner's side of colocated mode with real Megatron on gloo ranks (0 GPUs): the optimizer
state exists before the engines start (Megatron's Adam creates it lazily at the first step, after
the engines sized their memory), and `LearnerOffload` (learner.offload_during_rollout) frees the
gradient buffers and moves the optimizer state out and back between steps without changing a single
number: metrics and weights over three steps, a checkpoint saved while offloaded and loaded into an
offloaded learner, all equal to a learner that never offloads (the independent reference). How much
GPU memory it frees needs a GPU (tools/gpu_check.sh, docs/reliability.md).

    .venv/bin/pytest tests/integration/test_learner_offload.py
"""

from __future__ import annotations

import pytest
import torch
from distributed_utils import run_ranks
from test_learner_train_step import grpo_batch

pytestmark = pytest.mark.slow

STEPS = 3


def _learner(hf_dir: str, distributed_optimizer: bool):
    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    cfg = LearnerConfig(
        parallel=ParallelConfig(micro_batch_size=1, distributed_optimizer=distributed_optimizer),
        optimizer=OptimizerConfig(lr=1e-3, adam_eps=1e-3, grad_clip=1.0),
        vocab_pad_multiple=48,
        offload_during_rollout=True,
    )
    return Learner.from_hf(cfg, hf_dir, loss=LossConfig(clip_low=0.2, clip_high=0.28), temperature=0.9)


def _step(learner, step: int) -> dict:
    batch = grpo_batch(learner.arch.vocab_size)
    batch.advantages = batch.advantages * (1 + step)  # each step a different update
    logprobs = learner.compute_logprobs(batch)
    batch.old_logprobs = logprobs + 0.3 * torch.randn(
        logprobs.shape, generator=torch.Generator().manual_seed(step)
    )
    return learner.train_step(batch)


def _grad_bytes(learner) -> int:
    return sum(b.grad_data.untyped_storage().nbytes() for b in learner.model.buffers)


def _rank_body(rank: int, world: int, hf_dir: str, ckpt_root: str, distributed_optimizer: bool) -> dict:
    from megatron_s2l.learner.offload import _state_bytes, optimizer_parts, prepare_learner_for_colocation

    out: dict = {}
    # The reference: never offloaded, Adam state created lazily by the first step.
    plain = _learner(hf_dir, distributed_optimizer)
    state_before = sum(_state_bytes(p.optimizer) for p in optimizer_parts(plain.optimizer))
    out["plain"] = []
    for step in range(STEPS):
        out["plain"].append(_step(plain, step))
    out["plain_weights"] = dict(plain.iter_hf_weights())

    # Offloaded between steps, as Colocation does (reload after the release, offload before the sync).
    learner = _learner(hf_dir, distributed_optimizer)
    offload = prepare_learner_for_colocation(learner, colocate=True, offload=True)
    out["state_before_first_step"] = (
        state_before,
        sum(_state_bytes(p.optimizer) for p in optimizer_parts(learner.optimizer)),
    )
    out["grad_bytes_offloaded"] = _grad_bytes(learner)
    out["offloaded"] = []
    for step in range(STEPS):
        offload.reload()
        out.setdefault("grad_bytes_reloaded", _grad_bytes(learner))
        out["offloaded"].append(_step(learner, step))
        offload.offload()
        weights = dict(learner.iter_hf_weights())  # the weight sync reads the parameters now
        if step == 1:
            learner.save(f"{ckpt_root}/offloaded")  # saved from the host copies
    out["offloaded_weights"] = weights

    # A checkpoint loaded into an offloaded learner (a resumed colocated run), then step 3 again.
    resumed = _learner(hf_dir, distributed_optimizer)
    offload = prepare_learner_for_colocation(resumed, colocate=True, offload=True)
    resumed.load(f"{ckpt_root}/offloaded")
    offload.reload()
    out["resumed_last"] = _step(resumed, STEPS - 1)
    out["resumed_weights"] = dict(resumed.iter_hf_weights())
    return out


@pytest.mark.parametrize("world,distributed_optimizer", [(1, False), (2, True)], ids=["dp1", "dp2-distopt"])
def test_offload_between_steps_changes_nothing(
    tiny_qwen3_dirs, tmp_path, world, distributed_optimizer
) -> None:
    results = run_ranks(
        _rank_body, world, str(tiny_qwen3_dirs["tied"]), str(tmp_path), distributed_optimizer, timeout=400
    )
    for out in results:
        before, created = out["state_before_first_step"]
        assert before == 0, "Megatron's Adam has no state before the first step (why the init exists)"
        assert created > 0, "the optimizer state must exist before the engines start"
        assert out["grad_bytes_offloaded"] == 0 and out["grad_bytes_reloaded"] > 0
        assert out["offloaded"] == out["plain"], "offload/reload must not change any metric"
        assert out["resumed_last"] == out["plain"][-1], (
            "a checkpoint saved while offloaded must resume exactly"
        )
        for name in ("offloaded_weights", "resumed_weights"):
            assert out[name].keys() == out["plain_weights"].keys()
            for key, value in out["plain_weights"].items():
                assert torch.equal(out[name][key], value), (name, key)
