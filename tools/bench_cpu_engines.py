"""Two CPU SGLang engines generating at once, under different thread and core settings.

    .venv/bin/python tools/bench_cpu_engines.py [--cache cache/demo] [--samples 64] [--repeats 2]

Starts the demo's explorer and learner engines (built by `s2l demo` into --cache) once per setting
and times the same requests for each engine alone and for both at once. Settings: OpenMP's defaults
(every engine one thread per core), `OMP_WAIT_POLICY=PASSIVE`, one thread each, and one thread each
pinned to disjoint cores (`megatron_s2l.rollout.placement.plan_cpu_cores`, what `RolloutEngines`
does). Prints one markdown row per setting: the fastest of --repeats rounds, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from megatron_s2l.data import DataConfig, load_prompt_dataset
from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.config import ClientConfig, EngineConfig, EnginePoolConfig
from megatron_s2l.rollout.placement import plan_cpu_cores
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.rollout.records import SampleRequest
from megatron_s2l.rollout.sampling_params import SamplingConfig

SETTINGS = {
    "default (one thread per core each, no pinning)": ({}, False),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "1 thread each": ({"OMP_NUM_THREADS": "1"}, False),
    "pinned to disjoint cores (RolloutEngines)": ({}, True),
}


def _time_rounds(pools: list[EnginePool], requests: list[SampleRequest], repeats: int) -> list[float]:
    """Fastest seconds of: explorer alone, learner alone, both at once."""
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=32)
    client_cfg = ClientConfig(batch_size=16, max_concurrency=4)
    explorer, learner = (RolloutClient(p, "learner", client_cfg) for p in pools)

    async def timed(*clients: RolloutClient) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(c.generate(requests, sampling) for c in clients))
        return time.perf_counter() - started

    async def rounds() -> list[float]:
        await timed(explorer, learner)  # warm-up: first requests pay one-off costs
        best = [float("inf")] * 3
        for _ in range(repeats):
            for i, clients in enumerate(((explorer,), (learner,), (explorer, learner))):
                best[i] = min(best[i], await timed(*clients))
        return best

    return asyncio.run(rounds())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("cache/demo"), help="the demo's models")
    parser.add_argument("--samples", type=int, default=64, help="requests per engine")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not (args.cache / "learner" / "config.json").is_file():
        sys.exit(f"no demo models in {args.cache}: run `s2l demo` (or tools/make_demo_models.py) first")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.cache / "learner")
    prompts = load_prompt_dataset(
        [str(args.cache / "train.jsonl")], tokenizer, DataConfig(template="raw", shuffle=False)
    ).prompt_ids
    requests = [SampleRequest(f"p{i}", 0, prompts[i % len(prompts)], i) for i in range(args.samples)]
    engine = EngineConfig(max_total_tokens=16384, context_length=256, max_running_requests=64)
    print(f"{os.cpu_count()} cores, {args.samples} samples of up to 32 tokens per engine; seconds\n")
    print("| setting | explorer alone | learner alone | both at once |\n|---|---|---|---|")
    for name, (env, pin) in SETTINGS.items():
        saved = dict(os.environ)
        os.environ.update(env)  # the servers' environment is a copy of ours
        cores = plan_cpu_cores([1, 1]) if pin else [None, None]
        pools = [
            EnginePool(
                model, args.cache / model, EnginePoolConfig(engine=engine), "logs/bench_cpu_engines", c
            )
            for model, c in zip(("explorer", "learner"), cores, strict=True)
        ]
        try:
            for pool in pools:
                pool.start()
            seconds = _time_rounds(pools, requests, args.repeats)
        finally:
            for pool in pools:
                pool.stop()
            os.environ.clear()
            os.environ.update(saved)
        print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in seconds) + " |", flush=True)


if __name__ == "__main__":
    main()
