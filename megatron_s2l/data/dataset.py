"""Prompt datasets: read the files, drop duplicate prompts, tokenize, drop overlong prompts.

Overlong prompts are dropped and counted (with a warning), as verl's `filter_overlong_prompts` does,
rather than failing the run: one long problem among thousands should not stop a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, overload

from megatron_s2l.data.records import PROMPT_FILE_SUFFIXES, PromptRecord, read_prompt_file
from megatron_s2l.data.templates import PROMPT_TEMPLATES, PromptTemplate, encode_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """verl-format prompt files (.parquet or .jsonl), read in order."""
    eval_files: list[str] = field(default_factory=list)
    """Evaluation prompt files in the same format (AIME, CommonsenseQA, ...)."""
    template: PromptTemplate = "chat"
    """"chat": the tokenizer's chat template in Qwen3 no-think mode (an empty think block pre-filled);
    "chat-default": the chat template with its defaults (no think block; verl's training prompts, what
    the S2L-PO authors trained with); "chat-no-think-suffix": " /no_think" ending the user turn (the
    authors' evaluation); "raw": message contents only."""
    max_prompt_tokens: int = 2048
    """Prompts longer than this (in tokens, template included) are dropped at load, with a count."""
    dedup: bool = True
    """Keep only the first occurrence of each prompt (DAPO-Math-17k repeats each one 100 times)."""
    shuffle: bool = True
    """Shuffle the training prompts anew each epoch (the order depends only on the run seed and epoch)."""

    def __post_init__(self) -> None:
        if self.template not in PROMPT_TEMPLATES:
            raise ValueError(f"template must be one of {PROMPT_TEMPLATES}, got {self.template!r}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        for name, files in (("train_files", self.train_files), ("eval_files", self.eval_files)):
            for path in files:
                if Path(path).suffix not in PROMPT_FILE_SUFFIXES:
                    raise ValueError(f"{name}: {path!r} is not a .parquet or .jsonl file")


def prompt_id(split: str, index: int) -> str:
    """The id of prompt `index` of a loaded dataset (after deduplication and the length filter), e.g.
    "train-12": the key of its samples in the rollout and in the explorer cache."""
    return f"{split}-{index}"


@dataclass(frozen=True, slots=True)
class PromptDataset(Sequence[PromptRecord]):
    records: list[PromptRecord]
    """The prompts; records[i].index == i."""
    prompt_ids: list[list[int]]
    """Token ids of records[i] rendered with the configured template."""
    num_duplicates: int
    """Rows dropped as repeats of an earlier prompt (same messages)."""
    num_overlong: int
    """Prompts dropped for having more than max_prompt_tokens tokens."""

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> PromptRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[PromptRecord]: ...
    def __getitem__(self, index: int | slice) -> PromptRecord | list[PromptRecord]:
        return self.records[index]

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)


def _unique_records(
    files: Sequence[str], dedup: bool, check_source: Callable[[str], None] | None
) -> tuple[list[PromptRecord], int]:
    """All records of `files` in order, less repeated prompts when `dedup`; and how many were dropped."""
    seen: set[tuple[tuple[str, str], ...]] = set()
    records = []
    num_duplicates = 0
    for path in files:
        for record in read_prompt_file(path, check_source=check_source):
            if dedup:
                key = tuple((message["role"], message["content"]) for message in record.messages)
                if key in seen:
                    num_duplicates += 1
                    continue
                seen.add(key)
            records.append(record)
    return records, num_duplicates


def load_prompt_dataset(
    files: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    *,
    check_source: Callable[[str], None] | None = None,
) -> PromptDataset:
    """Read, deduplicate (cfg.dedup), tokenize (cfg.template) and length-filter the prompts of `files`.
    `check_source`: see `read_prompt_file`."""
    if not files:
        raise ValueError("no prompt files given")
    records, num_duplicates = _unique_records(files, cfg.dedup, check_source)
    all_ids = encode_prompts([record.messages for record in records], tokenizer, cfg.template)
    kept = [
        (record, ids)
        for record, ids in zip(records, all_ids, strict=True)
        if len(ids) <= cfg.max_prompt_tokens
    ]
    num_overlong = len(records) - len(kept)
    if num_overlong:
        logger.warning(
            "dropped %d of %d prompts longer than max_prompt_tokens=%d",
            num_overlong,
            len(records),
            cfg.max_prompt_tokens,
        )
    if not kept:
        raise ValueError(
            f"no prompts left in {list(files)}: {num_duplicates} duplicates and {num_overlong} prompts "
            f"over max_prompt_tokens={cfg.max_prompt_tokens} dropped"
        )
    logger.info("%d prompts from %s (%d duplicate rows dropped)", len(kept), list(files), num_duplicates)
    return PromptDataset(
        records=[replace(record, index=i) for i, (record, _) in enumerate(kept)],
        prompt_ids=[ids for _, ids in kept],
        num_duplicates=num_duplicates,
        num_overlong=num_overlong,
    )
