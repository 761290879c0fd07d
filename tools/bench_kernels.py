"""Benchmark the learner's log-prob path on one GPU: the fused log-prob / entropy op over vocab-parallel
logits, and the chunked fused linear op, against plain torch, torch.compile and Liger-Kernel.

    python tools/bench_kernels.py                                  # the default grid (< 4 min on an H100)
    python tools/bench_kernels.py --dtype fp32 --no-entropy --tokens 8192 --widths 76032
    python tools/bench_kernels.py --estimate-only                  # the grid's time estimate, no GPU needed
    TRITON_INTERPRET=1 python tools/bench_kernels.py --cpu-smoke   # tiny shapes on CPU (the plumbing only)

Shapes are what one learner rank sees: tokens x W, W the padded vocab per tensor-parallel rank
(Qwen3's 151,936 at TP 1, 76,032 / 38,016 / 19,072 at TP 2 / 4 / 8), the real ids bounded by
`--vocab-size` (the tokenizer's 151,669: only the TP 1 shard holds padded columns). Logits come in
`--dtype` (bf16: the model's output with fp32_output=False, what the learner passes; fp32: Megatron's
default fp32 output); `--no-entropy` drops the entropy (the training loss without an entropy bonus).

Implementations (rows), each timed in two modes: `fwd` (no graph: the learner's log-prob pass) and
`fwd+bwd` (forward and backward to the logits, or to hidden and weight for the linear rows):
  ours           megatron_s2l.kernels.logprobs_and_entropy (Triton)
  ours-inplace   the same with inplace_backward=True (dlogits written into the logits; fwd+bwd only)
  torch          fp32 log_softmax + gather (+ entropy), autograd
  torch.compile  torch.compile of that function (only at --compile-widths: each shape and mode is a
                 cold build of about a minute)
  liger-ce       Liger-Kernel's cross entropy (reduction="sum"), when `liger_kernel` is importable: the
                 closest op it has (log-probs only, never the entropy; its forward writes dlogits into
                 the logits' storage, like ours-inplace)
  linear+ours    hidden [T, H] @ weight [W, H]^T materialised in --dtype, then ours (inplace backward):
                 the learner's current output layer + op
  fused-linear   megatron_s2l.kernels.fused_linear_logprobs_and_entropy(hidden, weight, ...): chunks of
                 logits only, recomputed in backward
  liger-flce     Liger-Kernel's fused linear cross entropy (reduction="sum"), when importable

Per row: median time (CUDA events around each of --iters runs after --warmup), the peak memory
allocated above the inputs, the share of the row's floor reached, and the speed-up over its group's
baseline (torch for the logits rows, linear+ours for the linear rows). The floor is the compulsory
time at the rates measured at the start of the same run: logits rows move the logits once forward
and three times forward + backward (read, read, write) at the device-to-device copy bandwidth;
linear rows do 2 T H W (fwd) or 6 T H W (fwd+bwd) FLOPs at the bf16 / fp32 matmul rate.

Before timing, a correctness gate compares ours (and fused-linear) with a float64 reference on 256
tokens of the first width, ignored rows included, element by element: each element's error must be
within rtol of that element's own size (for dlogits: the sum of the sizes of the terms it is made of,
so that a cancellation between the log-prob and entropy terms is not blamed on the kernel). A
failing gate stops the run (exit status 1). Without CUDA the script exits with status 2 unless
--cpu-smoke or --estimate-only is given.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

GIB = 2**30
IGNORE = -100
WIDTHS = (151936, 76032, 38016, 19072)
"""Qwen3's padded vocab per rank at TP 1 / 2 / 4 / 8 (Megatron pads 151,669 to a multiple of 128 x TP)."""
QWEN3_VOCAB = 151669
LOGITS_IMPLS = ("ours", "ours-inplace", "torch", "torch.compile", "liger-ce")
LINEAR_IMPLS = ("linear+ours", "fused-linear", "liger-flce")
BASELINE = {impl: "torch" for impl in LOGITS_IMPLS} | {impl: "linear+ours" for impl in LINEAR_IMPLS}
MODES = ("fwd", "fwd+bwd")
Step = Callable[[], None]


# ---------------------------------------------------------------------------------------------------
# The grid and its time estimate (no GPU needed)


@dataclass(frozen=True, slots=True)
class Case:
    tokens: int
    width: int
    impl: str
    mode: str


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def build_grid(args: argparse.Namespace, with_liger: bool) -> list[Case]:
    """The rows to time, in order: per (tokens, width) the logits rows, then the linear rows. The
    in-place rows come last within their group (they overwrite the logits with dlogits)."""
    cases = []
    for tokens in args.tokens:
        for width in args.widths:
            impls = ["ours", "torch"]
            if width in args.compile_widths:
                impls.append("torch.compile")
            impls.append("ours-inplace")
            if with_liger:
                impls.append("liger-ce")
            if width in args.linear_widths:
                impls += ["linear+ours", "fused-linear"] + (["liger-flce"] if with_liger else [])
            for impl in impls:
                for mode in MODES:
                    if impl == "ours-inplace" and mode == "fwd":
                        continue  # its forward is ours'
                    cases.append(Case(tokens, width, impl, mode))
    return cases


def elem_size(dtype: str) -> int:
    return 2 if dtype == "bf16" else 4


def floor_work(case: Case, args: argparse.Namespace) -> tuple[float, float]:
    """(compulsory bytes, compulsory FLOPs) of one run of a case: what the floor is measured by."""
    elems = case.tokens * case.width
    if case.impl in LINEAR_IMPLS:
        return 0.0, (2 if case.mode == "fwd" else 6) * case.tokens * args.hidden * case.width
    return elems * elem_size(args.dtype) * (1 if case.mode == "fwd" else 3), 0.0


def modelled_work(case: Case, args: argparse.Namespace) -> tuple[float, float]:
    """(bytes, FLOPs) one run of a case is expected to cost: the estimate's traffic model. Bytes per
    logit, b the element size: ours b / 3b (fwd / fwd+bwd); plain torch upcasts to fp32 and makes
    about 12 (6 without entropy) fp32 passes forward and 21 (9) backward; torch.compile fuses them
    into about 2b / 4b + 8; Liger reads twice and writes dlogits in its forward. Linear rows: the
    matmuls (fused-linear recomputes the logits in backward: 8 T H W instead of 6)."""
    b = elem_size(args.dtype)
    entropy = not args.no_entropy
    elems = case.tokens * case.width
    fwd = case.mode == "fwd"
    per_logit = {
        "ours": b if fwd else 3 * b,
        "ours-inplace": 3 * b,
        "torch": (b + (48 if entropy else 24)) + (0 if fwd else b + (84 if entropy else 36)),
        "torch.compile": 2 * b if fwd else 4 * b + 8,
        "liger-ce": 2 * b if fwd else 3 * b,
        "linear+ours": b if fwd else 3 * b,
        "fused-linear": 0,
        "liger-flce": 0,
    }[case.impl]
    flops = 0.0
    if case.impl in LINEAR_IMPLS:
        matmuls = 1 if fwd else {"linear+ours": 3, "fused-linear": 4, "liger-flce": 3}[case.impl]
        flops = 2.0 * matmuls * case.tokens * args.hidden * case.width
    return float(per_logit * elems), flops


@dataclass(frozen=True, slots=True)
class Rates:
    """Device rates the estimate assumes (H100 SXM 80GB, as measured elsewhere: docs/design.md 4 gives
    about 3.0 TB/s read + write for a device copy; dense bf16 matmuls reach about 650 TFLOP/s)."""

    copy_bytes_per_s: float = 3.0e12
    matmul_flops: dict | None = None
    compile_build_s: float = 45.0
    """One cold torch.compile (inductor) build of one shape and mode."""
    triton_jit_s: float = 2.0
    """One Triton compile of a kernel specialisation."""
    fixed_s: float = 30.0
    """CUDA and library start-up, the rate probes, the correctness gate."""

    def flops(self, dtype: str) -> float:
        table = self.matmul_flops or {"bf16": 6.5e14, "fp32": 5.0e13}
        return table[dtype]


def estimate_seconds(cases: list[Case], args: argparse.Namespace, rates: Rates | None = None) -> float:
    """Wall-clock estimate of the grid: each case runs warmup + iters + 1 times (the last for its
    peak memory) at max(bytes / bandwidth, FLOPs / matmul rate) plus 50 us of launches, plus one
    cold build per torch.compile case, the Triton specialisations (forward and backward, for each
    dtype/entropy/tail combination met: about 6) and a fixed start-up."""
    rates = rates or Rates()
    total = rates.fixed_s + 6 * rates.triton_jit_s
    for case in cases:
        nbytes, flops = modelled_work(case, args)
        run_s = max(nbytes / rates.copy_bytes_per_s, flops / rates.flops(args.dtype)) + 50e-6
        total += (args.warmup + args.iters + 1) * run_s
        if case.impl == "torch.compile":
            total += rates.compile_build_s
    return total


# ---------------------------------------------------------------------------------------------------
# The implementations


def plain_torch(logits: torch.Tensor, targets: torch.Tensor, real: int, entropy: bool):
    """The unfused baseline: fp32 log_softmax over the real columns, gather, entropy; autograd."""
    logp_all = torch.log_softmax(logits[..., :real].float(), dim=-1)
    valid = targets != IGNORE
    logp = logp_all.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, 0.0)
    if not entropy:
        return logp, None
    return logp, -(logp_all.exp() * logp_all).sum(dim=-1)


def liger_functions():
    """(cross entropy, fused linear cross entropy) from Liger-Kernel's functional API."""
    from liger_kernel.transformers.functional import liger_cross_entropy, liger_fused_linear_cross_entropy

    return liger_cross_entropy, liger_fused_linear_cross_entropy


def _as_loss(out) -> torch.Tensor:
    """Liger returns a tensor, a tuple or an output object depending on its version."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list):
        return out[0]
    return out.loss


@dataclass
class Inputs:
    logits: torch.Tensor
    targets: torch.Tensor
    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    grad_logp: torch.Tensor
    grad_entropy: torch.Tensor


def make_inputs(tokens: int, width: int, with_linear: bool, args: argparse.Namespace, device) -> Inputs:
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    real = min(width, args.vocab_size)
    targets = torch.randint(0, real, (tokens,), device=device)
    targets[:: max(1, tokens // 16)] = IGNORE  # a few ignored positions, as in a real batch
    hidden = weight = None
    if with_linear:
        hidden = torch.randn(tokens, args.hidden, device=device, dtype=dtype)
        weight = torch.randn(width, args.hidden, device=device, dtype=dtype) * (2.0 / args.hidden**0.5)
    return Inputs(
        logits=(torch.randn(tokens, width, device=device) * 4).to(dtype),
        targets=targets,
        hidden=hidden,
        weight=weight,
        grad_logp=torch.randn(tokens, device=device),
        grad_entropy=torch.randn(tokens, device=device),
    )


def build_steps(cases: list[Case], inputs: Inputs, args: argparse.Namespace) -> dict[Case, Step]:
    """One closure per case running that mode once."""
    from megatron_s2l.kernels import fused_linear_logprobs_and_entropy, logprobs_and_entropy

    entropy = not args.no_entropy
    targets = inputs.targets
    vocab_size = args.vocab_size if args.vocab_size < inputs.logits.shape[1] else None
    real = min(inputs.logits.shape[1], args.vocab_size)
    kw = dict(compute_entropy=entropy, vocab_size=vocab_size, backend=args.backend)

    def backward(outputs: tuple, wrt: list[torch.Tensor]) -> None:
        outs = [o for o in outputs if o is not None]
        grads = [inputs.grad_logp, inputs.grad_entropy][: len(outs)]
        torch.autograd.grad(outs, wrt, grad_outputs=grads)

    compiled = None
    if any(c.impl == "torch.compile" for c in cases):
        torch._dynamo.reset()  # a fresh cache per shape (the recompile limit would stop the grid)
        compiled = torch.compile(plain_torch, dynamic=False)

    def logits_step(impl: str, mode: str) -> Step:
        def run(x: torch.Tensor):
            if impl in ("ours", "ours-inplace"):
                return logprobs_and_entropy(x, targets, inplace_backward=impl == "ours-inplace", **kw)
            if impl == "torch":
                return plain_torch(x, targets, real, entropy)
            if impl == "torch.compile":
                return compiled(x, targets, real, entropy)
            liger_ce, _ = liger_functions()
            return (-_as_loss(liger_ce(x[:, :real], targets, ignore_index=IGNORE, reduction="sum")),)

        def fwd() -> None:
            with torch.no_grad():
                run(inputs.logits)

        def fwd_bwd() -> None:
            # ours-inplace and Liger write dlogits into the logits' storage: later runs read those
            # (bounded values: the same work).
            leaf = inputs.logits.detach().requires_grad_()
            out = run(leaf)
            if impl == "liger-ce":
                torch.autograd.grad(out[0], leaf)
            else:
                backward(out, [leaf])

        return fwd if mode == "fwd" else fwd_bwd

    def linear_step(impl: str, mode: str) -> Step:
        def run(h: torch.Tensor, w: torch.Tensor):
            if impl == "linear+ours":
                return logprobs_and_entropy(h @ w.T, targets, inplace_backward=True, **kw)
            if impl == "fused-linear":
                return fused_linear_logprobs_and_entropy(h, w, targets, **kw)
            _, liger_flce = liger_functions()
            out = liger_flce(h, w[:real], targets, ignore_index=IGNORE, reduction="sum")
            return (-_as_loss(out),)

        def fwd() -> None:
            with torch.no_grad():
                run(inputs.hidden, inputs.weight)

        def fwd_bwd() -> None:
            h, w = inputs.hidden.detach().requires_grad_(), inputs.weight.detach().requires_grad_()
            out = run(h, w)
            if impl == "liger-flce":
                torch.autograd.grad(out[0], [h, w])
            else:
                backward(out, [h, w])

        return fwd if mode == "fwd" else fwd_bwd

    return {
        case: (linear_step if case.impl in LINEAR_IMPLS else logits_step)(case.impl, case.mode)
        for case in cases
    }


# ---------------------------------------------------------------------------------------------------
# Timing and memory


class Clock:
    """CUDA events on a GPU, the wall clock on CPU (--cpu-smoke)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, step: Step, warmup: int, iters: int) -> float:
        """Median seconds of one run of `step`."""
        for _ in range(warmup):
            step()
        times = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def peak_extra_bytes(self, step: Step) -> float:
        """Peak memory allocated during one run, above what was allocated before (nan on CPU)."""
        if not self.cuda:
            return float("nan")
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)


def measure_rates(clock: Clock, device: torch.device, dtype: str) -> tuple[float, float]:
    """(device-to-device copy bandwidth in bytes/s counting read + write, matmul FLOP/s in dtype)."""
    nbytes = 2 * GIB if clock.cuda else 16 * 2**20
    buffers = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(2)]
    copy_s = clock.time(lambda: buffers[1].copy_(buffers[0]), warmup=3, iters=10)
    buffers.clear()
    n = 8192 if clock.cuda else 256
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    mm_s = clock.time(lambda: a @ a, warmup=3, iters=10)
    return 2 * nbytes / copy_s, 2 * n**3 / mm_s


# ---------------------------------------------------------------------------------------------------
# The correctness gate


def per_element_violations(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor, rtol: float):
    """Elements with |actual - expected| > rtol * scale + tiny, scale being each element's own size;
    returns (count, worst ratio |error| / (rtol * scale))."""
    tiny = 4 * torch.finfo(torch.float32).tiny
    err = (actual.detach().double() - expected.detach().double()).abs()
    bound = rtol * scale.double() + tiny
    bad = ~(err <= bound)  # nan counts as bad
    return int(bad.sum()), float((err / bound).nan_to_num(float("inf")).max())


def reference_f64(logits: torch.Tensor, targets: torch.Tensor, real: int):
    """float64 (logp, entropy, logp_all) of the real columns; ignored rows give 0."""
    logp_all = torch.log_softmax(logits[:, :real].double(), dim=-1)
    valid = targets != IGNORE
    logp = torch.where(valid, logp_all.gather(-1, torch.where(valid, targets, 0)[:, None])[:, 0], 0.0)
    p = logp_all.exp()
    entropy = torch.where(valid, -(p * logp_all).sum(-1), 0.0)
    return logp, entropy, logp_all


def correctness_gate(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Ours and fused-linear against float64 on 256 tokens of the first width; one line per check,
    failures prefixed with FAIL."""
    from megatron_s2l.kernels import fused_linear_logprobs_and_entropy, logprobs_and_entropy

    tokens, width = min(256, max(args.tokens)), args.widths[0]
    inputs = make_inputs(tokens, width, True, args, device)
    real = min(width, args.vocab_size)
    vocab_size = args.vocab_size if args.vocab_size < width else None
    entropy_on = not args.no_entropy
    # bf16 dlogits: twice their rounding (2^-8 on a GPU; the interpreter truncates: 2^-7); fp32 arithmetic.
    rtol = 2.0**-6 if args.dtype == "bf16" else 1e-4
    targets, valid = inputs.targets, inputs.targets != IGNORE
    lines = []

    def check(name: str, actual, expected, scale, tol) -> None:
        count, worst = per_element_violations(actual, expected, scale, tol)
        status = "FAIL" if count else "ok"
        outside = f"{count} of {actual.numel()} elements outside rtol {tol:.1e}"
        lines.append(f"{status} {name}: {outside} (worst {worst:.2f})")

    x = inputs.logits.detach().requires_grad_()
    logp, entropy = logprobs_and_entropy(
        x, targets, compute_entropy=entropy_on, vocab_size=vocab_size, backend=args.backend
    )
    outs = [logp] + ([entropy] if entropy_on else [])
    (grad,) = torch.autograd.grad(outs, x, grad_outputs=[inputs.grad_logp, inputs.grad_entropy][: len(outs)])
    ref_logp, ref_entropy, logp_all = reference_f64(inputs.logits, targets, real)
    fp32_tol = 1e-4  # logp and entropy are fp32 whatever the logits' dtype
    check("ours logp", logp, ref_logp, ref_logp.abs(), fp32_tol)
    if entropy_on:
        check("ours entropy", entropy, ref_entropy, ref_entropy.abs(), fp32_tol)
    # dx = g (onehot - p) - h p (log p + H) (temperature 1): each element against the sizes of its terms.
    p = logp_all.exp()
    onehot = torch.zeros_like(p)
    rows = valid.nonzero()[:, 0]
    onehot[rows, targets[rows]] = 1.0
    g = torch.where(valid, inputs.grad_logp.double(), 0.0)[:, None]
    h = torch.where(valid, inputs.grad_entropy.double(), 0.0)[:, None] if entropy_on else torch.zeros_like(g)
    ref_grad = g * (onehot - p) - h * p * (logp_all + ref_entropy[:, None])
    scale = g.abs() * (onehot + p) + h.abs() * p * (logp_all.abs() + ref_entropy[:, None].abs())
    check("ours dlogits", grad[:, :real], ref_grad, scale, rtol)
    padded = grad[:, real:]
    lines.append(f"{'FAIL' if padded.any() else 'ok'} ours dlogits of padded columns are zero")

    # fused-linear against ours on the same (rounded) product: the same math, chunked.
    h_in, w_in = inputs.hidden.detach().requires_grad_(), inputs.weight.detach().requires_grad_()
    f_logp, f_entropy = fused_linear_logprobs_and_entropy(
        h_in, w_in, targets, compute_entropy=entropy_on, vocab_size=vocab_size, backend=args.backend
    )
    lin_rtol = 2.0**-6 if args.dtype == "bf16" else 1e-4
    product = (inputs.hidden @ inputs.weight.T).detach()
    m_logp, m_entropy = logprobs_and_entropy(
        product, targets, compute_entropy=entropy_on, vocab_size=vocab_size, backend=args.backend
    )
    check("fused-linear logp", f_logp, m_logp, m_logp.abs() + 1.0, lin_rtol)
    if entropy_on:
        check("fused-linear entropy", f_entropy, m_entropy, m_entropy.abs() + 1.0, lin_rtol)
    return lines


# ---------------------------------------------------------------------------------------------------
# The run


def bench_group(
    cases: list[Case],
    args: argparse.Namespace,
    clock: Clock,
    device: torch.device,
    rates: tuple[float, float],
) -> list[dict]:
    """All cases of one (tokens, width): one set of inputs, one row per case."""
    copy_bw, matmul_rate = rates
    with_linear = any(c.impl in LINEAR_IMPLS for c in cases)
    inputs = make_inputs(cases[0].tokens, cases[0].width, with_linear, args, device)
    steps = build_steps(cases, inputs, args)
    rows = []
    for case in cases:
        row = {
            "tokens": case.tokens,
            "width": case.width,
            "dtype": args.dtype,
            "entropy": not args.no_entropy,
        }
        row |= {"impl": case.impl, "mode": case.mode}
        try:
            seconds = clock.time(steps[case], args.warmup, args.iters)
            nbytes, flops = floor_work(case, args)
            floor_s = max(nbytes / copy_bw, flops / matmul_rate)
            row |= {"ms": seconds * 1e3, "peak_gib": clock.peak_extra_bytes(steps[case]) / GIB}
            row["pct_floor"] = 100 * floor_s / seconds
        except torch.cuda.OutOfMemoryError:
            row |= {"ms": float("nan"), "peak_gib": float("nan"), "pct_floor": float("nan")}
        if clock.cuda:
            torch.cuda.empty_cache()
        rows.append(row)
    baseline = {(r["impl"], r["mode"]): r["ms"] for r in rows}
    for row in rows:
        row["speedup"] = baseline.get((BASELINE[row["impl"]], row["mode"]), float("nan")) / row["ms"]
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as one fixed-width table (nan: out of memory or not measured)."""

    def num(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)

    header = (
        f"{'tokens':>7} {'width':>7} {'dtype':<5} {'ent':<3} {'impl':<14} {'mode':<8} {'ms':>9} "
        f"{'peak GiB':>9} {'% floor':>8} {'speedup':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ms = "OOM" if math.isnan(r["ms"]) else format(r["ms"], ".3f")
        lines.append(
            f"{r['tokens']:>7} {r['width']:>7} {r['dtype']:<5} {'yes' if r['entropy'] else 'no':<3} "
            f"{r['impl']:<14} {r['mode']:<8} {ms:>9} {num(r['peak_gib'], '.2f'):>9} "
            f"{num(r['pct_floor'], '.1f'):>8} {num(r['speedup'], '.2f'):>8}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="tokens per micro-batch (16384)")
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=None,
        help="padded vocab per TP rank (151936 76032 38016 19072)",
    )
    parser.add_argument("--vocab-size", type=int, default=QWEN3_VOCAB, help="real ids (the tokenizer's size)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="the logits' dtype")
    parser.add_argument("--no-entropy", action="store_true", help="log-probs only")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden size of the linear rows (Qwen3-8B)")
    parser.add_argument(
        "--compile-widths", type=int, nargs="*", default=None, help="default: the first width"
    )
    parser.add_argument(
        "--linear-widths", type=int, nargs="*", default=None, help="default: all widths in bf16, none in fp32"
    )
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    parser.add_argument("--no-liger", action="store_true", help="skip the Liger rows even if importable")
    parser.add_argument("--csv", help="append the rows to this CSV file")
    parser.add_argument("--estimate-only", action="store_true", help="print the grid and its time estimate")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny shapes on CPU (64 tokens, widths 301 and 150, 297 real ids): the script, not the speed",
    )
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.tokens, args.widths = args.tokens or [64], args.widths or [301, 150]
        args.hidden, args.vocab_size, args.iters, args.warmup = 32, 297, 1, 0
        args.compile_widths = args.compile_widths or []
    args.tokens, args.widths = args.tokens or [16384], args.widths or list(WIDTHS)
    if args.compile_widths is None:
        args.compile_widths = args.widths[:1]
    if (
        args.linear_widths is None
    ):  # fp32 matmuls run at a tenth of the bf16 rate and the learner trains in bf16
        args.linear_widths = list(args.widths) if args.dtype == "bf16" else []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with_liger = liger_available() and not args.no_liger
    cases = build_grid(args, with_liger)
    estimate = estimate_seconds(cases, args)
    print(
        f"grid: {len(cases)} rows, {sum(c.impl == 'torch.compile' for c in cases)} torch.compile builds; "
        f"estimated {estimate:.0f} s on an H100 (traffic model at 3.0 TB/s and 650 TFLOP/s bf16, "
        f"{Rates().compile_build_s:.0f} s per compile build; see estimate_seconds)"
    )
    print(
        f"liger_kernel: {'importable' if liger_available() else 'not importable'}"
        f"{' (rows skipped: --no-liger)' if liger_available() and args.no_liger else ''}"
    )
    if args.estimate_only:
        return 0
    if args.cpu_smoke:
        device = torch.device("cpu")
        if args.backend == "auto":
            args.backend = "triton" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    elif not torch.cuda.is_available():
        print(
            "bench_kernels: no CUDA device found; this benchmark needs a GPU (or --cpu-smoke).",
            file=sys.stderr,
        )
        return 2
    else:
        device = torch.device("cuda")
    torch.manual_seed(0)
    clock = Clock(device)
    gate = correctness_gate(args, device)
    print("correctness gate (per element, against float64):\n  " + "\n  ".join(gate))
    if any(line.startswith("FAIL") for line in gate):
        print("bench_kernels: the correctness gate failed; not timing.", file=sys.stderr)
        return 1
    rates = measure_rates(clock, device, args.dtype)
    name = torch.cuda.get_device_name() if clock.cuda else "cpu"
    print(
        f"device: {name}; copy bandwidth {rates[0] / 1e12:.2f} TB/s (read + write); "
        f"{args.dtype} matmul {rates[1] / 1e12:.1f} TFLOP/s; backend {args.backend}"
    )
    start = time.perf_counter()
    rows = []
    groups: dict[tuple[int, int], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.tokens, case.width), []).append(case)
    for group in groups.values():
        rows += bench_group(group, args, clock, device, rates)
    print(format_table(rows))
    print(f"timed in {time.perf_counter() - start:.0f} s (estimate {estimate:.0f} s)")
    if args.csv:
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if f.tell() == 0:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
