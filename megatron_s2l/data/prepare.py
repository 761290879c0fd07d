"""Public dataset files -> one verl-format parquet file the trainer reads (`s2l data prepare`).

Inputs are .parquet, .jsonl or .json files (a .json file holds either a JSON list of rows or JSON
lines, as `datasets.Dataset.to_json` writes them). Each input's schema is told by its columns (a JSON
file's: the keys of its first row), the first match in this order:

- dapo: verl rows (`data_source`, `prompt`, `reward_model`, ...), e.g. DAPO-Math-17k or DAPO's
  AIME-2024 parquet: each row is checked (`records.parse_row`) and passed through.
- aime: `problem`/`answer`, `Problem`/`Answer` or `question`/`answer` (HuggingFaceH4/aime_2024,
  Maxwell-Jia/AIME_2024, the S2L-PO authors' eval/data/aime24.jsonl, ...; MATH-500's columns too,
  with `source` HuggingFaceH4/MATH-500): the prompt `math_prompt` builds from the problem (below),
  the answer as the ground truth, ability "MATH", extra_info {index: the row number, id: the
  `id`/`ID` column as a string, when there is one}.
- csqa: CommonsenseQA, `question` + `answerKey`, the choices either in a `choices` column
  ({label: [...], text: [...]}, the HF dataset) or in the question ({stem, choices: [{label, text}]},
  the original jsonl): the S2L-PO authors' prompt (`build_csqa_prompt`), the letter as the ground
  truth.

`math_prompt` (`--math-prompt`), the user message of an aime row:
- "plain" (default): the problem text alone, as the S2L-PO authors' evaluation sends it
  (github.com/qishisuren123/S2L-PO, eval/inference.py at 0a9f929; their " /no_think" suffix is added
  by `s2l eval`, not stored). Models answer in `\\boxed{}`.
- "dapo": the problem inside DAPO's instruction (`build_dapo_prompt`), as in DAPO's AIME-2024
  validation parquet in verl: what the in-training evaluation of a DAPO-trained run sees. Models end
  with an `Answer:` line.
dapo rows are passed through with the prompt they carry, whatever `math_prompt` says.

data_source: `source` when given (for every row written); otherwise a dapo row keeps its own, csqa
rows get "commonsense_qa", and aime rows get "aime" + the year's last two digits, read from the
file's name right after "aime" (aime_2024.parquet, AIME2025-I.jsonl, aime24.jsonl -> aime24, aime25,
aime24); a name without one is an error asking for `source`. Names starting with "aime" get a
reward that reads either prompt's answer: the last `\\boxed{}`, else the last `Answer:` line
(megatron_s2l/reward/math_reward.py, `score_boxed_or_answer`).

A CommonsenseQA row without an answerKey is an error naming the file and row, not skipped: the test
split has no public answers at all, so skipping would quietly write an empty or partial eval set;
prepare the train or validation split instead.

A row whose prompt messages repeat an earlier row's (of any input) is dropped, the first kept:
DAPO-Math-17k holds each of its ~17.9k prompts about 100 times in 1.8M rows, read batch by batch.
The output is written to a temporary file, read back through `read_prompt_file` with `check_source`,
then renamed over `output`: a failure leaves `output` as it was.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from megatron_s2l.data.records import parse_row, read_prompt_file
from megatron_s2l.data.templates import build_csqa_prompt, build_dapo_prompt

SCHEMAS: dict[str, tuple[tuple[str, ...], ...]] = {
    "dapo": (("data_source", "prompt", "reward_model"),),
    "aime": (("problem", "answer"), ("Problem", "Answer"), ("question", "answer")),
    "csqa": (("question", "answerKey"),),
}
"""Each schema's column sets, in detection order: an input is of the first schema it has one set of."""
FORMATS = ("auto", *SCHEMAS)
INPUT_SUFFIXES = (".parquet", ".jsonl", ".json")
PARQUET_BATCH_ROWS = 8192
"""Rows per parquet read: memory then holds the unique prompts, not DAPO-Math-17k's 1.8M rows."""
CSQA_SOURCE = "commonsense_qa"
CHOICE_LABELS = "ABCDE"
"""The letters the choice reward (megatron_s2l/reward/choice.py) can read from a response."""

MATH_PROMPTS: dict[str, Callable[[str], str]] = {
    "plain": lambda problem: problem,  # the S2L-PO authors' evaluation prompt
    "dapo": build_dapo_prompt,
}
"""The user message of an aime row, from its problem, by `math_prompt` name (module docstring)."""

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowOptions:
    source: str | None
    """data_source of every row; None: the schema's default (module docstring)."""
    math_prompt: Callable[[str], str]
    """Builds an aime row's user message from its problem (a value of MATH_PROMPTS)."""


RowConverter = Callable[[Row, tuple[str, ...], int, str, RowOptions], Row]
"""(input row, the schema's column set it matched, row number, where (for errors), options) -> output row."""

_AIME_YEAR_RE = re.compile(r"aime[^0-9]*(?:20)?(\d\d)(?!\d)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class InputSummary:
    path: Path
    schema: str
    rows_read: int
    """Rows read; fewer than the file holds when `limit` stopped the reading."""
    duplicates: int
    """Rows dropped for repeating the prompt of an earlier row (of this input or an earlier one)."""
    rows_written: int

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.schema}, {self.rows_read} rows read, {self.duplicates} duplicates "
            f"dropped, {self.rows_written} rows written"
        )


def _output_row(
    data_source: str,
    messages: list[dict[str, str]],
    ability: str | None,
    reward_model: dict[str, Any],
    extra_info: dict[str, Any] | None,
) -> Row:
    return {
        "data_source": data_source,
        "prompt": messages,
        "ability": ability,
        "reward_model": reward_model,
        "extra_info": extra_info,
    }


def _dapo_row(row: Row, columns: tuple[str, ...], index: int, where: str, options: RowOptions) -> Row:
    record = parse_row(row, index, where)
    return _output_row(
        options.source or record.data_source,
        record.messages,
        row.get("ability"),
        row["reward_model"],
        row.get("extra_info") or None,  # parquet cannot store an empty struct
    )


def _aime_answer(value: object, column: str, where: str) -> str:
    """The answer as a string: 204, 204.0 (a float column), "204" and " 204 " all give "204", and the
    zero-padded "033" of some dumps gives "33"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where}: field {column!r} must be an integer or a string, got {value!r:.100}")
    answer = str(value).strip()
    if not answer:
        raise ValueError(f"{where}: field {column!r} is empty")
    return str(int(answer)) if answer.isascii() and answer.isdigit() else answer


def _aime_row(row: Row, columns: tuple[str, ...], index: int, where: str, options: RowOptions) -> Row:
    problem_column, answer_column = columns
    problem = row[problem_column]
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(
            f"{where}: field {problem_column!r} must be a non-empty string, got {problem!r:.100}"
        )
    extra_info: dict[str, Any] = {"index": index}
    original_id = row.get("id", row.get("ID"))
    if original_id is not None:
        extra_info["id"] = str(original_id)  # int in some dumps, "2024-I-1" in others: one column type
    assert options.source is not None  # _convert_file names the source of every aime input
    return _output_row(
        options.source,
        [{"role": "user", "content": options.math_prompt(problem.strip())}],
        "MATH",
        {"ground_truth": _aime_answer(row[answer_column], answer_column, where), "style": "rule"},
        extra_info,
    )


def _csqa_choices(row: Row, where: str) -> tuple[str, list[tuple[str, str]]]:
    """The question's text and its (label, text) choices, from either form, checked."""
    question = row["question"]
    try:
        if isinstance(question, dict):  # the original jsonl
            stem = question["stem"]
            choices = [(choice["label"], choice["text"]) for choice in question["choices"]]
        else:  # the HF dataset
            stem = question
            choices = list(zip(row["choices"]["label"], row["choices"]["text"], strict=True))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: not a CommonsenseQA row ({type(e).__name__}: {e}); expected `question` "
            "{stem, choices: [{label, text}, ...]}, or a `question` string and `choices` {label: [...], "
            "text: [...]}"
        ) from None
    if not isinstance(stem, str) or not stem.strip():
        raise ValueError(f"{where}: the question must be a non-empty string, got {stem!r:.100}")
    labels = [label for label, _ in choices]
    if (
        not choices
        or len(set(labels)) != len(labels)
        or not all(isinstance(label, str) and len(label) == 1 and label in CHOICE_LABELS for label in labels)
        or not all(isinstance(text, str) and text.strip() for _, text in choices)
    ):
        raise ValueError(
            f"{where}: the choices must have distinct labels among {CHOICE_LABELS} (the letters the "
            f"choice reward reads) and non-empty texts, got {choices!r:.200}"
        )
    return stem.strip(), [(label, text.strip()) for label, text in choices]


def _csqa_row(row: Row, columns: tuple[str, ...], index: int, where: str, options: RowOptions) -> Row:
    answer = row.get("answerKey")
    if not answer:
        raise ValueError(
            f"{where}: no answerKey (the CommonsenseQA test split has no public answers: prepare the "
            "train or validation split)"
        )
    stem, choices = _csqa_choices(row, where)
    if answer not in [label for label, _ in choices]:
        raise ValueError(f"{where}: answerKey {answer!r} is not one of the choice labels")
    extra_info: dict[str, Any] = {"index": index}
    if row.get("id") is not None:
        extra_info["id"] = str(row["id"])
    return _output_row(
        options.source or CSQA_SOURCE,
        [{"role": "user", "content": build_csqa_prompt(stem, choices)}],
        "commonsense",
        {"ground_truth": answer, "style": "rule"},
        extra_info,
    )


_CONVERTERS: dict[str, RowConverter] = {"dapo": _dapo_row, "aime": _aime_row, "csqa": _csqa_row}


def _parquet_rows(parquet: pq.ParquetFile, path: Path) -> Iterator[tuple[Row, str]]:
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for values in batch.to_pylist():
            yield values, f"{path} row {row}"
            row += 1


def _json_rows(path: Path) -> Iterator[tuple[object, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err})") from None
        yield from ((item, f"{path} item {i}") for i, item in enumerate(items))
        return
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines cuts at
    for line_number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield json.loads(line), f"{path} line {line_number}"
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path} line {line_number}: invalid JSON ({err.msg}); a {path.suffix} file holds one "
                    "JSON object per line" + (" or a JSON list of them" if path.suffix == ".json" else "")
                ) from None


def _checked_objects(rows: Iterator[tuple[object, str]]) -> Iterator[tuple[Row, str]]:
    for values, where in rows:
        if not isinstance(values, dict):
            raise ValueError(f"{where}: a row must be a JSON object, got {type(values).__name__}")
        yield values, where


def _read_rows(path: Path) -> tuple[list[str], Iterator[tuple[Row, str]]]:
    """The file's column names, and its rows, each with where it is (file and row) for errors."""
    if path.suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        return parquet.schema_arrow.names, _parquet_rows(parquet, path)
    rows = _checked_objects(_json_rows(path))
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{path}: the file has no rows")
    return list(first[0]), itertools.chain([first], rows)


def _detect(path: Path, columns: list[str], schema: str) -> tuple[str, tuple[str, ...]]:
    """(schema name, the column set it matched) of an input: the first match, or the forced schema's."""
    for name in SCHEMAS if schema == "auto" else (schema,):
        for column_set in SCHEMAS[name]:
            if set(column_set) <= set(columns):
                return name, column_set
    known = "; ".join(
        f"{name} ({' or '.join(' + '.join(column_set) for column_set in column_sets)})"
        for name, column_sets in SCHEMAS.items()
    )
    mismatch = "match no known schema" if schema == "auto" else f"do not match the {schema} schema"
    raise ValueError(f"{path}: columns {columns} {mismatch}; the schemas, by their columns: {known}")


def _aime_source(path: Path) -> str:
    found = _AIME_YEAR_RE.search(path.name)
    if found is None:
        raise ValueError(
            f"{path}: cannot tell the AIME year from the file name (as in aime_2024.parquet or "
            "aime25.jsonl): give the data source (--source aime24)"
        )
    return f"aime{found[1]}"


def _convert_file(
    path: Path,
    schema: str,
    options: RowOptions,
    limit: int | None,
    check_source: Callable[[str], None],
    seen: set[tuple[tuple[str, str], ...]],
    out: list[Row],
) -> InputSummary:
    """Append the new rows of `path` to `out` (`seen`: the prompts written so far) and summarize."""
    columns, rows = _read_rows(path)
    name, column_set = _detect(path, columns, schema)
    if name == "aime" and options.source is None:
        options = dataclasses.replace(options, source=_aime_source(path))
    convert = _CONVERTERS[name]
    sources_ok: set[str] = set()
    read = duplicates = written = 0
    for read, (values, where) in enumerate(rows, start=1):
        row = convert(values, column_set, read - 1, where, options)
        if row["data_source"] not in sources_ok:
            try:
                check_source(row["data_source"])
            except ValueError as e:
                raise ValueError(f"{where}: field 'data_source': {e}") from None
            sources_ok.add(row["data_source"])
        key = tuple((message["role"], message["content"]) for message in row["prompt"])
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        out.append(row)
        written += 1
        if written == limit:
            break
    if read == 0:
        raise ValueError(f"{path}: the file has no rows")
    return InputSummary(path=path, schema=name, rows_read=read, duplicates=duplicates, rows_written=written)


def _write_checked(rows: list[Row], output: Path, check_source: Callable[[str], None]) -> None:
    """Write `rows` to a temporary file beside `output`, read it back, and rename it to `output`."""
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        # e.g. DAPO-Math-17k's extra_info.index (a uuid string) next to our row numbers
        raise ValueError(
            f"the rows do not fit one parquet table ({e}): prepare inputs of different schemas into "
            "separate files"
        ) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    # Beside the output so the rename stays on one file system; ends in .parquet for read_prompt_file.
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp.parquet")
    try:
        pq.write_table(table, tmp)
        for _ in read_prompt_file(tmp, check_source=check_source):
            pass  # every row parses and has a data source some reward scores
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare_prompt_files(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    check_source: Callable[[str], None],
    schema: str = "auto",
    source: str | None = None,
    math_prompt: str = "plain",
    limit: int | None = None,
) -> list[InputSummary]:
    """Convert `inputs` (in order) into one verl-format parquet file `output`; a summary per input.

    `check_source` (e.g. `megatron_s2l.reward.check_data_source`) rejects a data source no reward
    scores by raising ValueError. `schema`: one of FORMATS ("auto": told by each input's columns).
    `source`: the data_source of every row (default: see the module docstring). `math_prompt`: a key
    of MATH_PROMPTS, the prompt of aime rows. `limit`: write at most this many rows of each input,
    counted after deduplication.
    """
    paths = [Path(path) for path in inputs]
    output = Path(output)
    if not paths:
        raise ValueError("no input files given")
    if output.suffix != ".parquet":
        raise ValueError(f"{output}: the output must be a .parquet file")
    if schema not in FORMATS:
        raise ValueError(f"schema must be one of {FORMATS}, got {schema!r}")
    if math_prompt not in MATH_PROMPTS:
        raise ValueError(f"math_prompt must be one of {tuple(MATH_PROMPTS)}, got {math_prompt!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if source is not None:
        check_source(source)
    for path in paths:  # all of them before reading any: DAPO-Math-17k takes a while
        if path.suffix not in INPUT_SUFFIXES:
            raise ValueError(f"{path}: unknown file extension {path.suffix!r}; inputs are {INPUT_SUFFIXES}")
        if not path.is_file():
            raise FileNotFoundError(f"input file {path} does not exist")
    rows: list[Row] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    options = RowOptions(source=source, math_prompt=MATH_PROMPTS[math_prompt])
    summaries = [_convert_file(path, schema, options, limit, check_source, seen, rows) for path in paths]
    _write_checked(rows, output, check_source)
    return summaries
