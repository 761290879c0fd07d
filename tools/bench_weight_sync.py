"""Benchmark learner -> engine weight sync per transport, next to this machine's memcpy bandwidth.

    .venv/bin/python tools/bench_weight_sync.py [--hidden-size 512 --num-layers 8] [--repeats 3]
        [--transports disk tensor distributed] [--bucket-mb 512] [--json out.json]

Starts one real SGLang server (CPU flags on a machine without CUDA) on a random Qwen3-architecture
model of the given size, then times `WeightSync.update` of a second set of weights of the same
shapes: seconds per update (pause, flush, send, continue included) and GB/s of weights moved. The
memcpy line is a same-run `torch` copy of a 256 MiB buffer on the weights' device, the ceiling any
in-host transport could reach. Markdown table on stdout (docs/weight_sync.md keeps the results).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from megatron_s2l.demo.tiny import make_tiny_qwen3
from megatron_s2l.rollout.config import EngineConfig
from megatron_s2l.rollout.http import EngineEndpoint
from megatron_s2l.rollout.server import EngineServer
from megatron_s2l.sync.config import SyncConfig
from megatron_s2l.sync.weight_sync import WeightSync


def measure_memcpy_gb_s(device: str, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes copied per second by `dst.copy_(src)` (each byte read once and written once)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults and allocator
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return nbytes / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed updates per transport (after 1 warm-up)"
    )
    parser.add_argument("--transports", nargs="+", default=["disk", "tensor", "distributed"])
    parser.add_argument("--bucket-mb", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="bench_weight_sync_") as tmp:
        root = Path(tmp)
        shape = dict(
            num_layers=args.num_layers,
            hidden_size=args.hidden_size,
            intermediate_size=3 * args.hidden_size,
            num_heads=8,
            num_kv_heads=4,
            head_dim=max(32, args.hidden_size // 8),
        )
        engine_dir = make_tiny_qwen3(root / "engine", seed=0, **shape)
        new_dir = make_tiny_qwen3(root / "new", tokenizer_dir=engine_dir, seed=1, **shape)
        from transformers import AutoModelForCausalLM

        weights = list(
            AutoModelForCausalLM.from_pretrained(str(new_dir), dtype=torch.float32).named_parameters()
        )
        weights = [(name, tensor.detach().to(device)) for name, tensor in weights]
        model_bytes = sum(t.numel() * t.element_size() for _, t in weights)
        server = EngineServer(
            engine_dir, EngineConfig(max_total_tokens=2048, context_length=256), root / "server.log"
        )
        startup_s = server.start()
        rows = []
        try:
            memcpy = measure_memcpy_gb_s(device)
            for transport in args.transports:
                config = SyncConfig(
                    transport=transport,
                    bucket_mb=args.bucket_mb,
                    timeout_s=300.0,
                    disk_dir=str(root / "sync"),
                )
                sync = WeightSync(config, endpoints=_endpoints(server))
                try:
                    sync.update(weights, version=f"{transport}-warmup")
                    seconds = []
                    for repeat in range(args.repeats):
                        seconds.append(sync.update(weights, version=f"{transport}-{repeat}").seconds)
                finally:
                    sync.close()
                mean = sum(seconds) / len(seconds)
                rows.append(
                    {
                        "transport": transport,
                        "seconds": mean,
                        "best_seconds": min(seconds),
                        "gb_per_s": model_bytes / mean / 1e9,
                    }
                )
        finally:
            server.stop()
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {device}",
        "model_mb": model_bytes / 2**20,
        "bucket_mb": args.bucket_mb,
        "server_startup_s": startup_s,
        "memcpy_gb_per_s": memcpy,
        "transports": rows,
    }
    print(
        f"model {result['model_mb']:.1f} MiB float32, bucket {args.bucket_mb} MiB, {result['machine']}, "
        f"server healthy after {startup_s:.1f} s"
    )
    print("| transport | s / update (mean) | best | GB/s | % of memcpy |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['transport']} | {row['seconds']:.3f} | {row['best_seconds']:.3f} | "
            f"{row['gb_per_s']:.3f} | {100 * row['gb_per_s'] / memcpy:.1f}% |"
        )
    print(f"| memcpy ({device}, same run) | | | {memcpy:.2f} | 100% |")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


def _endpoints(server: EngineServer) -> list[EngineEndpoint]:
    return [EngineEndpoint(server.url, server.config.tp, server.api_key)]


if __name__ == "__main__":
    main()
