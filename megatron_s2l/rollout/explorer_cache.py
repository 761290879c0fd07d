"""Pre-generated explorer samples, drawn without replacement during training.

The explorer is frozen, so its samples for a prompt never go stale: generating them ahead (at full
batch, `tools/fill_explorer_cache.py`) and drawing them later is equivalent to live sampling when
(a) the cache was filled with the same explorer weights, prompt token ids and sampling parameters
as the run's, and (b) each sample is used at most once (draws are without replacement, so the G_w
samples of one group are independent, as live ones would be). It is not equivalent when a prompt is
drawn more times than it has cached samples (the cache refuses: fill more per prompt), when the
sampling parameters or the prompt template changed after filling, or for dynamic-sampling reruns
that would need fresh samples beyond the cache.

File format: JSON lines, one sample per line:
`{"prompt_id", "prompt_ids", "response_ids", "logprobs", "finish_reason", "weight_version"}`.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from megatron_s2l.rollout.records import RolloutRecord


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
    """Cached explorer samples per prompt, handed out without replacement in a seeded random order.

    The position (how many samples of each prompt were drawn) is the loop state a run checkpoint
    saves (`state_dict`), so a resumed run goes on drawing unused samples."""

    def __init__(self, path: str | Path, seed: int = 0) -> None:
        self.path = Path(path)
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
        rng = random.Random(seed)
        for rows_of_prompt in self._rows.values():
            rng.shuffle(rows_of_prompt)
        self._drawn: dict[str, int] = defaultdict(int)

    def remaining(self, prompt_id: str) -> int:
        return len(self._rows.get(prompt_id, [])) - self._drawn.get(prompt_id, 0)

    def draw(self, prompt_id: str, prompt_ids: list[int], count: int) -> list[RolloutRecord]:
        """`count` unused samples of `prompt_id` (their prompt tokens must equal `prompt_ids`)."""
        if count > self.remaining(prompt_id):
            raise ExplorerCacheExhaustedError(
                f"explorer cache {self.path} has {self.remaining(prompt_id)} unused samples of prompt "
                f"{prompt_id!r}, {count} needed: fill it with more samples per prompt"
            )
        first = self._drawn[prompt_id]
        rows = self._rows[prompt_id][first : first + count]
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
        self._drawn[prompt_id] += count
        return records

    def state_dict(self) -> dict[str, Any]:
        return {"num_rows": self._num_rows, "drawn": dict(self._drawn)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the draws of `state`; refused when the file changed since (its seeded
        order would differ, and samples already used could come back)."""
        if state["num_rows"] != self._num_rows:
            raise ValueError(
                f"explorer cache {self.path} has {self._num_rows} rows but the checkpoint drew from "
                f"{state['num_rows']}: the cache file changed since the checkpoint was saved"
            )
        self._drawn = defaultdict(int, state["drawn"])
