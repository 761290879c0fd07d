"""Benchmark one GRPO learner step (forward, backward, optimizer) of a Qwen3-shaped model in bf16 on
GPU, through the same Megatron path as training (GPTModel, DDP, Megatron Adam, pipeline schedule).
Random weights; prints per-step time, tokens/s and peak GPU memory. Refuses to run without CUDA.

    python tools/bench_learner_step.py --shape qwen3-0.6b --batch 8 --seq-len 2048 --steps 5
    torchrun --nproc-per-node 2 tools/bench_learner_step.py --shape qwen3-1.7b --tp 2
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from megatron_s2l.archs import bundled_names, load_arch


# Architecture of released Qwen3 models (vocab 151936, head_dim 128); weights are random here.
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", choices=bundled_names(), default="qwen3-0.6b", help="a bundled architecture"
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences per global batch")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-batch")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--recompute", action="store_true", help="recompute activations in backward")
    return parser.parse_args(argv)


def build_learner(args: argparse.Namespace):
    """Random-weight Qwen3-shaped stage wrapped exactly as `Learner.from_hf` wraps a loaded one."""
    from megatron_s2l.learner.hf_config import build_transformer_config
    from megatron_s2l.learner.learner import LearnerConfig, wrap_for_training
    from megatron_s2l.learner.model import build_gpt_model
    from megatron_s2l.learner.parallel import ParallelConfig, init_distributed

    arch = load_arch(args.shape)
    cfg = LearnerConfig(
        parallel=ParallelConfig(
            tensor_parallel=args.tp, pipeline_parallel=args.pp, micro_batch_size=args.micro_batch
        ),
        params_dtype="bfloat16",
        recompute_activations=args.recompute,
    )
    init_distributed(
        cfg.parallel,
        num_layers=arch.num_hidden_layers,
        num_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
    )
    tf_config = build_transformer_config(
        arch, cfg.parallel, params_dtype=torch.bfloat16, recompute_activations=args.recompute
    )
    model = build_gpt_model(arch, tf_config, vocab_pad_multiple=cfg.vocab_pad_multiple)
    return arch, *wrap_for_training(cfg, tf_config, model)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_learner_step: needs a CUDA GPU (none found); nothing was run.", file=sys.stderr)
        return 2
    import torch.distributed as dist

    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.batch import TrainBatch
    from megatron_s2l.learner.grpo_step import train_step

    arch, model, optimizer, scheduler = build_learner(args)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, arch.vocab_size, (args.batch, args.seq_len), generator=generator)
    batch = TrainBatch(
        input_ids=input_ids,
        loss_mask=torch.ones(args.batch, args.seq_len - 1),
        advantages=torch.randn(args.batch, generator=generator),
        old_logprobs=torch.full((args.batch, args.seq_len - 1), -2.0),
    )
    kwargs = dict(vocab_size=arch.vocab_size, temperature=1.0, micro_batch_size=args.micro_batch)
    train_step(model, optimizer, scheduler, batch, LossConfig(), **kwargs)  # warm-up (allocations)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        metrics = train_step(model, optimizer, scheduler, batch, LossConfig(), **kwargs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        step_s = sorted(times)[len(times) // 2]
        tokens = args.batch * args.seq_len
        print(
            f"{args.shape} bf16 tp={args.tp} pp={args.pp} world={dist.get_world_size()} "
            f"batch={args.batch}x{args.seq_len} micro={args.micro_batch} recompute={args.recompute} "
            f"on {torch.cuda.get_device_name()}\n"
            f"step time median {step_s * 1e3:.1f} ms (min {min(times) * 1e3:.1f}), "
            f"{tokens / step_s / dist.get_world_size():.0f} tokens/s/GPU, "
            f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
            f"loss {metrics['loss']:.4f}, grad_norm {metrics['grad_norm']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
