"""Pre-generated explorer samples, drawn without replacement during training (`once`), or k of n
afresh at every use of a prompt (`per-use`, as the S2L-PO authors' released runs drew them).

The explorer is frozen, so its samples for a prompt never go stale: generating them ahead (at full
batch, `tools/fill_explorer_cache.py`) and drawing them later is equivalent to live sampling when
(a) the cache was filled with the same explorer weights, prompt token ids and sampling parameters
as the run's, and (b) each sample is used at most once (draws are without replacement, so the G_w
samples of one group are independent, as live ones would be). It is not equivalent when a prompt is
drawn more times than it has cached samples (the cache refuses: fill more per prompt), when the
sampling parameters or the prompt template changed after filling, or for dynamic-sampling reruns
that would need fresh samples beyond the cache. `per-use` draws are not equivalent to live sampling
either: a prompt used twice can get some of the same samples again (the released runs' procedure:
`OfflineRolloutDataset` in their verl/utils/dataset/offline_rollout_dataset.py keeps
`random.sample(samples, k)` of each prompt's samples, seed 42, in every one-step run).

File format: JSON lines, one sample per line:
`{"prompt_id", "prompt_ids", "response_ids", "logprobs", "finish_reason", "weight_version"}`.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from megatron_s2l.algo.seeds import stable_seed
from megatron_s2l.rollout.config import RolloutConfig
from megatron_s2l.rollout.records import RolloutRecord

CacheDraw = Literal["once", "per-use"]


class ExplorerCacheExhaustedError(RuntimeError):
    """A prompt was asked for more cached explorer samples than remain."""


def write_explorer_cache(path: str | Path, records: list[RolloutRecord], append: bool = True) -> None:
    """Append explorer `records` to the JSONL cache at `path`."""
    with open(path, "a" if append else "w") as out:
        for record in records:
            row = {
                "prompt_id": record.prompt_id,
                "prompt_ids": record.prompt_ids,
                "response_ids": record.response_ids,
                "logprobs": record.logprobs,
                "finish_reason": record.finish_reason,
                "weight_version": record.weight_version,
            }
            out.write(json.dumps(row) + "\n")


class ExplorerCache:
    """Cached explorer samples per prompt. `draw="once"`: handed out without replacement in a seeded
    random order. `draw="per-use"`: each draw takes `count` distinct samples, chosen by a seed of
    (run seed, prompt, how many times the prompt was drawn before), so uses are independent.

    The position (per prompt: samples drawn, or uses so far) is the loop state a run checkpoint
    saves (`state_dict`), so a resumed run goes on drawing unused samples, or draws the same
    samples an uninterrupted run would have. `min_samples_per_prompt`: every cached prompt must hold
    at least this many samples (checked here, at load: a per-use draw needs up to G of them)."""

    def __init__(
        self, path: str | Path, seed: int = 0, *, draw: CacheDraw = "once", min_samples_per_prompt: int = 0
    ) -> None:
        if draw not in ("once", "per-use"):
            raise ValueError(f"explorer cache draw must be 'once' or 'per-use', got {draw!r}")
        self.path = Path(path)
        self.draw_mode: CacheDraw = draw
        self._seed = seed
        self._rows: dict[str, list[dict]] = defaultdict(list)
        self._num_rows = 0
        with open(self.path) as rows:
            for line_number, line in enumerate(rows, 1):
                try:
                    row = json.loads(line)
                    self._rows[str(row["prompt_id"])].append(row)
                except (json.JSONDecodeError, KeyError) as error:
                    raise ValueError(
                        f"{self.path}:{line_number}: bad explorer cache row ({error})"
                    ) from error
                self._num_rows += 1
        short = {pid: len(rows) for pid, rows in self._rows.items() if len(rows) < min_samples_per_prompt}
        if short:
            pid, have = min(short.items(), key=lambda item: item[1])
            raise ValueError(
                f"rollout.explorer_cache_path: {self.path} holds fewer than {min_samples_per_prompt} "
                f"samples (schedule.group_size) for {len(short)} of {len(self._rows)} prompts (prompt "
                f"{pid!r}: {have}); rollout.explorer_cache_draw 'per-use' draws up to that many per "
                "use: fill the cache with more (tools/fill_explorer_cache.py --samples-per-prompt)"
            )
        rng = random.Random(seed)
        for rows_of_prompt in self._rows.values():
            rng.shuffle(rows_of_prompt)
        self._drawn: dict[str, int] = defaultdict(int)
        """Per prompt: samples handed out (`once`), or draws made (`per-use`)."""

    @classmethod
    def for_run(cls, config: RolloutConfig, *, seed: int, group_size: int) -> ExplorerCache:
        """The cache of `config.explorer_cache_path`, drawn as `config.explorer_cache_draw` says; a
        per-use cache must hold `group_size` samples of every prompt (the most one use takes)."""
        if config.explorer_cache_path is None:
            raise ValueError("rollout.explorer_cache_path is unset")
        per_use = config.explorer_cache_draw == "per-use"
        return cls(
            config.explorer_cache_path,
            seed=seed,
            draw=config.explorer_cache_draw,
            min_samples_per_prompt=group_size if per_use else 0,
        )

    def remaining(self, prompt_id: str) -> int:
        """Samples of `prompt_id` a draw may still take (`per-use`: all of them, every time)."""
        cached = len(self._rows.get(prompt_id, []))
        return cached if self.draw_mode == "per-use" else cached - self._drawn.get(prompt_id, 0)

    def draw(self, prompt_id: str, prompt_ids: list[int], count: int) -> list[RolloutRecord]:
        """`count` samples of `prompt_id`, unused ones (`once`) or any distinct ones (`per-use`);
        their prompt tokens must equal `prompt_ids`."""
        if count > self.remaining(prompt_id):
            unused = "" if self.draw_mode == "per-use" else "unused "
            raise ExplorerCacheExhaustedError(
                f"explorer cache {self.path} has {self.remaining(prompt_id)} {unused}samples of prompt "
                f"{prompt_id!r}, {count} needed: fill it with more samples per prompt"
            )
        if self.draw_mode == "per-use":
            use = random.Random(
                stable_seed(self._seed, "explorer-cache-use", prompt_id, self._drawn[prompt_id])
            )
            rows, advance = use.sample(self._rows[prompt_id], count), 1
        else:
            first = self._drawn[prompt_id]
            rows, advance = self._rows[prompt_id][first : first + count], count
        records = []
        for index, row in enumerate(rows):
            if row["prompt_ids"] != prompt_ids:
                raise ValueError(
                    f"explorer cache {self.path}: prompt {prompt_id!r} was cached with other tokens"
                )
            records.append(
                RolloutRecord(
                    prompt_id=prompt_id,
                    sample_index=index,
                    source="explorer",
                    prompt_ids=list(prompt_ids),
                    response_ids=row["response_ids"],
                    logprobs=row["logprobs"],
                    finish_reason=row["finish_reason"],
                    weight_version=row["weight_version"],
                )
            )
        self._drawn[prompt_id] += advance
        return records

    def state_dict(self) -> dict[str, Any]:
        return {"num_rows": self._num_rows, "drawn": dict(self._drawn), "draw": self.draw_mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the draws of `state`; refused when the file changed since (its seeded
        order would differ, and samples already used could come back)."""
        if state["num_rows"] != self._num_rows:
            raise ValueError(
                f"explorer cache {self.path} has {self._num_rows} rows but the checkpoint drew from "
                f"{state['num_rows']}: the cache file changed since the checkpoint was saved"
            )
        saved_mode = state.get("draw", "once")  # checkpoints from before per-use draws
        if saved_mode != self.draw_mode:
            raise ValueError(
                f"rollout.explorer_cache_draw is {self.draw_mode!r} but the checkpoint drew {saved_mode!r}: "
                "its positions mean something else"
            )
        self._drawn = defaultdict(int, state["drawn"])
