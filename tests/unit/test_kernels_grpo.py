"""The fused GRPO loss (`fused_grpo_loss`) equals `grpo_loss` / `policy_loss` of float64 full-vocab
log-probs differentiated by autograd, in value, metrics and dlogits; and it costs one forward and
one backward pass over the logits.

    TRITON_INTERPRET=1 .venv/bin/pytest tests/unit/test_kernels_grpo.py -q

NUM_GPUS = 0.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_kernels import IGNORE, TOL, fresh_seed, reference_logp_entropy, rel_err, small_vocab_blocks  # noqa: F401

import megatron_s2l.kernels.logprobs as logprobs_mod
from megatron_s2l.algo.loss import LOSS_AGG_MODES, LossConfig, grpo_loss, policy_loss
from megatron_s2l.kernels import fused_grpo_loss
from megatron_s2l.kernels.common import ShardOps

NUM_GPUS = 0
FULL = LossConfig(clip_low=0.2, clip_high=0.28, clip_c=3.0, kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01)


def make_batch(batch: int, seq: int, vocab: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random logits and a rollout whose old log-probs sit near the current ones, so that some
    ratios fall outside the clip range and the dual clip."""
    logits = (torch.randn(batch, seq, vocab) * 2).to(dtype)
    targets = torch.randint(0, vocab, (batch, seq))
    logp, _ = reference_logp_entropy(logits, targets)
    mask = (torch.rand(batch, seq) < 0.8).float()
    mask[-1] = 0.0  # a fully masked sequence
    targets[-1, -3:] = IGNORE
    return {
        "logits": logits,
        "targets": targets,
        "old_logprobs": (logp + 0.4 * torch.randn(batch, seq)).float(),
        "advantages": torch.randn(batch),
        "mask": mask,
        "ref_logprobs": (logp + 0.3 * torch.randn(batch, seq)).float(),
    }


def reference_loss(data: dict[str, torch.Tensor], cfg: LossConfig, temperature: float, **kwargs):
    """(loss, metrics, dlogits) of grpo_loss on float64 log-probs, by autograd."""
    x64 = data["logits"].double().requires_grad_()
    logp, entropy = reference_logp_entropy(x64, data["targets"], temperature)
    loss, metrics = grpo_loss(
        cfg,
        logp,
        data["old_logprobs"].double(),
        data["advantages"].double(),
        data["mask"],
        ref_logprobs=data["ref_logprobs"].double(),
        entropy=entropy,
        **kwargs,
    )
    (grad,) = torch.autograd.grad(loss, x64)
    return loss, metrics, grad


def term_scale(data: dict[str, torch.Tensor], cfg: LossConfig, temperature: float, **kwargs) -> float:
    """The size of the per-token terms the loss sums: the reference loss with |advantages|."""
    positive = dict(data, advantages=data["advantages"].abs())
    loss, _, _ = reference_loss(positive, cfg, temperature, **kwargs)
    return abs(loss.item())


def run_fused(data: dict[str, torch.Tensor], cfg: LossConfig, temperature: float, backend: str, **kwargs):
    x = data["logits"].clone().requires_grad_()
    loss, metrics, logp, entropy = fused_grpo_loss(
        x,
        data["targets"],
        data["old_logprobs"],
        data["advantages"],
        data["mask"],
        cfg,
        ref_logprobs=data["ref_logprobs"],
        temperature=temperature,
        backend=backend,
        **kwargs,
    )
    (grad,) = torch.autograd.grad(loss, x)
    return loss, metrics, grad, logp, entropy


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
@pytest.mark.parametrize("full", [False, True], ids=["plain", "dualclip-k3-entropy"])
def test_fused_grpo_loss_matches_autograd(backend: str, agg: str, full: bool) -> None:
    cfg = dataclasses.replace(FULL if full else LossConfig(), agg=agg)
    data = make_batch(3, 7, 131, torch.float32)
    # micro_batches: the count token-mean-micro-batch divides by (the other modes ignore it).
    global_kwargs = {"global_tokens": 50, "global_seqs": 6, "micro_batches": 3} if full else {}
    ref_loss, ref_metrics, ref_grad = reference_loss(data, cfg, 0.9, **global_kwargs)
    loss, metrics, grad, logp, entropy = run_fused(data, cfg, 0.9, backend, **global_kwargs)
    # The loss sums per-token terms of both signs (advantages ~ N(0, 1)) and can cancel to far below
    # their size (-0.0021 seen); fp32 rounding is relative to the terms, not to the sum, so the loss
    # and pg_loss are compared at the scale of their terms: the same loss with every advantage made
    # positive, whose terms share a sign (a fixed floor of 1e-3 failed 5 of 1,500 random batches;
    # the per-token-advantage test below, 18 of 1,500).
    scale = term_scale(data, cfg, 0.9, **global_kwargs)
    assert rel_err(loss, ref_loss, floor=scale) < 1e-5
    assert rel_err(grad, ref_grad) < 1e-5
    assert metrics.keys() == ref_metrics.keys()
    # approx_kl averages log-ratios of both signs (std 0.4): 0.1 is below their mean size.
    floors = {"pg_loss": scale, "approx_kl": 0.1}
    for name, value in metrics.items():
        assert rel_err(value, ref_metrics[name], floor=floors.get(name, 1e-3)) < 1e-5, name
    assert not logp.requires_grad and not entropy.requires_grad and logp.shape == (3, 7)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_grpo_loss_bf16(backend: str) -> None:
    data = make_batch(3, 8, 193, torch.bfloat16)
    ref_loss, _, ref_grad = reference_loss(data, FULL, 1.0)
    loss, _, grad, _, _ = run_fused(data, FULL, 1.0, backend)
    assert grad.dtype == torch.bfloat16
    assert rel_err(loss, ref_loss, floor=term_scale(data, FULL, 1.0)) < TOL[torch.bfloat16]
    assert rel_err(grad, ref_grad) < TOL[torch.bfloat16]


def test_equals_policy_loss_with_per_token_advantages() -> None:
    """No KL, no entropy bonus: the loss is exactly `policy_loss` (advantages given per token)."""
    cfg = LossConfig(clip_high=0.28, clip_c=3.0, agg="seq-mean-token-mean")
    data = make_batch(3, 7, 101, torch.float32)
    data["advantages"] = torch.randn(3, 7)
    x64 = data["logits"].double().requires_grad_()
    logp, _ = reference_logp_entropy(x64, data["targets"])
    ref_loss, _ = policy_loss(
        logp,
        data["old_logprobs"].double(),
        data["advantages"].double(),
        data["mask"],
        clip_high=0.28,
        clip_c=3.0,
        agg="seq-mean-token-mean",
    )
    (ref_grad,) = torch.autograd.grad(ref_loss, x64)
    loss, _, grad, _, _ = run_fused(data, cfg, 1.0, "triton")
    assert rel_err(loss, ref_loss, floor=term_scale(data, cfg, 1.0)) < 1e-5
    assert rel_err(grad, ref_grad) < 1e-5


def test_one_forward_and_one_backward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loss with KL and entropy bonus: exactly one statistics pass and one gradient pass over the
    logits, the gradient pass carrying the entropy term."""
    calls: list[str] = []
    ops = logprobs_mod.TRITON_OPS

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls.append(name if name != "logits_grad" or args[8] is None else "logits_grad+entropy")
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        logprobs_mod,
        "TRITON_OPS",
        ShardOps(**{f.name: counted(f.name, getattr(ops, f.name)) for f in dataclasses.fields(ShardOps)}),
    )
    run_fused(make_batch(2, 5, 70, torch.float32), FULL, 1.0, "triton")
    assert calls == ["shard_stats", "combine", "logits_grad+entropy"]
