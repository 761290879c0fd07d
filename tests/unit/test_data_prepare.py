"""`s2l data prepare`: DAPO / AIME / CommonsenseQA files in their public schemas -> verl-format parquet,
read back by the trainer's reader and scored by the rewards."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_s2l.cli import main
from megatron_s2l.data import prepare
from megatron_s2l.data.prepare import InputSummary, prepare_prompt_files
from megatron_s2l.data.records import PromptRecord, read_prompt_file
from megatron_s2l.data.templates import build_csqa_prompt, build_dapo_prompt
from megatron_s2l.reward import check_data_source, compute_score

NUM_GPUS = 0

CSQA_CHOICES = [("A", "bank"), ("B", "library"), ("C", "river"), ("D", "park"), ("E", "desert")]
CSQA_PROMPT = (  # the S2L-PO authors' text (eval/inference_csqa.py at 0a9f929), less " /no_think"
    "Where is money kept?\n\nA. bank\nB. library\nC. river\nD. park\nE. desert\n\n"
    "Answer with only the letter (A, B, C, D, or E)."
)


def _write(path: Path, rows: list[dict[str, Any]], row_group_size: int | None = None) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows, indent=1))
    return path


def _prepare(inputs: list[Path], output: Path, **kwargs: Any) -> list[InputSummary]:
    return prepare_prompt_files(inputs, output, check_source=check_data_source, **kwargs)


def _read(path: Path) -> list[PromptRecord]:
    return list(read_prompt_file(path, check_source=check_data_source))


def _counts(summary: InputSummary) -> tuple[str, int, int, int]:
    return summary.schema, summary.rows_read, summary.duplicates, summary.rows_written


def _dapo_row(problem: int, truth: str) -> dict[str, Any]:
    return {
        "data_source": "math_dapo",
        "prompt": [{"content": build_dapo_prompt(f"problem {problem}"), "role": "user"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": truth, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": f"uuid-{problem}"},
    }


def test_dapo_is_deduplicated_across_batches_keeping_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 50 prompts x 20 repeats, interleaved; only the first occurrence carries the true answer
    monkeypatch.setattr(prepare, "PARQUET_BATCH_ROWS", 64)
    rows = [_dapo_row(i % 50, str(i % 50) if i < 50 else "999") for i in range(1000)]
    dapo = _write(tmp_path / "dapo-math-17k.parquet", rows, row_group_size=100)
    out = tmp_path / "train.parquet"

    [summary] = _prepare([dapo], out)

    assert _counts(summary) == ("dapo", 1000, 950, 50)
    records = _read(out)
    assert [r.ground_truth for r in records] == [str(p) for p in range(50)]
    assert [r.messages for r in records] == [row["prompt"][:1] for row in rows[:50]]
    assert {r.data_source for r in records} == {"math_dapo"}
    assert [r.extra_info for r in records] == [{"index": f"uuid-{p}"} for p in range(50)]
    table = pq.read_table(out)
    assert table.column("ability").to_pylist() == ["MATH"] * 50
    assert {rm["style"] for rm in table.column("reward_model").to_pylist()} == {"rule-lighteval/MATH_v2"}


def test_limit_counts_unique_rows_per_input_and_stops_reading(tmp_path: Path) -> None:
    dapo = _write(tmp_path / "dapo.parquet", [_dapo_row(i % 4, str(i % 4)) for i in range(40)])
    more = _write(tmp_path / "more.jsonl", [_dapo_row(i, str(i)) for i in range(2, 8)])
    out = tmp_path / "out.parquet"

    summaries = _prepare([dapo, more], out, limit=3)

    # dapo: rows 0, 1, 2 are new; more: problem 2 was written already, 3, 4, 5 are new
    assert [_counts(s) for s in summaries] == [("dapo", 3, 0, 3), ("dapo", 4, 1, 3)]
    assert [r.ground_truth for r in _read(out)] == ["0", "1", "2", "3", "4", "5"]


AIME_FORMS = {
    # HuggingFaceH4/aime_2024: lower-case columns, int id, answers as strings (some zero-padded)
    "aime_2024.parquet": (
        [
            {
                "id": 60,
                "problem": " Find x. ",
                "solution": "...",
                "answer": "033",
                "url": "u",
                "year": "2024",
            },
            {
                "id": 61,
                "problem": "Find y.",
                "solution": "...",
                "answer": " 204 ",
                "url": "u",
                "year": "2024",
            },
        ],
        "aime24",
        [{"index": 0, "id": "60"}, {"index": 1, "id": "61"}],
    ),
    # Maxwell-Jia/AIME_2024 style: capitalised columns, int answers, string IDs
    "AIME2025-I.jsonl": (
        [
            {"ID": "2025-I-1", "Problem": "Find x.", "Solution": "...", "Answer": 33},
            {"ID": "2025-I-2", "Problem": "Find y.", "Solution": "...", "Answer": 204},
        ],
        "aime25",
        [{"index": 0, "id": "2025-I-1"}, {"index": 1, "id": "2025-I-2"}],
    ),
    # the S2L-PO authors' eval/data/aime24.jsonl: question/answer, here as a JSON list with float answers
    "aime24.json": (
        [
            {"question": "Find x.", "answer": 33.0, "exam": "AIME 2024"},
            {"question": "Find y.", "answer": 204.0},
        ],
        "aime24",
        [{"index": 0}, {"index": 1}],
    ),
}


@pytest.mark.parametrize("name", list(AIME_FORMS))
def test_aime_forms(tmp_path: Path, name: str) -> None:
    rows, source, extra_info = AIME_FORMS[name]
    out = tmp_path / "aime.parquet"

    [summary] = _prepare([_write(tmp_path / name, rows)], out)

    assert _counts(summary) == ("aime", 2, 0, 2)
    records = _read(out)
    # the default prompt is the S2L-PO authors' evaluation prompt: the problem alone, stripped
    assert [r.messages for r in records] == [
        [{"role": "user", "content": problem}] for problem in ("Find x.", "Find y.")
    ]
    assert [r.ground_truth for r in records] == ["33", "204"]
    assert [r.data_source for r in records] == [source, source]
    assert [{k: v for k, v in r.extra_info.items() if v is not None} for r in records] == extra_info
    assert pq.read_table(out).column("ability").to_pylist() == ["MATH", "MATH"]


@pytest.mark.parametrize(
    ("math_prompt", "build_prompt", "right", "wrong"),
    [
        # a plainly prompted model boxes its answer
        ("plain", lambda problem: problem, "so x = 33, and $\\boxed{33}$.", "so x = 34: \\boxed{34}"),
        ("dapo", build_dapo_prompt, "33 is too small... so x = 33.\nAnswer: 33", "x = 34.\nAnswer: 34"),
    ],
)
def test_aime_prompts_and_their_answers_score(
    tmp_path: Path, math_prompt: str, build_prompt: Any, right: str, wrong: str
) -> None:
    out = tmp_path / "aime.parquet"
    path = _write(tmp_path / "aime24.jsonl", [{"question": " Find x.\n", "answer": "033"}])

    _prepare([path], out, math_prompt=math_prompt)

    [record] = _read(out)
    assert record.messages == [{"role": "user", "content": build_prompt("Find x.")}]
    assert "/no_think" not in record.messages[0]["content"]  # `s2l eval` appends it
    assert compute_score(record.data_source, right, record.ground_truth) == {
        "score": 1.0,
        "acc": True,
        "pred": "33",
    }
    assert compute_score(record.data_source, wrong, record.ground_truth)["score"] == -1.0


def test_math500_needs_its_source_and_gets_the_boxed_reward(tmp_path: Path) -> None:
    row = {"problem": "Simplify 7/14.", "solution": "...", "answer": "\\frac{1}{2}", "unique_id": "u1"}
    out = tmp_path / "math500.parquet"

    _prepare([_write(tmp_path / "test.jsonl", [row])], out, source="HuggingFaceH4/MATH-500")

    [record] = _read(out)
    assert record.messages == [{"role": "user", "content": "Simplify 7/14."}]
    assert (record.data_source, record.ground_truth) == ("HuggingFaceH4/MATH-500", "\\frac{1}{2}")
    assert compute_score(record.data_source, "$\\boxed{0.5}$", record.ground_truth)["score"] == 1.0


def test_unknown_math_prompt_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"math_prompt must be one of \('plain', 'dapo'\), got 'boxed'"):
        _prepare([tmp_path / "missing.jsonl"], tmp_path / "out.parquet", math_prompt="boxed")


def test_aime_source_needs_a_year_in_the_name_or_the_option(tmp_path: Path) -> None:
    hf = _write(tmp_path / "train-00000-of-00001.parquet", [{"problem": "Find x.", "answer": "7"}])
    out = tmp_path / "out.parquet"
    with pytest.raises(
        ValueError, match=r"train-00000-of-00001\.parquet: cannot tell the AIME year.*--source"
    ):
        _prepare([hf], out)
    assert not out.exists()

    _prepare([hf], out, source="aime_2024_hf")
    assert [r.data_source for r in _read(out)] == ["aime_2024_hf"]
    # a source no reward scores is refused before any file is read
    with pytest.raises(ValueError, match="unknown data source 'gsm8k'"):
        _prepare([tmp_path / "missing.jsonl"], out, source="gsm8k")


def _csqa_hf(answer_key: str = "C", qid: str = "q0") -> dict[str, Any]:
    labels, texts = zip(*CSQA_CHOICES, strict=True)
    return {
        "id": qid,
        "question": "Where is money kept?",
        "question_concept": "money",
        "choices": {"label": list(labels), "text": list(texts)},
        "answerKey": answer_key,
    }


def _csqa_original(answer_key: str | None = "C", qid: str = "q0") -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": qid,
        "question": {
            "question_concept": "money",
            "choices": [{"label": label, "text": text} for label, text in CSQA_CHOICES],
            "stem": "Where is money kept?",
        },
    }
    if answer_key is not None:
        row["answerKey"] = answer_key
    return row


@pytest.mark.parametrize(
    ("name", "make_row"),
    [
        ("validation.parquet", _csqa_hf),  # the HF dataset
        ("validation.json", _csqa_hf),  # the HF dataset's to_json: JSON lines in a .json file
        ("dev_rand_split.jsonl", _csqa_original),  # the original release
    ],
)
def test_csqa_forms(tmp_path: Path, name: str, make_row: Any) -> None:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(make_row()) + "\n")
    else:
        _write(path, [make_row()])
    out = tmp_path / "csqa.parquet"

    [summary] = _prepare([path], out)

    assert _counts(summary) == ("csqa", 1, 0, 1)
    [record] = _read(out)
    assert record.messages == [{"role": "user", "content": CSQA_PROMPT}]
    assert (record.data_source, record.ground_truth, record.extra_info) == (
        "commonsense_qa",
        "C",
        {"index": 0, "id": "q0"},
    )
    for right in ("C", "C. river", "**C**", "The answer is C. A bank is by a river."):
        assert compute_score(record.data_source, right, record.ground_truth)["acc"], right
    assert not compute_score(record.data_source, "A. bank", record.ground_truth)["acc"]


def test_csqa_prompt_names_the_labels_it_lists() -> None:
    assert build_csqa_prompt("Where is money kept?", CSQA_CHOICES) == CSQA_PROMPT
    assert build_csqa_prompt("Q?", CSQA_CHOICES[:3]).endswith(
        "\n\nA. bank\nB. library\nC. river\n\nAnswer with only the letter (A, B, or C)."
    )
    assert build_csqa_prompt("Q?", CSQA_CHOICES[:2]).endswith("Answer with only the letter (A or B).")


def test_csqa_row_without_answer_is_an_error_naming_file_and_row(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    hf_test = _write(tmp_path / "test.parquet", [_csqa_hf(), _csqa_hf(answer_key="", qid="q1")])
    with pytest.raises(ValueError, match=r"test\.parquet row 1: no answerKey.*test split"):
        _prepare([hf_test], out)
    original = _write(tmp_path / "mixed.jsonl", [_csqa_original(), _csqa_original(answer_key=None, qid="q1")])
    with pytest.raises(ValueError, match=r"mixed\.jsonl line 2: no answerKey"):
        _prepare([original], out)
    # the original test split has no answerKey column at all: its columns name the problem
    original_test = _write(tmp_path / "test_rand_split_no_answers.jsonl", [_csqa_original(answer_key=None)])
    with pytest.raises(
        ValueError, match=r"columns \['id', 'question'\] match no known schema.*question \+ answerKey"
    ):
        _prepare([original_test], out)
    assert not out.exists()


def test_csqa_choice_labels_must_be_readable_by_the_reward(tmp_path: Path) -> None:
    row = _csqa_hf()
    row["choices"]["label"][4] = "F"  # the choice reward reads A-E only
    with pytest.raises(
        ValueError, match=r"bad\.jsonl line 1: the choices must have distinct labels among ABCDE"
    ):
        _prepare([_write(tmp_path / "bad.jsonl", [row])], tmp_path / "out.parquet")


def test_unknown_schema_names_file_columns_and_known_schemas(tmp_path: Path) -> None:
    path = _write(tmp_path / "other.jsonl", [{"text": "hello", "label": 1}])
    with pytest.raises(ValueError) as err:
        _prepare([path], tmp_path / "out.parquet")
    message = str(err.value)
    assert str(path) in message and "['text', 'label']" in message
    for known in (
        "dapo (data_source + prompt + reward_model)",
        "Problem + Answer",
        "csqa (question + answerKey)",
    ):
        assert known in message
    # a forced schema the columns do not fit
    aime = _write(tmp_path / "aime_2024.parquet", [{"problem": "Find x.", "answer": "7"}])
    with pytest.raises(ValueError, match=r"columns \['problem', 'answer'\] do not match the csqa schema"):
        _prepare([aime], tmp_path / "out.parquet", schema="csqa")


def test_forced_schema_picks_the_columns_to_convert(tmp_path: Path) -> None:
    # a verl file that also keeps the raw problem/answer columns: auto passes it through (its DAPO prompt
    # too, whatever the math prompt), aime rebuilds it with the math prompt
    row = _dapo_row(0, "7") | {"problem": "Find x.", "answer": "7"}
    path = _write(tmp_path / "aime_2024_verl.parquet", [row])
    _prepare([path], tmp_path / "auto.parquet", math_prompt="plain")
    _prepare([path], tmp_path / "aime.parquet", schema="aime")
    passed = _read(tmp_path / "auto.parquet")[0]
    assert passed.data_source == "math_dapo" and passed.messages == row["prompt"]
    rebuilt = _read(tmp_path / "aime.parquet")[0]
    assert rebuilt.data_source == "aime24" and rebuilt.messages[0]["content"] == "Find x."


def test_duplicates_across_inputs_and_schemas_that_do_not_share_a_table(tmp_path: Path) -> None:
    aime = _write(tmp_path / "aime_2024.jsonl", [{"problem": "Find x.", "answer": "7"}])
    out = tmp_path / "out.parquet"
    summaries = _prepare([aime, aime], out)
    assert [_counts(s) for s in summaries] == [("aime", 1, 0, 1), ("aime", 1, 1, 0)]
    # DAPO-Math-17k's extra_info.index is a uuid string, ours a row number
    dapo = _write(tmp_path / "dapo.parquet", [_dapo_row(0, "1")])
    with pytest.raises(ValueError, match=r"do not fit one parquet table.*separate files"):
        _prepare([dapo, aime], out)
    assert [r.ground_truth for r in _read(out)] == ["7"]  # the earlier output is untouched


def test_failure_leaves_no_file_and_keeps_an_earlier_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = _write(inputs / "aime_2024.parquet", [{"problem": "Find x.", "answer": "7"}])
    bad = _write(inputs / "csqa.jsonl", [_csqa_hf(), _csqa_hf(answer_key="", qid="q1")])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "eval.parquet"

    # a bad row in the second input: nothing is written
    with pytest.raises(ValueError, match=r"csqa\.jsonl line 2: no answerKey"):
        _prepare([good, bad], out)
    assert list(out_dir.iterdir()) == []

    # the write itself fails half-way: no half file, the earlier output stays as it was
    _prepare([good], out)
    before = out.read_bytes()

    def fail_half_way(table: pa.Table, where: Path) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", fail_half_way)
    with pytest.raises(OSError, match="No space left"):
        _prepare([good, _write(inputs / "csqa_ok.jsonl", [_csqa_hf()])], out)
    assert list(out_dir.iterdir()) == [out] and out.read_bytes() == before


def test_cli_twice_on_one_output_gives_the_same_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aime = _write(
        tmp_path / "aime_2025.parquet", [{"Problem": f"Find {c}.", "Answer": i} for i, c in enumerate("xyz")]
    )
    csqa = _write(tmp_path / "dev.jsonl", [_csqa_original(qid=f"q{i}") for i in range(2)])
    out = tmp_path / "data" / "eval.parquet"
    argv = ["data", "prepare", str(aime), str(csqa), "--output", str(out)]

    assert main(argv) == 0
    first, first_inode = out.read_bytes(), os.stat(out).st_ino
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{aime}: aime, 3 rows read, 0 duplicates dropped, 3 rows written",
        f"{csqa}: csqa, 2 rows read, 1 duplicates dropped, 1 rows written",  # same question and choices
        f"wrote 4 rows to {out}",
    ]
    assert main(argv) == 0
    assert out.read_bytes() == first and os.stat(out).st_ino != first_inode  # replaced, same content
    assert [r.data_source for r in _read(out)] == ["aime25"] * 3 + ["commonsense_qa"]


def test_cli_math_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aime = _write(tmp_path / "aime_2025.jsonl", [{"problem": "Find x.", "answer": "7"}])
    out = tmp_path / "aime.parquet"
    assert main(["data", "prepare", str(aime), "--math-prompt", "dapo", "--output", str(out)]) == 0
    assert _read(out)[0].messages[0]["content"] == build_dapo_prompt("Find x.")
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "prepare", str(aime), "--math-prompt", "boxed", "--output", str(out)])
    assert exit_info.value.code == 2
    assert "--math-prompt: invalid choice: 'boxed'" in capsys.readouterr().err


def test_cli_errors_exit_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "other.jsonl", [{"text": "hello"}])
    assert main(["data", "prepare", str(path), "--output", str(tmp_path / "o.parquet")]) == 2
    assert "match no known schema" in capsys.readouterr().err
    assert (
        main(["data", "prepare", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.parquet")])
        == 2
    )
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()
