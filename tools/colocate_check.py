#!/usr/bin/env python3
"""GPU check of colocated mode (rollout.colocate; docs/rollout.md "Colocated mode"), on one GPU.

What a CPU cannot show: that a learner engine started with SGLang's memory saver really gives its
GPU memory back on release, that another process can then use it, and that after resuming the
weights, a weight sync and resuming the KV cache it generates what it generated before. It runs the
trainer's own code for this (`Colocation`, `WeightSync` with the `tensor` and `disk` transports)
against one SGLang server on a small random Qwen3 it builds itself (no download), measuring
`torch.cuda.mem_get_info` after each phase, and prints a markdown table:

    python tools/colocate_check.py [--layers 8 --hidden 1024] [--mem-fraction-static 0.3] [--json OUT]

Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA, or SGLang /
torch_memory_saver not importable: tools/gpu_check.sh records that as skipped, not failed).
Needs: torch with CUDA, sglang and torch_memory_saver, transformers, this repository importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

SKIPPED = 77
GIB = 2**30


def _free_gib() -> float:
    import torch

    if not torch.cuda.is_available():  # --cpu: nothing to measure
        return float("nan")
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0] / GIB


def _greedy(url: str, api_key: str | None, prompt: list[int], new_tokens: int) -> dict:
    import httpx

    from megatron_s2l.rollout.http import bearer

    payload = {
        "input_ids": prompt,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": new_tokens, "ignore_eos": True},
    }
    response = httpx.post(url + "/generate", json=payload, headers=bearer(api_key), timeout=120.0)
    response.raise_for_status()
    return response.json()


class Report:
    """The measured rows (phase, free GPU memory, seconds of the request, note) and the failures."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failures: list[str] = []

    def row(self, phase: str, seconds: float | None = None, note: str = "") -> float:
        free = _free_gib()
        self.rows.append({"phase": phase, "free_gib": round(free, 3), "seconds": seconds, "note": note})
        return free

    def print(self, title: str) -> None:
        resident = self.rows[1]["free_gib"] if len(self.rows) > 1 else float("nan")
        print(f"# colocate_check: {title}\n")
        print("| phase | free GiB | change vs resident | seconds | note |")
        print("|---|---:|---:|---:|---|")
        for r in self.rows:
            seconds = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
            change = r["free_gib"] - resident
            print(f"| {r['phase']} | {r['free_gib']:.2f} | {change:+.2f} | {seconds} | {r['note']} |")
        print("\n" + ("PASSED" if not self.failures else "FAILED:\n- " + "\n- ".join(self.failures)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--mem-fraction-static", type=float, default=0.3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--work-dir", default=None, help="model, sync scratch and server log (default: a temp dir)"
    )
    parser.add_argument("--json", default=None, help="also write the measurements here")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="dry run of this script on CPU: the same requests to a CPU server without the memory saver "
        "(which cannot start there), no memory measured; e.g. --cpu --layers 2 --hidden 256",
    )
    args = parser.parse_args(argv)

    import torch

    needed = ("sglang",) if args.cpu else ("sglang", "torch_memory_saver")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if (not args.cpu and not torch.cuda.is_available()) or missing:
        why = f"not importable: {', '.join(missing)}" if missing else "no CUDA device"
        print(f"colocate_check: SKIPPED ({why})")
        return SKIPPED

    from transformers import AutoModelForCausalLM

    from megatron_s2l.demo.tiny import make_tiny_qwen3

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="colocate_check-"))
    model_dir = make_tiny_qwen3(
        work / "model",
        num_layers=args.layers,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_heads=max(1, args.hidden // 128),
        num_kv_heads=max(1, args.hidden // 512),
        head_dim=128,
        init_std=0.02,
    )
    weights = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).state_dict()
    weight_gib = sum(t.numel() * t.element_size() for t in weights.values()) / GIB
    report = Report()
    try:
        _run(report, args, model_dir, weights, work)
    except Exception as error:  # still print what was measured
        report.failures.append(f"{type(error).__name__}: {error}")
    device = "CPU dry run" if args.cpu else torch.cuda.get_device_name(0)
    report.print(
        f"{args.layers} layers x hidden {args.hidden} ({weight_gib:.2f} GiB fp32), "
        f"mem_fraction_static {args.mem_fraction_static}, {device}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": report.rows, "failures": report.failures}, indent=1))
    return 0 if not report.failures else 1


def _run(report: Report, args: argparse.Namespace, model_dir: Path, weights: dict, work: Path) -> None:
    """Start the server as rollout.colocate does, then two rounds of release -> (another process uses
    the memory) -> resume weights -> weight sync (tensor, then disk) -> resume KV cache -> generate."""
    import torch

    from megatron_s2l.rollout.colocate import Colocation, colocated_pool
    from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig
    from megatron_s2l.rollout.placement import visible_gpus
    from megatron_s2l.rollout.pool import EnginePool
    from megatron_s2l.sync.config import SyncConfig
    from megatron_s2l.sync.manifest import read_weight_manifest
    from megatron_s2l.sync.weight_sync import WeightSync, pool_endpoints

    before = report.row("before the server")
    engine = EngineConfig(
        device="cpu" if args.cpu else "cuda",
        mem_fraction_static=None if args.cpu else args.mem_fraction_static,
        context_length=1024,
        startup_timeout_s=300.0,
    )
    pool_config = EnginePoolConfig(engine=engine)
    pool_config = pool_config if args.cpu else colocated_pool(pool_config)  # what rollout.colocate starts
    gpus = None if args.cpu else [visible_gpus()[:1]]
    pool = EnginePool("learner", model_dir, pool_config, work / "logs", gpu_ids=gpus)
    started = time.perf_counter()
    with pool:
        url = pool.servers[0].url
        resident = report.row("server up (weights + KV cache resident)", time.perf_counter() - started)
        prompt = [11, 57, 203, 9, 141, 77, 5, 300]
        reference = _greedy(url, pool.api_key, prompt, args.new_tokens)["output_ids"]
        colocation = Colocation(pool, enabled=True, timeout_s=120.0)
        for n, transport in enumerate(("tensor", "disk"), start=1):
            colocation.release()
            freed = (
                report.row(f"round {n}: released (KV cache, weights)", colocation.seconds["release"])
                - resident
            )
            held = before - resident
            if not args.cpu and freed < 0.8 * held:
                report.failures.append(f"round {n}: release freed {freed:.2f} of the {held:.2f} GiB it held")
            healthy = pool.servers[0].is_healthy(10.0)
            report.row(f"round {n}: /health while released", note=f"healthy={healthy} (must not generate)")
            if not healthy:
                report.failures.append(f"round {n}: /health failed while released")
            if not args.cpu:  # what the learner does with the memory: take 90% of what was freed
                try:
                    block = torch.empty(int(max(freed, 0.0) * 0.9 * GIB), dtype=torch.uint8, device="cuda")
                    report.row(f"round {n}: this process took {block.numel() / GIB:.2f} GiB of it")
                    del block
                    torch.cuda.empty_cache()
                except torch.OutOfMemoryError as error:
                    report.failures.append(f"round {n}: the freed memory could not be allocated: {error}")
            colocation.resume_weights()
            report.row(f"round {n}: weights resumed", colocation.seconds["resume_weights"])
            sync = WeightSync(
                SyncConfig(transport=transport, timeout_s=120.0, disk_dir=str(work / "sync")),
                endpoints=pool_endpoints(pool),
                manifest=read_weight_manifest(str(model_dir)),
            )
            try:
                pool.weight_version = str(n)
                result = sync.update(iter(weights.items()), version=n)
            finally:
                sync.close()
            report.row(f"round {n}: weight sync ({transport})", result.seconds)
            colocation.resume_kv_cache()
            output = _greedy(url, pool.api_key, prompt, args.new_tokens)
            same, version = output["output_ids"] == reference, output["meta_info"].get("weight_version")
            note = f"then greedy tokens as before: {same}; weight_version {version}"
            report.row(f"round {n}: KV cache resumed", colocation.seconds["resume_kv_cache"], note)
            if not same or version != str(n):
                report.failures.append(f"round {n}: generation after resume differs or has version {version}")


if __name__ == "__main__":
    sys.exit(main())
