"""Reading prompt files in verl's format (parquet or JSONL) into typed records, checking every row.

A row has `data_source` (str), `prompt` (a list of {role, content} messages), `reward_model` (with a
string `ground_truth`; `style` is ignored) and optionally `extra_info` (a dict); `ability` and other
columns are ignored. A malformed row is an error naming the file, the row (parquet: 0-based row;
JSONL: 1-based line) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

PROMPT_FILE_SUFFIXES = (".parquet", ".jsonl")
REQUIRED_FIELDS = ("data_source", "prompt", "reward_model")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class PromptRecord:
    index: int
    """Position in its dataset (after deduplication and the length filter); the row number when read."""
    data_source: str
    """Selects the reward function (megatron_s2l.reward)."""
    messages: list[dict[str, str]]
    """The prompt as chat messages, each exactly {"role", "content"}."""
    ground_truth: str
    extra_info: dict[str, Any]


def _check_messages(prompt: object, where: str) -> list[dict[str, str]]:
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: field 'prompt' must be a non-empty list of messages, got {prompt!r:.100}")
    messages = []
    for i, message in enumerate(prompt):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f"{where}: field 'prompt' message {i} must be {{'role': one of {ROLES}, 'content': str}}, "
                f"got {message!r:.100}"
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def parse_row(row: dict[str, Any], index: int, where: str) -> PromptRecord:
    """Check one row and turn it into a record; `where` (file and row) prefixes any error."""
    for name in REQUIRED_FIELDS:
        if row.get(name) is None:
            raise ValueError(f"{where}: missing field {name!r}")
    data_source = row["data_source"]
    if not isinstance(data_source, str) or not data_source:
        raise ValueError(f"{where}: field 'data_source' must be a non-empty string, got {data_source!r:.100}")
    reward_model = row["reward_model"]
    ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(
            f"{where}: field 'reward_model.ground_truth' must be a non-empty string, "
            f"got {ground_truth!r:.100}"
        )
    extra_info = row.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise ValueError(f"{where}: field 'extra_info' must be a dict, got {extra_info!r:.100}")
    return PromptRecord(
        index=index,
        data_source=data_source,
        messages=_check_messages(row["prompt"], where),
        ground_truth=ground_truth,
        extra_info=extra_info,
    )


def _parquet_rows(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    parquet = pq.ParquetFile(path)
    missing = [name for name in REQUIRED_FIELDS if name not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (prompt files need {list(REQUIRED_FIELDS)})")
    row = 0
    for batch in parquet.iter_batches():  # batch by batch: DAPO-Math-17k has 1.8M rows, 99% duplicates
        for values in batch.to_pylist():
            yield values, f"{path} row {row}"
            row += 1


def _jsonl_rows(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                values = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(values, dict):
                raise ValueError(f"{where}: a row must be a JSON object, got {type(values).__name__}")
            yield values, where


def _records(
    rows: Iterator[tuple[dict[str, Any], str]], path: Path, check_source: Callable[[str], None] | None
) -> Iterator[PromptRecord]:
    count = 0
    sources_ok: set[str] = set()
    for count, (values, where) in enumerate(rows, start=1):
        record = parse_row(values, count - 1, where)
        if check_source is not None and record.data_source not in sources_ok:
            try:
                check_source(record.data_source)
            except ValueError as e:
                raise ValueError(f"{where}: field 'data_source': {e}") from None
            sources_ok.add(record.data_source)
        yield record
    if count == 0:
        raise ValueError(f"{path}: the file has no rows")


def read_prompt_file(
    path: str | Path, *, check_source: Callable[[str], None] | None = None
) -> Iterator[PromptRecord]:
    """Records of a .parquet or .jsonl prompt file, in file order, each indexed by its row number.

    The file's name is checked at once; its rows are read and checked as the records are consumed.
    `check_source` (e.g. `megatron_s2l.reward.check_data_source`) rejects a row's `data_source` by
    raising ValueError; the error then names the file and row.
    """
    path = Path(path)
    if path.suffix not in PROMPT_FILE_SUFFIXES:
        raise ValueError(
            f"{path}: unknown file extension {path.suffix!r}; prompt files are .parquet or .jsonl"
        )
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    return _records(rows, path, check_source)
