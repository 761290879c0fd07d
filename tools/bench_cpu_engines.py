"""Two CPU SGLang engines generating at once, under different thread and core settings.

    .venv/bin/python tools/bench_cpu_engines.py [--cache cache/demo] [--samples 64] [--repeats 2]
    taskset -c 1 .venv/bin/python tools/bench_cpu_engines.py    # the engines' cores only

Starts the demo's explorer and learner engines (built by `s2l demo` into --cache) once per setting
and times the same requests for each engine alone and for both at once, on the cores of this
process's affinity mask (run it under `taskset` to leave some to the learner ranks). Settings:
unpinned with OpenMP's defaults (every engine one thread per core) or one thread each; pinned as
`RolloutEngines` places them (`placement.plan_engine_cores`): `dedicated` (disjoint cores, one thread
per core) or `shared` (`rollout.explorer.placement: shared`: both on the same cores) with OpenMP's
threads waiting passively (`OMP_WAIT_POLICY=PASSIVE`, what `shared` sets), by OpenMP's default
(spin a while, then sleep) or actively (`OMP_WAIT_POLICY=ACTIVE`: spin). Prints one markdown row per
setting: the fastest of --repeats rounds, seconds.
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
from megatron_s2l.rollout.placement import plan_engine_cores
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.rollout.records import SampleRequest
from megatron_s2l.rollout.sampling_params import SamplingConfig

SETTINGS = {  # name: (environment, placement (None: unpinned), passive wait)
    "unpinned, OpenMP's defaults (one thread per core each)": ({}, None, False),
    "unpinned, 1 thread each": ({"OMP_NUM_THREADS": "1"}, None, False),
    "dedicated: disjoint cores (the default)": ({}, "dedicated", False),
    "shared cores, OMP_WAIT_POLICY=PASSIVE (placement: shared)": ({}, "shared", True),
    "shared cores, OpenMP's default wait": ({}, "shared", False),
    "shared cores, OMP_WAIT_POLICY=ACTIVE": ({"OMP_WAIT_POLICY": "ACTIVE"}, "shared", False),
}
LOG_DIR = "logs/bench_cpu_engines"


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
    engine = EngineConfig(device="cpu", max_total_tokens=16384, context_length=256, max_running_requests=64)
    available = sorted(os.sched_getaffinity(0))
    print(f"cores {available} of {os.cpu_count()}; {args.samples} samples of up to 32 tokens per engine\n")
    print("| setting | explorer alone | learner alone | both at once |\n|---|---|---|---|")
    for name, (env, placement, passive) in SETTINGS.items():
        saved = dict(os.environ)
        os.environ.pop("OMP_WAIT_POLICY", None)
        os.environ.update(env)  # the servers' environment is a copy of ours
        configs = {  # in RolloutEngines' order: the learner's engine takes the first cores
            "learner": EnginePoolConfig(engine=engine),
            "explorer": EnginePoolConfig(engine=engine, placement=placement or "dedicated"),
        }
        cores = plan_engine_cores(configs, available) if placement else {}
        pools = [
            EnginePool(
                model, args.cache / model, configs[model], LOG_DIR, cores.get(model), passive_wait=passive
            )
            for model in ("explorer", "learner")
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
