"""The chunked fused linear ops (`fused_linear_logprobs_and_entropy`, `fused_linear_grpo_loss`)
against float64 `hidden @ weight.T` + full-vocab reference, values and gradients of hidden and
weight, with chunks that do not divide the tokens.

    TRITON_INTERPRET=1 .venv/bin/pytest tests/unit/test_kernels_fused_linear.py -q

NUM_GPUS = 0.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels import IGNORE, TOL, fresh_seed, reference_logp_entropy, rel_err, small_vocab_blocks  # noqa: F401
from test_kernels_grpo import FULL

from megatron_s2l.algo.loss import grpo_loss
from megatron_s2l.kernels import default_chunk_size, fused_linear_grpo_loss, fused_linear_logprobs_and_entropy

NUM_GPUS = 0
HIDDEN = 24


def make_inputs(
    tokens: int, vocab: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = torch.randn(tokens, HIDDEN).to(dtype)
    weight = (torch.randn(vocab, HIDDEN) / HIDDEN**0.5 * 3).to(dtype)
    targets = torch.randint(0, vocab, (tokens,))
    targets[1] = IGNORE
    return hidden, weight, targets


def round_like(logits64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 logits rounded to `dtype` in value but differentiated as the identity: any bf16
    output layer (fused or not) hands bf16-rounded logits to the softmax."""
    return logits64 + (logits64.to(dtype).double() - logits64).detach()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [4, None], ids=["chunks-of-4", "default-chunk"])
def test_matches_unfused_float64(backend: str, dtype: torch.dtype, chunk_size: int | None) -> None:
    hidden, weight, targets = make_inputs(13, 257, dtype)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = fused_linear_logprobs_and_entropy(
        h, w, targets, 0.8, chunk_size=chunk_size, backend=backend
    )
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(round_like(h64 @ w64.T, dtype), targets, 0.8)
    a, b = torch.randn(13), torch.randn(13)
    grads = torch.autograd.grad((logp * a + entropy * b).sum(), (h, w))
    ref_grads = torch.autograd.grad((ref_logp * a + ref_entropy * b).sum(), (h64, w64))
    errs = [rel_err(logp, ref_logp, floor=1.0), rel_err(entropy, ref_entropy, floor=1.0)]
    errs += [rel_err(g, r) for g, r in zip(grads, ref_grads, strict=True)]
    assert all(g.dtype == dtype for g in grads)
    assert max(errs) < TOL[dtype], errs


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_linear_grpo_loss(backend: str) -> None:
    batch, seq, vocab = 3, 6, 131
    hidden = torch.randn(batch, seq, HIDDEN)
    weight = torch.randn(vocab, HIDDEN) / HIDDEN**0.5 * 3
    targets = torch.randint(0, vocab, (batch, seq))
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(h64 @ w64.T, targets)
    old = (ref_logp.detach() + 0.4 * torch.randn(batch, seq)).float()
    ref = (ref_logp.detach() + 0.3 * torch.randn(batch, seq)).float()
    adv, mask = torch.randn(batch), (torch.rand(batch, seq) < 0.8).float()
    ref_loss, _ = grpo_loss(
        FULL, ref_logp, old.double(), adv.double(), mask, ref_logprobs=ref.double(), entropy=ref_entropy
    )
    ref_grads = torch.autograd.grad(ref_loss, (h64, w64))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, metrics, _, _ = fused_linear_grpo_loss(
        h, w, targets, old, adv, mask, FULL, ref_logprobs=ref, chunk_size=5, backend=backend
    )
    grads = torch.autograd.grad(loss, (h, w))
    # Compared at the size of the summed terms (the loss with |advantages|), not of their
    # possibly cancelled sum: a floor of 1e-3 failed 8 of 1,500 random batches.
    scale, _ = grpo_loss(
        FULL, ref_logp, old.double(), adv.abs().double(), mask, ref_logprobs=ref.double(), entropy=ref_entropy
    )
    assert rel_err(loss, ref_loss, floor=abs(scale.item())) < 1e-5
    assert max(rel_err(g, r) for g, r in zip(grads, ref_grads, strict=True)) < 1e-5
    assert {"pg_loss", "kl", "entropy", "clipfrac_high"} <= metrics.keys()


def test_strided_targets_are_read_by_stride() -> None:
    """A strided view of targets (a column of pairs) gives the log-probs of those very targets."""
    hidden, weight, targets = make_inputs(13, 257, torch.float32)
    pairs = torch.stack([targets, torch.randint(0, 257, (13,))], dim=1)
    logp, _ = fused_linear_logprobs_and_entropy(hidden, weight, pairs[:, 0], chunk_size=4, backend="triton")
    ref_logp, _ = reference_logp_entropy((hidden.double() @ weight.double().T), targets, 1.0)
    assert rel_err(logp, ref_logp, floor=1.0) < TOL[torch.float32]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bf16_weight_gradient_does_not_drift_with_the_number_of_chunks(backend: str) -> None:
    """64 chunks give the bf16 weight gradient no more error (vs float64) than one chunk: each
    chunk's product is summed in fp32, not rounded to bf16 first (that added ~15% error here)."""
    hidden, weight, targets = make_inputs(512, 64, torch.bfloat16)
    h64, w64 = hidden.double(), weight.double().requires_grad_()
    ref_logp, _ = reference_logp_entropy(round_like(h64 @ w64.T, torch.bfloat16), targets, 1.0)
    (ref_grad,) = torch.autograd.grad(ref_logp.sum(), w64)
    errors = []
    for chunk_size in (512, 8):
        w = weight.clone().requires_grad_()
        logp, _ = fused_linear_logprobs_and_entropy(
            hidden, w, targets, chunk_size=chunk_size, compute_entropy=False, backend=backend
        )
        (grad,) = torch.autograd.grad(logp.sum(), w)
        assert grad.dtype == torch.bfloat16
        errors.append(((grad.double() - ref_grad).norm() / ref_grad.norm()).item())
    assert errors[1] <= 1.01 * errors[0], errors


def test_frozen_weight_gets_no_grad() -> None:
    hidden, weight, targets = make_inputs(9, 70, torch.float32)
    h = hidden.clone().requires_grad_()
    logp, _ = fused_linear_logprobs_and_entropy(h, weight, targets, chunk_size=4, backend="triton")
    logp.sum().backward()
    assert h.grad is not None and weight.grad is None


def test_default_chunk_size_bounds_chunk_logits_by_hidden() -> None:
    # 64k tokens, hidden 4096, vocab 151,936: chunks of logits no larger than the hidden states.
    chunk = default_chunk_size(65536, 4096, 151936)
    assert chunk % 64 == 0 and chunk * 151936 <= 65536 * 4096
    assert default_chunk_size(100, 4096, 151936) == 100
    assert default_chunk_size(10_000, 64, 151936) == 256


def test_padded_weight_rows_are_skipped() -> None:
    hidden, weight, targets = make_inputs(10, 90, torch.float32)
    real = 77
    targets = targets.clamp(max=real - 1)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = fused_linear_logprobs_and_entropy(h, w, targets, chunk_size=4, vocab_size=real)
    grads = torch.autograd.grad((logp + entropy).sum(), (h, w))
    h64, w64 = hidden.double().requires_grad_(), weight[:real].double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(h64 @ w64.T, targets)
    ref_grads = torch.autograd.grad((ref_logp + ref_entropy).sum(), (h64, w64))
    assert rel_err(logp, ref_logp, floor=1.0) < 1e-5 and rel_err(entropy, ref_entropy, floor=1.0) < 1e-5
    assert rel_err(grads[0], ref_grads[0]) < 1e-5 and rel_err(grads[1][:real], ref_grads[1]) < 1e-5
    assert not grads[1][real:].any()
