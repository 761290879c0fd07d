"""Benchmark the learner's two GPU phases of a GRPO step on a Qwen3-shaped model in bf16, through the
same Megatron path as training (GPTModel, DDP, Megatron Adam, pipeline schedule). Random weights.

    python tools/bench_learner_step.py --shape qwen3-0.6b --batch 8 --seq-len 2048 --steps 3
    python tools/bench_learner_step.py --shape qwen3-8b --num-layers 4      # 8B widths on one GPU
    torchrun --nproc-per-node 2 tools/bench_learner_step.py --shape qwen3-1.7b --tp 2
    python tools/bench_learner_step.py --cpu-smoke                          # a tiny model on CPU

`--num-layers N` keeps every width of the shape (hidden, MLP, heads, the 151,936-wide vocab: the
output layer and the log-prob op run at full size) and builds only N decoder layers, so that the
8B and 14B shapes fit on one GPU; per-layer costs scale by L / N to the full model.

Phases, each timed over --steps runs after one warm-up run, with the peak memory of its runs:
  logprob   the forward-only log-prob pass (`grpo_step.compute_logprobs`: the old log-probs)
  train     `grpo_step.train_step`: forward, backward and the optimizer step
Prints one table: median and min time, tokens/s per GPU, model TFLOP/s per GPU (2 or 6 x the
matmul weights x tokens: attention scores not counted), peak memory. Needs CUDA unless
--cpu-smoke (a 2-layer, 64-wide model in fp32 on CPU: checks the script, not the speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch

from megatron_s2l.archs import bundled_names, load_arch

GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", choices=bundled_names(), default="qwen3-0.6b", help="a bundled architecture"
    )
    parser.add_argument(
        "--num-layers", type=int, default=None, help="decoder layers to build (default: the shape's)"
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences per global batch")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-batch")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument(
        "--prompt-len", type=int, default=None, help="tokens outside the loss (default: a quarter)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed runs per phase (after one warm-up)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--recompute", action="store_true", help="recompute activations in backward")
    parser.add_argument("--entropy-coef", type=float, default=0.0, help="> 0: the loss computes the entropy")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="token budget per micro-batch (learners that have one)"
    )
    parser.add_argument(
        "--fused-output", action="store_true", help="learner.fused_output_layer: no whole logits tensor"
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny model in fp32 on CPU")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.batch, args.seq_len, args.steps = min(args.batch, 2), min(args.seq_len, 32), 1
    if args.prompt_len is None:
        args.prompt_len = args.seq_len // 4
    if not 0 < args.prompt_len < args.seq_len:
        parser.error("--prompt-len must be between 1 and --seq-len - 1")
    return args


def bench_arch(args: argparse.Namespace):
    """The shape with --num-layers layers (or the tiny CPU model)."""
    arch = load_arch(args.shape)
    if args.cpu_smoke:
        arch = dataclasses.replace(
            arch,
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        )
    if args.num_layers is not None:
        arch = dataclasses.replace(arch, num_hidden_layers=args.num_layers)
    return arch


def build_learner(args: argparse.Namespace, arch):
    """Random-weight stage wrapped exactly as `Learner.from_hf` wraps a loaded one."""
    from megatron_s2l.learner.hf_config import build_transformer_config
    from megatron_s2l.learner.learner import LearnerConfig, wrap_for_training
    from megatron_s2l.learner.model import build_gpt_model, return_hidden_states
    from megatron_s2l.learner.parallel import ParallelConfig, init_distributed

    dtype_name = "float32" if args.cpu_smoke else "bfloat16"
    cfg = LearnerConfig(
        parallel=ParallelConfig(
            tensor_parallel=args.tp, pipeline_parallel=args.pp, micro_batch_size=args.micro_batch
        ),
        params_dtype=dtype_name,
        recompute_activations=args.recompute,
    )
    init_distributed(
        cfg.parallel,
        num_layers=arch.num_hidden_layers,
        num_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
    )
    tf_config = build_transformer_config(
        arch, cfg.parallel, params_dtype=getattr(torch, dtype_name), recompute_activations=args.recompute
    )
    model = build_gpt_model(arch, tf_config, vocab_pad_multiple=cfg.vocab_pad_multiple)
    if args.fused_output:
        return_hidden_states(model)
    return wrap_for_training(cfg, tf_config, model)


class PhaseTimer:
    """Wall-clock time of each run (synchronised on CUDA) and the peak memory over a phase's runs."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def run(self, fn, runs: int) -> tuple[list[float], float]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            if self.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / GIB if self.cuda else float("nan")
        return times, peak


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'phase':<8} {'median ms':>10} {'min ms':>10} {'tokens/s/GPU':>13} {'TFLOP/s/GPU':>12} "
        f"{'peak GiB':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['phase']:<8} {r['median_ms']:>10.1f} {r['min_ms']:>10.1f} {r['tokens_per_s']:>13.0f} "
            f"{r['tflops']:>12.1f} {r['peak_gib']:>9.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print(
            "bench_learner_step: needs a CUDA GPU (none found; or --cpu-smoke); nothing was run.",
            file=sys.stderr,
        )
        return 2
    import torch.distributed as dist

    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.batch import TrainBatch
    from megatron_s2l.learner.grpo_step import compute_logprobs, train_step

    arch = bench_arch(args)
    model, optimizer, scheduler = build_learner(args, arch)
    static_gib = torch.cuda.memory_allocated() / GIB if cuda else float("nan")
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, arch.vocab_size, (args.batch, args.seq_len), generator=generator)
    loss_mask = torch.zeros(args.batch, args.seq_len - 1)
    loss_mask[:, args.prompt_len - 1 :] = 1.0  # the response tokens
    batch = TrainBatch(
        input_ids=input_ids, loss_mask=loss_mask, advantages=torch.randn(args.batch, generator=generator)
    )
    common = dict(
        vocab_size=arch.vocab_size,
        micro_batch_size=args.micro_batch,
        max_tokens=args.max_tokens,
        fused_output=args.fused_output,
    )
    loss_cfg = LossConfig(entropy_coef=args.entropy_coef)

    def logprob_pass() -> torch.Tensor:
        logp_KBT, _ = compute_logprobs(model, batch, temperatures=[1.0], **common)
        return logp_KBT[0]

    batch.old_logprobs = logprob_pass()  # also the warm-up of the log-prob pass
    metrics = {}

    def train() -> None:
        metrics.update(train_step(model, optimizer, scheduler, batch, loss_cfg, temperature=1.0, **common))

    train()  # warm-up (allocations, optimizer states)
    timer = PhaseTimer(cuda)
    world = dist.get_world_size()
    tokens = args.batch * args.seq_len
    weights = arch.matmul_params()
    rows = []
    for phase, fn, flops_per_token in (("logprob", logprob_pass, 2 * weights), ("train", train, 6 * weights)):
        times, peak = timer.run(fn, args.steps)
        step_s = statistics.median(times)
        rows.append(
            {
                "phase": phase,
                "median_ms": step_s * 1e3,
                "min_ms": min(times) * 1e3,
                "tokens_per_s": tokens / step_s / world,
                "tflops": flops_per_token * tokens / step_s / world / 1e12,
                "peak_gib": peak,
            }
        )
    if dist.get_rank() == 0:
        device = torch.cuda.get_device_name() if cuda else "cpu (smoke: not a speed)"
        print(
            f"{args.shape} layers={arch.num_hidden_layers} hidden={arch.hidden_size} vocab={arch.vocab_size} "
            f"{'bf16' if cuda else 'fp32'} tp={args.tp} pp={args.pp} world={world} "
            f"batch={args.batch}x{args.seq_len} (prompt {args.prompt_len}) micro={args.micro_batch} "
            f"max_tokens={args.max_tokens} fused_output={args.fused_output} "
            f"recompute={args.recompute} entropy_coef={args.entropy_coef} "
            f"on {device}"
        )
        print(f"memory after building (weights, gradient buffers, optimizer copies): {static_gib:.2f} GiB")
        print(format_table(rows))
        print(f"last train step: loss {metrics['loss']:.4f}, grad_norm {metrics['grad_norm']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
