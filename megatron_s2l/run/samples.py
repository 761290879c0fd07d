"""A few decoded samples per step in the run directory, to read what the models write while a run
goes (`logging.dump_samples`): without them a run shows only numbers until it is evaluated.

    run/samples/step_000003.jsonl       rollout samples of step 3: N per source (explorer, learner)
    run/samples/eval_step_000004.jsonl  evaluation samples at step 4: one of each of the first N problems

One file per step, rewritten whole: a resumed run that repeats a step replaces its file, so each
step is there once. Rows are JSON objects; `jq -r .response run/samples/step_000003.jsonl` reads them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_s2l.run.experience import SOURCES, Experience

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from megatron_s2l.data import PromptDataset
    from megatron_s2l.eval.score import ProblemResult


def rollout_sample_path(samples_dir: Path, step: int) -> Path:
    return samples_dir / f"step_{step:06d}.jsonl"


def eval_sample_path(samples_dir: Path, step: int) -> Path:
    return samples_dir / f"eval_step_{step:06d}.jsonl"


def pick_rollout_rows(experience: Experience, per_source: int) -> list[int]:
    """Batch rows of up to `per_source` samples of each source, spread over prompts: every group's
    first sample of that source before any group's second (one prompt's samples look alike)."""
    picked: list[int] = []
    for source in SOURCES:
        rows = [i for i, r in enumerate(experience.records) if r.source == source]
        rows.sort(key=lambda i: experience.records[i].sample_index)  # stable: group order within an index
        picked += rows[:per_source]
    return picked


def rollout_sample_rows(
    experience: Experience, tokenizer: PreTrainedTokenizerBase, step: int, per_source: int
) -> list[dict[str, Any]]:
    """Up to `per_source` samples of each source of a step's experience, decoded (prompt with its
    template, response without special tokens), with the reward and advantage they were trained on."""
    rows = pick_rollout_rows(experience, per_source)
    records = [experience.records[i] for i in rows]
    prompts = tokenizer.batch_decode([r.prompt_ids for r in records])
    responses = tokenizer.batch_decode([r.response_ids for r in records], skip_special_tokens=True)
    advantages = experience.batch.advantages
    out = []
    for row, record, prompt, response in zip(rows, records, prompts, responses, strict=True):
        advantage = advantages[row] if advantages.dim() == 1 else advantages[row].max()
        out.append(
            {
                "step": step,
                "source": record.source,
                "prompt_id": record.prompt_id,
                "sample_index": record.sample_index,
                "weight_version": record.weight_version,
                "reward": float(experience.rewards[row]),
                "correct": bool(experience.correct[row]),
                "advantage": float(advantage),
                "finish_reason": record.finish_reason,
                "response_tokens": len(record.response_ids),
                "prompt": prompt,
                "response": response,
            }
        )
    return out


def eval_sample_rows(
    results: Sequence[ProblemResult],
    dataset: PromptDataset,
    tokenizer: PreTrainedTokenizerBase,
    step: int,
    problems: int,
) -> list[dict[str, Any]]:
    """The first sample of each of the first `problems` evaluation problems, decoded and scored
    (`step`: sampled from the learner's weights after that step; 0 = before training)."""
    shown = list(results[:problems])
    prompts = tokenizer.batch_decode([dataset.prompt_ids[r.index] for r in shown])
    return [
        {
            "step": step,
            "source": "eval",
            "problem": result.index,
            "data_source": result.data_source,
            "ground_truth": dataset[result.index].ground_truth,
            "pred": result.predictions[0],
            "correct": result.correct[0],
            "prompt": prompt,
            "response": result.responses[0],
        }
        for result, prompt in zip(shown, prompts, strict=True)
    ]


def write_sample_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write `rows` as JSONL to `path`, replacing it atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
