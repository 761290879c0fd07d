"""`s2l logprobs`: per-token log-probs of given token sequences under a HF checkpoint, computed by
the Megatron learner at a chosen TP x PP, to check train/inference mismatch against a rollout engine.

    s2l logprobs --model HF_DIR --tp 2 --pp 1 --input IN.json --output OUT.json [--temperature T]

IN.json: a JSON list of token-id lists. OUT.json: a JSON list, per sequence, of the log-probs of
tokens 1..L-1 (each given the tokens before it). The command starts its own tp * pp ranks with
`torch.multiprocessing` (one per GPU with CUDA, gloo processes on CPU); under torchrun (RANK set)
it runs in the launched ranks instead.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from megatron_s2l.learner.parallel import spawn_local_ranks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint directory (Qwen3)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    parser.add_argument("--input", required=True, help="JSON list of token-id lists")
    parser.add_argument("--output", required=True, help="where to write the JSON list of log-prob lists")
    parser.add_argument("--temperature", type=float, default=1.0, help="divide logits by this first")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="parameter dtype (auto: bfloat16 with CUDA, float32 on CPU)",
    )


def read_sequences(path: str | Path) -> list[list[int]]:
    """Parse IN.json, failing with the index of the first malformed entry."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of token-id lists")
    for i, seq in enumerate(data):
        if not isinstance(seq, list) or not seq or not all(isinstance(t, int) and t >= 0 for t in seq):
            raise ValueError(f"{path}: entry {i} is not a non-empty list of non-negative token ids")
    return data


def _compute(args_dict: dict) -> None:
    """Body of every rank: load the policy, run the forward-only pass, rank 0 writes the output."""
    import torch.distributed as dist

    from megatron_s2l.learner.batch import TrainBatch
    from megatron_s2l.learner.grpo_step import compute_logprobs
    from megatron_s2l.learner.learner import LearnerConfig, load_hf_policy
    from megatron_s2l.learner.parallel import ParallelConfig, destroy_distributed

    cfg = LearnerConfig(
        parallel=ParallelConfig(tensor_parallel=args_dict["tp"], pipeline_parallel=args_dict["pp"]),
        params_dtype=args_dict["dtype"],
    )
    policy = load_hf_policy(cfg, args_dict["model"])
    arch, model = policy.arch, policy.model
    sequences = read_sequences(args_dict["input"])
    if max(max(s) for s in sequences) >= arch.vocab_size:
        raise ValueError(f"{args_dict['input']}: a token id is >= the model's vocab size {arch.vocab_size}")
    # Log-probs are computed where the loss mask is 1: here every token after the first.
    batch = TrainBatch.from_sequences(
        [seq[:1] for seq in sequences], [seq[1:] for seq in sequences], torch.zeros(len(sequences))
    )
    logprobs_1BT, _ = compute_logprobs(
        model, batch, vocab_size=arch.vocab_size, temperatures=[args_dict["temperature"]], micro_batch_size=1
    )
    logprobs_BT = logprobs_1BT[0]
    if dist.get_rank() == 0:
        rows = [logprobs_BT[i, : len(seq) - 1].tolist() for i, seq in enumerate(sequences)]
        Path(args_dict["output"]).write_text(json.dumps(rows))
    destroy_distributed()


def run(args: argparse.Namespace) -> int:
    """Entry point of `s2l logprobs`; returns the process exit code."""
    args_dict = {
        k: getattr(args, k) for k in ("model", "tp", "pp", "input", "output", "temperature", "dtype")
    }
    if args.tp < 1 or args.pp < 1:
        raise ValueError("--tp and --pp must be >= 1")
    read_sequences(args.input)  # fail fast, before any rank starts
    if "RANK" in os.environ:
        _compute(args_dict)
        return 0
    world_size = args.tp * args.pp
    if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        raise ValueError(f"--tp * --pp = {world_size} ranks, but only {torch.cuda.device_count()} GPUs")
    spawn_local_ranks(_compute, world_size, args_dict)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2l logprobs", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
