"""Parity of `megatron_s2l.kernels.logprobs_and_entropy` (Triton kernels in the interpreter, and the
torch path) with a float64 full-vocab reference, forward and backward, on fresh random inputs.

    TRITON_INTERPRET=1 .venv/bin/pytest tests/unit/test_kernels*.py -q

NUM_GPUS = 0. Relative errors are max |error| / max(max |reference|, floor).
"""

from __future__ import annotations

import os

import pytest
import torch

import megatron_s2l.kernels.logprobs as logprobs_mod
from megatron_s2l.kernels import logprobs_and_entropy
from megatron_s2l.kernels.logprobs import combine_triton
from megatron_s2l.kernels.reference import combine_torch

NUM_GPUS = 0
IGNORE = -100
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
"""bf16 dlogits carry their own rounding: < 2^-8 relative on a GPU (round to nearest), < 2^-7 in
the interpreter (its fp32 -> bf16 cast truncates)."""
BACKENDS = ["triton", "torch"]


@pytest.fixture(autouse=True)
def small_vocab_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """64-wide vocab blocks, so that vocab sizes in the hundreds run the block loop and its tail."""
    monkeypatch.setattr(logprobs_mod, "MAX_BLOCK_V", 64)


@pytest.fixture(autouse=True)
def fresh_seed() -> None:
    """Fresh random inputs every run; the seed is printed so that a failure can be replayed."""
    value = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(value)
    print(f"seed={value}")


def reference_logp_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64, full vocab, autograd; -inf logits and ignored targets are handled explicitly."""
    logp_all = torch.log_softmax(logits.double() / temperature, dim=-1)
    valid = targets != IGNORE
    logp = logp_all.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    p = logp_all.exp()
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(dim=-1)
    return torch.where(valid, logp, 0.0), torch.where(valid, entropy, 0.0)


def rel_err(actual: torch.Tensor, expected: torch.Tensor, floor: float = 1e-6) -> float:
    scale = max(expected.abs().max().item(), floor)
    return (actual.double() - expected.double()).abs().max().item() / scale


def check_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    backend: str,
    temperature: float = 1.0,
    tol: float | None = None,
    **kwargs,
) -> dict[str, float]:
    """Compare forward values and d(sum(a * logp + b * entropy))/dlogits with the reference."""
    tol = TOL[logits.dtype] if tol is None else tol
    x = logits.clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(x, targets, temperature, backend=backend, **kwargs)
    x64 = logits.detach().double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(x64, targets, temperature)
    a, b = torch.randn_like(ref_logp), torch.randn_like(ref_logp)
    (grad,) = torch.autograd.grad((logp * a + entropy * b).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref_logp * a + ref_entropy * b).sum(), x64)
    errs = {
        "logp": rel_err(logp, ref_logp, floor=1.0),
        "entropy": rel_err(entropy, ref_entropy, floor=1.0),
        "grad": rel_err(grad, ref_grad),
    }
    assert logp.dtype == entropy.dtype == torch.float32 and grad.dtype == logits.dtype
    assert all(err < tol for err in errs.values()), errs
    return errs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [257, 64, 31])
def test_matches_float64_reference(backend: str, dtype: torch.dtype, vocab: int) -> None:
    logits = (torch.randn(19, vocab) * 4).to(dtype)
    targets = torch.randint(0, vocab, (19,))
    targets[3] = IGNORE
    check_op(logits, targets, backend, temperature=0.7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend: str) -> None:
    """Rows offset by +-5000 with an O(1) spread (a real softmax far from 0, where lse = max +
    log-sum keeps x - max exact), rows spread over +-10^4 (one-hot softmax), -1e30 and -inf
    entries, a row whose only finite logit is the target, and a target with probability ~0."""
    vocab = 131
    logits = torch.randn(12, vocab) * 1e4
    logits[6:9] = 5e3 + torch.randn(3, vocab) * 3
    logits[9:] = -5e3 + torch.randn(3, vocab) * 3
    logits[0, :] = float("-inf")
    logits[0, 7] = 3.0
    logits[1, ::3] = -1e30
    logits[2, 1::2] = float("-inf")
    targets = torch.randint(0, vocab, (12,))
    targets[0] = 7
    targets[2] = 4  # a finite logit
    targets[3] = logits[3].argmin()
    errs = check_op(logits, targets, backend)
    print(errs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_targets_are_read_by_stride(backend: str) -> None:
    """Targets that are a strided view (a column of pairs, a transposed [S, B] block) are read at
    their strides, not as if contiguous."""
    logits = torch.randn(2, 9, 37) * 3
    pairs = torch.randint(0, 37, (18, 2))
    pairs[4, 0] = IGNORE
    check_op(logits.view(18, 37), pairs[:, 0], backend)
    block_SB = torch.randint(0, 37, (9, 2))
    check_op(logits, block_SB.t(), backend)  # [B, S] view of an [S, B] tensor


@pytest.mark.parametrize("ops", ["triton", "torch"])
def test_an_unused_output_gets_no_materialized_gradient(ops: str) -> None:
    """A loss of logp alone (entropy computed for a metric) hands the backward pass no zero-filled
    entropy gradient (the kernel then skips the entropy term); the logits' gradient stays right,
    also for a loss of the entropy alone."""
    import dataclasses

    from megatron_s2l.kernels.logprobs import TRITON_OPS, LogprobsEntropy
    from megatron_s2l.kernels.reference import TORCH_OPS

    base = TRITON_OPS if ops == "triton" else TORCH_OPS
    seen: list[tuple[bool, bool]] = []

    def recording(*args):
        seen.append((args[7] is None, args[8] is None))  # grad_logp_T, grad_entropy_T
        return base.logits_grad(*args)

    recorder = dataclasses.replace(base, logits_grad=recording)
    logits, targets = torch.randn(7, 45), torch.randint(0, 45, (7,))
    for pick in (0, 1):
        x = logits.clone().requires_grad_()
        outputs = LogprobsEntropy.apply(x, targets, 1.0, None, True, IGNORE, False, None, recorder)
        (grad,) = torch.autograd.grad(outputs[pick].sum(), x)
        x64 = logits.double().requires_grad_()
        (ref,) = torch.autograd.grad(reference_logp_entropy(x64, targets, 1.0)[pick].sum(), x64)
        assert rel_err(grad, ref) < TOL[torch.float32]
    assert seen == [(False, True), (False, False)]  # logp's gradient is always an input of the kernel


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_rows_give_zeros(backend: str) -> None:
    logits = torch.randn(6, 97)
    targets = torch.full((6,), IGNORE)
    x = logits.clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(x, targets, backend=backend)
    (logp.sum() + entropy.sum()).backward()
    assert not logp.any() and not entropy.any() and not x.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_first_layout_and_no_entropy(backend: str) -> None:
    """Megatron's [S, B, V] logits seen as [B, S, V] (a view, not a copy), logp only."""
    logits_SBV = torch.randn(7, 3, 75)
    targets_BS = torch.randint(0, 75, (3, 7))
    x = logits_SBV.clone().requires_grad_()
    logp_BS, entropy = logprobs_and_entropy(x.transpose(0, 1), targets_BS, 1.3, compute_entropy=False)
    assert entropy is None and logp_BS.shape == (3, 7)
    x64 = logits_SBV.double().transpose(0, 1).requires_grad_()
    ref_logp, _ = reference_logp_entropy(x64, targets_BS, 1.3)
    weights = torch.randn(3, 7)
    (grad,) = torch.autograd.grad((logp_BS * weights).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref_logp * weights).sum(), x64)
    assert rel_err(logp_BS, ref_logp, floor=1.0) < 1e-5
    assert rel_err(grad.transpose(0, 1), ref_grad) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_backward_writes_into_logits(backend: str) -> None:
    logits = torch.randn(10, 129).to(torch.bfloat16)
    targets = torch.randint(0, 129, (10,))
    leaf = logits.clone().requires_grad_()
    x = leaf * 1  # a non-leaf whose storage the op may reuse
    logp, entropy = logprobs_and_entropy(x, targets, backend=backend, inplace_backward=True)
    (logp.sum() - entropy.sum()).backward()
    expected = logits.clone().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(expected, targets)
    (ref_grad,) = torch.autograd.grad((ref_logp.sum() - ref_entropy.sum()), expected)
    assert rel_err(leaf.grad, ref_grad) < 1e-2
    assert leaf.grad.data_ptr() == x.data_ptr() or torch.equal(x.detach(), leaf.grad)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_triton_combine_matches_torch(ranks: int) -> None:
    """The combine kernel against the torch combination on raw per-rank statistics, including
    ranks whose shard is all -inf (max -inf, sums 0)."""
    tokens = 150  # more than one BLOCK_T
    stats = torch.randn(ranks, 4, tokens) * 3
    stats[:, 1] = stats[:, 1].abs() + 0.5
    if ranks > 1:  # a whole row of -inf logits has no softmax
        stats[0, 0, :40] = float("-inf")
        stats[0, 1:, :40] = 0.0
    targets = torch.randint(0, 9, (tokens,))
    targets[::7] = IGNORE
    for compute_entropy in (True, False):
        ours = combine_triton(stats, targets, IGNORE, compute_entropy)
        ref = combine_torch(stats, targets, IGNORE, compute_entropy)
        for a, b in zip(ours, ref, strict=True):
            assert rel_err(a, b, floor=1.0) < 1e-6


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="disagree"):
        logprobs_and_entropy(torch.randn(2, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        logprobs_and_entropy(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [37984, 151936, 4099])
def test_compiled_kernels_on_cuda(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, vocab: int) -> None:
    """The compiled (not interpreted) kernels at production block sizes and vocab shards."""
    monkeypatch.setattr(logprobs_mod, "MAX_BLOCK_V", 4096)
    logits = (torch.randn(64, vocab, device="cuda") * 4).to(dtype)
    targets = torch.randint(0, vocab, (64,), device="cuda")
    targets[5] = IGNORE
    logits[7, ::5] = float("-inf")
    check_op(logits, targets, "triton", temperature=0.7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True])
def test_padded_vocab_columns_are_skipped(backend: str, inplace: bool) -> None:
    """vocab_size < shard width: the padded columns (garbage here) behave as -inf logits."""
    real = 83
    logits = torch.randn(9, 100) * 3
    logits[:, real:] = 1e4  # would dominate the softmax if read
    targets = torch.randint(0, real, (9,))
    x = logits.clone().requires_grad_()
    y = x * 1 if inplace else x
    logp, entropy = logprobs_and_entropy(
        y, targets, 0.8, vocab_size=real, inplace_backward=inplace, backend=backend
    )
    (grad,) = torch.autograd.grad((logp + 0.5 * entropy).sum(), x)
    x64 = logits[:, :real].double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(x64, targets, 0.8)
    (ref_grad,) = torch.autograd.grad((ref_logp + 0.5 * ref_entropy).sum(), x64)
    assert rel_err(logp, ref_logp, floor=1.0) < 1e-5 and rel_err(entropy, ref_entropy, floor=1.0) < 1e-5
    assert rel_err(grad[:, :real], ref_grad) < 1e-5 and not grad[:, real:].any()


class MemoryOpCounter:
    """Counts the interpreter's block loads and stores of `width` elements, masked or not (a masked
    load on a GPU is vectorised only when its bound is known to be aligned; one row-long bound
    such as Qwen3's 151,669 is not)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, width: int) -> None:
        from triton.runtime.interpreter import InterpreterBuilder

        self.width, self.counts, self._unmasked = width, {}, False
        load, masked_load = InterpreterBuilder.create_load, InterpreterBuilder.create_masked_load
        store, masked_store = InterpreterBuilder.create_store, InterpreterBuilder.create_masked_store

        def unmasked(kind: str, fn):
            def wrapper(builder, ptr, *args):
                self._record(kind, "unmasked", ptr)
                self._unmasked = True  # the interpreter's unmasked ops call its masked ones
                try:
                    return fn(builder, ptr, *args)
                finally:
                    self._unmasked = False

            return wrapper

        def masked(kind: str, fn):
            def wrapper(builder, ptr, *args):
                if not self._unmasked:
                    self._record(kind, "masked", ptr)
                return fn(builder, ptr, *args)

            return wrapper

        monkeypatch.setattr(InterpreterBuilder, "create_load", unmasked("load", load))
        monkeypatch.setattr(InterpreterBuilder, "create_masked_load", masked("load", masked_load))
        monkeypatch.setattr(InterpreterBuilder, "create_store", unmasked("store", store))
        monkeypatch.setattr(InterpreterBuilder, "create_masked_store", masked("store", masked_store))

    def _record(self, kind: str, how: str, ptr) -> None:
        if ptr.data.shape == (self.width,):
            self.counts[kind, how] = self.counts.get((kind, how), 0) + 1


interpreter_only = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="counts the memory ops of Triton's interpreter"
)


@interpreter_only
@pytest.mark.parametrize("vocab", [5 * 64 + 3, 6 * 64 - 1, 6 * 64, 37])
def test_only_the_vocab_tail_block_is_masked(monkeypatch: pytest.MonkeyPatch, vocab: int) -> None:
    """Full BLOCK_V-wide blocks of a row are loaded and stored without a mask; only the one block
    past the last multiple of BLOCK_V (if any) is masked, forward and backward."""
    rows, block = 3, 64
    logits, targets = torch.randn(rows, vocab) * 3, torch.randint(0, vocab, (rows,))
    counter = MemoryOpCounter(monkeypatch, block)
    x = logits.clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(x, targets, backend="triton")
    (logp.sum() + entropy.sum()).backward()
    full, tail = vocab // block, int(vocab % block != 0)
    expected = {  # the forward pass and the backward pass each read every block once
        ("load", "unmasked"): 2 * rows * full,
        ("load", "masked"): 2 * rows * tail,
        ("store", "unmasked"): rows * full,
        ("store", "masked"): rows * tail,
    }
    assert counter.counts == {key: n for key, n in expected.items() if n}


def check_awkward_bound(
    width: int, vocab_size: int | None, backend: str, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> None:
    """logprobs_and_entropy over `width` columns of which the first `vocab_size` are real ids (the
    padded ones hold garbage that must not count), against float64; the last real id is a target."""
    real = width if vocab_size is None else vocab_size
    logits = torch.randn(3, width, device=device) * 3
    logits[:, real:] = 1e4
    logits = logits.to(dtype)
    targets = torch.randint(0, real, (3,), device=device)
    targets[0] = real - 1  # the last real id, in the masked tail block
    x = logits.clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(x, targets, 0.9, vocab_size=vocab_size, backend=backend)
    (grad,) = torch.autograd.grad((logp - 0.5 * entropy).sum(), x)
    x64 = logits[:, :real].double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(x64, targets, 0.9)
    (ref_grad,) = torch.autograd.grad((ref_logp - 0.5 * ref_entropy).sum(), x64)
    tol = 1e-5 if dtype == torch.float32 else TOL[dtype]
    assert rel_err(logp, ref_logp, floor=1.0) < 1e-5 and rel_err(entropy, ref_entropy, floor=1.0) < 1e-5
    assert rel_err(grad[:, :real], ref_grad) < tol and not grad[:, real:].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("width", "vocab_size", "max_block"),
    [
        (151936, 151669, 4096),
        (2 * 4096 + 1, None, 4096),
        (3 * 4096 - 1, None, 4096),
        (64 * 7 + 15, 64 * 7 + 1, 64),
    ],
    ids=["qwen3-151669", "block+1", "block-1", "pad-to-block+1"],
)
def test_awkward_vocab_bounds_match_reference(
    monkeypatch: pytest.MonkeyPatch, backend: str, width: int, vocab_size: int | None, max_block: int
) -> None:
    """Bounds 1 past and 1 short of a block boundary, and the Qwen3 tokenizer's 151,669 real ids in
    Megatron's 151,936-wide padded shard."""
    monkeypatch.setattr(logprobs_mod, "MAX_BLOCK_V", max_block)
    check_awkward_bound(width, vocab_size, backend)


def check_ignored_rows(
    backend: str, inplace: bool, dtype: torch.dtype = torch.float32, device: str = "cpu", vocab: int = 150
) -> None:
    """NaN / inf in the logits of ignored rows reach no output; those rows get zeros."""
    ignored = [1, 4, 7]
    logits = (torch.randn(8, vocab, device=device) * 3).to(dtype)
    targets = torch.randint(0, vocab, (8,), device=device)
    targets[ignored] = IGNORE
    poisoned = logits.clone()
    poisoned[1] = float("nan")
    poisoned[4] = float("inf")
    poisoned[7, ::2], poisoned[7, 1::2] = float("-inf"), float("nan")
    leaf = poisoned.clone().requires_grad_()
    x = leaf * 1 if inplace else leaf
    logp, entropy = logprobs_and_entropy(x, targets, 0.8, inplace_backward=inplace, backend=backend)
    a, b = torch.randn(8, device=device), torch.randn(8, device=device)
    (grad,) = torch.autograd.grad((logp * a + entropy * b).sum(), leaf)
    x64 = logits.double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(x64, targets, 0.8)
    (ref_grad,) = torch.autograd.grad((ref_logp * a + ref_entropy * b).sum(), x64)
    tol = 1e-5 if dtype == torch.float32 else TOL[dtype]
    assert torch.isfinite(logp).all() and torch.isfinite(entropy).all() and torch.isfinite(grad).all()
    assert rel_err(logp, ref_logp, floor=1.0) < 1e-5 and rel_err(entropy, ref_entropy, floor=1.0) < 1e-5
    assert rel_err(grad, ref_grad) < tol
    assert not logp[ignored].any() and not entropy[ignored].any() and not grad[ignored].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True])
def test_ignored_rows_are_neither_read_nor_propagated(backend: str, inplace: bool) -> None:
    """Rows whose target is ignore_index are skipped: NaN / inf in their logits reach neither the
    other rows nor any output; they get logp = entropy = 0 and a dlogits row of zeros."""
    check_ignored_rows(backend, inplace)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_rows_get_empty_shard_statistics(backend: str) -> None:
    """The statistics pass does not read an ignored row: its [4] statistics are those of a shard
    with no mass (max -inf, sums 0), whatever its logits hold (NaN here)."""
    from megatron_s2l.kernels.logprobs import select_ops

    logits = torch.randn(5, 70)
    logits[2] = float("nan")
    targets = torch.randint(0, 70, (5,))
    targets[2] = IGNORE
    stats = torch.full((4, 5), 123.0)
    select_ops(backend, logits).shard_stats(logits, targets, 0, 1.0, IGNORE, True, stats)
    assert stats[0, 2] == float("-inf") and not stats[1:, 2].any()
    assert torch.isfinite(stats[:, [0, 1, 3, 4]]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("width", "vocab_size"), [(151936, 151669), (76032, None), (19072, None)])
def test_awkward_bounds_and_ignored_rows_on_cuda(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, width: int, vocab_size: int | None
) -> None:
    """The compiled kernels at the learner's padded widths per TP rank (all of them end in a tail
    block of 4096), the Qwen3 tokenizer's 151,669 bound, and poisoned ignored rows."""
    monkeypatch.setattr(logprobs_mod, "MAX_BLOCK_V", 4096)
    check_awkward_bound(width, vocab_size, "triton", dtype, "cuda")
    check_ignored_rows("triton", True, dtype, "cuda", vocab=width)


@pytest.mark.gpu
def test_int64_offsets_past_2_31_elements_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """tokens x vocab > 2^31 (14,200 x 151,936 bf16: 4.3 GB of logits): rows whose offsets pass
    2^31 elements give the same logp, entropy and dlogits as float64 on those rows alone."""
    monkeypatch.setattr(logprobs_mod, "MAX_BLOCK_V", 4096)
    width, real = 151936, 151669
    tokens = 2**31 // width + 66
    assert tokens * width > 2**31
    logits = torch.empty(tokens, width, device="cuda", dtype=torch.bfloat16).normal_(0.0, 3.0)
    targets = torch.randint(0, real, (tokens,), device="cuda")
    a, b = torch.randn(tokens, device="cuda"), torch.randn(tokens, device="cuda")
    x = logits.requires_grad_()
    logp, entropy = logprobs_and_entropy(x, targets, vocab_size=real, backend="triton")
    (grad,) = torch.autograd.grad((logp * a + entropy * b).sum(), x)
    rows = torch.tensor(
        [0, 1, 2**31 // width - 1, 2**31 // width, 2**31 // width + 1, tokens - 2, tokens - 1]
    )
    x64 = logits.detach()[rows, :real].double().requires_grad_()
    ref_logp, ref_entropy = reference_logp_entropy(x64, targets[rows])
    (ref_grad,) = torch.autograd.grad((ref_logp * a[rows] + ref_entropy * b[rows]).sum(), x64)
    assert rel_err(logp[rows], ref_logp, floor=1.0) < 1e-5
    assert rel_err(entropy[rows], ref_entropy, floor=1.0) < 1e-5
    for i in range(len(rows)):  # row by row: each row's dlogits have their own scale
        assert rel_err(grad[rows[i], :real], ref_grad[i]) < TOL[torch.bfloat16], int(rows[i])
    assert not grad[:, real:].any()
