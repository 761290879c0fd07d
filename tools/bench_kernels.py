"""Benchmark the fused log-prob / entropy kernels against plain torch and torch.compile on one GPU.

    .venv/bin/python tools/bench_kernels.py                       # the full grid, one table
    .venv/bin/python tools/bench_kernels.py --tokens 4096 --vocab 37984 --csv bench.csv

For each shape (tokens x vocab/tp, bf16 logits) and mode (fwd: forward only; fwd+bwd: forward and
backward), it times each implementation (median over --iters runs, CUDA events), records the peak
memory above the inputs, and the share of the memory-bandwidth floor reached: the op's bytes (fwd
reads the logits once; backward reads them once more and writes dlogits once) over the
device-to-device copy bandwidth measured at the start of the same run. Implementations:
  ours           megatron_s2l.kernels.logprobs_and_entropy (Triton)
  ours-inplace   the same, dlogits written into the logits' storage
  torch          fp32 log_softmax + gather + entropy (kernels.reference.logprobs_and_entropy_plain)
  torch.compile  torch.compile of that same function
Needs a CUDA device; exits with status 2 and a message otherwise.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Callable

import torch

from megatron_s2l.kernels import logprobs_and_entropy
from megatron_s2l.kernels.reference import logprobs_and_entropy_plain

GIB = 2**30
Step = Callable[[], None]


def measure_copy_bandwidth(nbytes: int = 2 * GIB, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of `iters` copies."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = time_step(lambda: dst.copy_(src), warmup=3, iters=iters)
    return 2 * nbytes / seconds


def time_step(step: Step, warmup: int, iters: int) -> float:
    """Median seconds of `step`, each run timed by its own pair of CUDA events."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def peak_extra_bytes(step: Step) -> int:
    """Peak memory allocated during one run of `step`, above what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def build_steps(logits_TV: torch.Tensor, targets_T: torch.Tensor) -> list[tuple[str, str, Step]]:
    """(impl, mode, closure running that mode once); ours-inplace comes last because it overwrites
    the logits with dlogits (bounded values, so its own later runs time the same work)."""
    grads = [torch.randn(targets_T.shape[0], device="cuda") for _ in range(2)]
    torch._dynamo.reset()  # a fresh compile per shape; 6 shapes x 2 modes would pass the recompile limit
    compiled = torch.compile(logprobs_and_entropy_plain, dynamic=False)
    impls = {
        "ours": lambda x: logprobs_and_entropy(x, targets_T),
        "torch": lambda x: logprobs_and_entropy_plain(x, targets_T),
        "torch.compile": lambda x: compiled(x, targets_T),
        "ours-inplace": lambda x: logprobs_and_entropy(x, targets_T, inplace_backward=True),
    }

    def forward(fn: Callable) -> Step:
        def step() -> None:
            with torch.no_grad():
                fn(logits_TV)

        return step

    def forward_backward(fn: Callable) -> Step:
        def step() -> None:
            x = logits_TV.requires_grad_()
            logp, entropy = fn(x)
            torch.autograd.grad([logp, entropy], x, grad_outputs=grads)
            x.requires_grad_(False)

        return step

    steps = []
    for name, fn in impls.items():
        if name != "ours-inplace":  # its forward is ours'
            steps.append((name, "fwd", forward(fn)))
        steps.append((name, "fwd+bwd", forward_backward(fn)))
    return steps


def check_against_torch(tokens: int, vocab: int) -> float:
    """Max relative error of ours against the fp32 torch path (values and dlogits) on one shape:
    the compiled kernels' sanity check before any timing."""
    x = (torch.randn(tokens, vocab, device="cuda") * 4).to(torch.bfloat16).requires_grad_()
    targets_T = torch.randint(0, vocab, (tokens,), device="cuda")
    grads = [torch.randn(tokens, device="cuda") for _ in range(2)]
    errs = []
    outs = [fn(x, targets_T) for fn in (logprobs_and_entropy, logprobs_and_entropy_plain)]
    dlogits = [torch.autograd.grad(list(out), x, grad_outputs=grads)[0].float() for out in outs]
    for ours, ref in [*zip(*outs, strict=True), dlogits]:
        errs.append(((ours - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item())
    return max(errs)


def bench_shape(tokens: int, vocab: int, args: argparse.Namespace, copy_bw: float) -> list[dict]:
    logits_TV = torch.randn(tokens, vocab, device="cuda", dtype=torch.bfloat16) * 4
    targets_T = torch.randint(0, vocab, (tokens,), device="cuda")
    logits_bytes = logits_TV.numel() * logits_TV.element_size()
    rows = []
    baseline: dict[str, float] = {}
    for impl, mode, step in build_steps(logits_TV, targets_T):
        floor_bytes = logits_bytes * (1 if mode == "fwd" else 3)
        row = {"tokens": tokens, "vocab": vocab, "impl": impl, "mode": mode}
        try:
            seconds = time_step(step, args.warmup, args.iters)
            row |= {
                "ms": seconds * 1e3,
                "peak_gib": peak_extra_bytes(step) / GIB,
                "pct_floor": 100 * floor_bytes / copy_bw / seconds,
            }
        except torch.cuda.OutOfMemoryError:
            row |= {"ms": float("nan"), "peak_gib": float("nan"), "pct_floor": float("nan")}
        torch.cuda.empty_cache()
        if impl == "torch":
            baseline[mode] = row["ms"]
        rows.append(row)
    for row in rows:
        row["vs_torch"] = baseline.get(row["mode"], float("nan")) / row["ms"]
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'tokens':>7} {'vocab/tp':>9} {'impl':<14} {'mode':<8} {'ms':>9} {'peak GiB':>9} "
    print(header + f"{'% floor':>8} {'x torch':>8}")
    for r in rows:
        ms = "OOM" if r["ms"] != r["ms"] else f"{r['ms']:.3f}"
        print(
            f"{r['tokens']:>7} {r['vocab']:>9} {r['impl']:<14} {r['mode']:<8} {ms:>9} "
            f"{r['peak_gib']:>9.2f} {r['pct_floor']:>8.1f} {r['vs_torch']:>8.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--vocab", type=int, nargs="+", default=[151936, 37984], help="vocab per TP rank")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--csv", help="append the rows to this CSV file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device found; this benchmark needs a GPU.", file=sys.stderr)
        return 2
    err = check_against_torch(1024, args.vocab[0])
    print(f"max relative error of ours vs fp32 torch (1024 x {args.vocab[0]}, bf16): {err:.2e}")
    if err > 1e-2:
        print("bench_kernels: the kernels disagree with the torch path; not timing them.", file=sys.stderr)
        return 1
    copy_bw = measure_copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {copy_bw / 1e12:.2f} TB/s (read + write)")
    rows = []
    for tokens in args.tokens:
        for vocab in args.vocab:
            rows += bench_shape(tokens, vocab, args, copy_bw)
    print_table(rows)
    if args.csv:
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if f.tell() == 0:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
