"""Pre-generate the frozen explorer's samples for every training prompt of a run config (the explorer
cache that `rollout.explorer_cache_path` points a run at).

    .venv/bin/python tools/fill_explorer_cache.py --config yaml/qwen3-8b-s2l.yaml [key.sub=value ...] \
        --samples-per-prompt 32 [--out explorer_cache.jsonl] [--skip-existing]

Everything that must match the run comes from its config: the explorer checkpoint, the training
prompts read through the trainer's own loader (deduplicated, templated, length-filtered: the same
prompt ids and token ids the driver will look up), the explorer's sampling parameters, its engine
pool and the client's limits. `--out` defaults to the config's `rollout.explorer_cache_path`.
The cache is appended to, so a killed fill continues with the prompts not yet cached
(`--skip-existing`); a run must then start after the fill is complete (a run checkpoint refuses a
cache file that changed under it). Whether drawing from the cache equals live sampling:
megatron_s2l/rollout/explorer_cache.py and docs/rollout.md.

Responses are cached whole, up to `rollout.explorer_sampling.max_new_tokens` (the generation budget):
a run with `rollout.explorer_train_max_new_tokens` below it cuts them when it trains on them, and
with `reward.explorer_full_response` rewards the whole text. The S2L-PO authors' released explorer
data, for instance (their verl/examples/run_small_model_sampling.sh): 32 samples per prompt at
temperature 0.7, top_p 0.95, up to 30,000 new tokens, trained on the first 4,096:

    .venv/bin/python tools/fill_explorer_cache.py --config yaml/paper/qwen3-8b-4b-s2l-released.yaml \
        --samples-per-prompt 32

(the explorer engines then need a context of at least the longest prompt + 30,000 tokens:
`rollout.explorer.engine.context_length`).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from transformers import AutoTokenizer

from megatron_s2l.config import load_config
from megatron_s2l.data import load_prompt_dataset, prompt_id
from megatron_s2l.logs import configure_logging
from megatron_s2l.reward import check_data_source
from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.explorer_cache import ExplorerCache, write_explorer_cache
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.rollout.records import SampleRequest, sample_seed
from megatron_s2l.rollout.tokenizer_check import check_same_tokenizer

# The seeds of cached samples, apart from those of live explorer samples at any step.
CACHE_SEED_SOURCE = "explorer-cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the run's YAML config")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, as given to s2l train")
    parser.add_argument("--samples-per-prompt", type=int, required=True)
    parser.add_argument("--out", type=Path, help="JSONL cache to append to (default: the config's)")
    parser.add_argument(
        "--prompts-per-round", type=int, default=64, help="prompts generated (and saved) at once"
    )
    parser.add_argument("--skip-existing", action="store_true", help="skip prompts already in --out")
    args = parser.parse_args()
    configure_logging()

    cfg = load_config(args.config, args.overrides)
    out = args.out or (Path(cfg.rollout.explorer_cache_path) if cfg.rollout.explorer_cache_path else None)
    if out is None:
        parser.error("give --out, or set rollout.explorer_cache_path in the config")
    check_same_tokenizer(cfg.model.explorer, cfg.model.learner)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.learner)  # the driver's tokenizer
    dataset = load_prompt_dataset(cfg.data.train_files, tokenizer, cfg.data, check_source=check_data_source)
    done = ExplorerCache(out) if args.skip_existing and out.exists() else None
    todo = [
        (prompt_id("train", i), ids)
        for i, ids in enumerate(dataset.prompt_ids)
        if done is None or done.remaining(prompt_id("train", i)) == 0
    ]
    pool = EnginePool("explorer", cfg.model.explorer, cfg.rollout.explorer, out.with_suffix(".logs"))
    # One event loop for every request: the client's concurrency limit belongs to the loop it first
    # waits on (a fresh loop per round would break it on the second round).
    with pool, asyncio.Runner() as loop:
        client = RolloutClient(pool, "explorer", cfg.rollout.client)
        for start in range(0, len(todo), args.prompts_per_round):
            chunk = todo[start : start + args.prompts_per_round]
            requests = [
                SampleRequest(pid, i, ids, sample_seed(cfg.seed, 0, 0, CACHE_SEED_SOURCE, pid, i))
                for pid, ids in chunk
                for i in range(args.samples_per_prompt)
            ]
            write_explorer_cache(out, loop.run(client.generate(requests, cfg.rollout.explorer_sampling)))
            print(f"{start + len(chunk)}/{len(todo)} prompts cached in {out}", flush=True)


if __name__ == "__main__":
    main()
