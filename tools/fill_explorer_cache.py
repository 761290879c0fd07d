"""Pre-generate the frozen explorer's samples for every prompt of a data file (the explorer cache).

    .venv/bin/python tools/fill_explorer_cache.py --explorer HF_DIR --prompts data.parquet \
        --out explorer_cache.jsonl [--samples-per-prompt 32] [--template chat|raw] \
        [--temperature 0.7 --top-p 0.95 --max-new-tokens 1024] [--num-engines 1]

NOTE: prompt ids are the file's raw row numbers (`PromptRecord.index` as read, as `str`) and the
file is not deduplicated, while the trainer looks samples up as `train-{index}` in the deduplicated
dataset: a cache filled by this tool does not yet serve a training run (open work, the evaluation
and rollout-compute issue, item 6). The cache is appended to, so a killed fill can be continued with
the remaining prompts (`--skip-existing`). Whether drawing from the cache equals live sampling: see
megatron_s2l/rollout/explorer_cache.py and docs/rollout.md.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from transformers import AutoTokenizer

from megatron_s2l.data.records import read_prompt_file
from megatron_s2l.data.templates import encode_prompts
from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.config import ClientConfig, EngineConfig, EnginePoolConfig
from megatron_s2l.rollout.explorer_cache import ExplorerCache, write_explorer_cache
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.rollout.records import SampleRequest
from megatron_s2l.rollout.sampling_params import SamplingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--explorer", required=True, help="explorer HF checkpoint directory")
    parser.add_argument("--prompts", required=True, help="verl-format parquet or JSONL prompt file")
    parser.add_argument("--out", type=Path, required=True, help="JSONL cache to append to")
    parser.add_argument("--samples-per-prompt", type=int, default=32)
    parser.add_argument("--template", choices=["chat", "raw"], default="chat")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--num-engines", type=int, default=1)
    parser.add_argument(
        "--prompts-per-round", type=int, default=64, help="prompts generated (and saved) at once"
    )
    parser.add_argument("--skip-existing", action="store_true", help="skip prompts already in --out")
    parser.add_argument("--log-dir", default="logs/fill_explorer_cache")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.explorer)
    records = list(read_prompt_file(args.prompts))
    done = ExplorerCache(args.out) if args.skip_existing and args.out.exists() else None
    records = [r for r in records if done is None or done.remaining(str(r.index)) == 0]
    sampling = SamplingConfig(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens
    )
    pool = EnginePool(
        "explorer",
        args.explorer,
        EnginePoolConfig(num_engines=args.num_engines, engine=EngineConfig()),
        args.log_dir,
    )
    # One event loop for every request: the client's concurrency limit belongs to the loop it first
    # waits on (a fresh loop per round would break it on the second round).
    with pool, asyncio.Runner() as loop:
        client = RolloutClient(pool, "explorer", ClientConfig(max_concurrency=8 * args.num_engines))
        for start in range(0, len(records), args.prompts_per_round):
            chunk = records[start : start + args.prompts_per_round]
            input_ids = encode_prompts([r.messages for r in chunk], tokenizer, args.template)
            requests = [
                SampleRequest(str(r.index), i, ids)
                for r, ids in zip(chunk, input_ids, strict=True)
                for i in range(args.samples_per_prompt)
            ]
            write_explorer_cache(args.out, loop.run(client.generate(requests, sampling)))
            print(f"{start + len(chunk)}/{len(records)} prompts cached", flush=True)


if __name__ == "__main__":
    main()
