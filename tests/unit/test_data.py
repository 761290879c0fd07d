"""Prompt data: verl-format parquet/JSONL reading and checks, dedup, templates, length filter, sampler."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from megatron_s2l.data import (
    DataConfig,
    PromptRecord,
    PromptSampler,
    build_dapo_prompt,
    encode_prompts,
    load_prompt_dataset,
    read_prompt_file,
    render_prompt_text,
)
from megatron_s2l.demo.tiny import make_tokenizer

NUM_GPUS = 0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer_without_template(
    tokenizer: PreTrainedTokenizerBase, tmp_path_factory: pytest.TempPathFactory
) -> PreTrainedTokenizerBase:
    out_dir = tmp_path_factory.mktemp("tokenizer_raw")
    tokenizer.save_pretrained(out_dir)
    bare = AutoTokenizer.from_pretrained(out_dir)
    bare.chat_template = None
    return bare


def _row(problem: str, truth: str = "7", source: str = "math_dapo", uid: int = 0) -> dict[str, Any]:
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": build_dapo_prompt(problem)}],
        "ability": "MATH",
        "reward_model": {"ground_truth": truth, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": uid},
    }


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_dapo_prompt_is_the_dapo_template() -> None:
    assert build_dapo_prompt("What is 2+3?") == (
        "Solve the following math problem step by step. The last line of your response should be of the "
        "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
        "What is 2+3?\n\n"
        'Remember to put your answer on its own line after "Answer:".'
    )


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_read_prompt_file_parses_verl_rows(tmp_path: Path, suffix: str) -> None:
    rows = [_row("1+1", truth="2", uid=10), _row("2+2", truth="4", source="aime24", uid=11)]
    rows[1]["prompt"].insert(0, {"role": "system", "content": "Be brief."})
    write = _write_parquet if suffix == ".parquet" else _write_jsonl
    records = list(read_prompt_file(write(tmp_path / f"p{suffix}", rows)))
    assert records == [
        PromptRecord(
            index=0,
            data_source="math_dapo",
            messages=[{"role": "user", "content": build_dapo_prompt("1+1")}],
            ground_truth="2",
            extra_info={"index": 10},
        ),
        PromptRecord(
            index=1,
            data_source="aime24",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": build_dapo_prompt("2+2")},
            ],
            ground_truth="4",
            extra_info={"index": 11},
        ),
    ]


def _break(row: dict[str, Any], change: str) -> dict[str, Any]:
    if change == "no reward_model":
        del row["reward_model"]
    elif change == "prompt is a string":
        row["prompt"] = "What is 2+3?"
    elif change == "prompt is empty":
        row["prompt"] = []
    elif change == "message without content":
        row["prompt"] = [{"role": "user"}]
    elif change == "unknown role":
        row["prompt"] = [{"role": "robot", "content": "hi"}]
    elif change == "no ground truth":
        row["reward_model"] = {"style": "rule"}
    elif change == "ground truth is a number":
        row["reward_model"] = {"ground_truth": 5, "style": "rule"}
    elif change == "extra_info is a list":
        row["extra_info"] = [1, 2]
    return row


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no reward_model", "missing field 'reward_model'"),
        ("prompt is a string", "field 'prompt' must be a non-empty list"),
        ("prompt is empty", "field 'prompt' must be a non-empty list"),
        ("message without content", "field 'prompt' message 0"),
        ("unknown role", "field 'prompt' message 0"),
        ("no ground truth", "field 'reward_model.ground_truth'"),
        ("ground truth is a number", "field 'reward_model.ground_truth'.*got 5"),
        ("extra_info is a list", "field 'extra_info' must be a dict"),
    ],
)
def test_malformed_jsonl_row_names_file_line_and_field(tmp_path: Path, change: str, message: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [_row("1"), _row("2"), _break(_row("3"), change)])
    with pytest.raises(ValueError, match=rf"bad\.jsonl line 3: {message}"):
        list(read_prompt_file(path))


def test_malformed_parquet_row_names_file_row_and_field(tmp_path: Path) -> None:
    rows = [_row("1"), _row("2"), _row("3")]
    rows[2]["reward_model"] = {"ground_truth": None, "style": "rule"}
    path = _write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match=r"bad\.parquet row 2: field 'reward_model.ground_truth'"):
        list(read_prompt_file(path))


def test_parquet_missing_column_is_named(tmp_path: Path) -> None:
    rows = [_row("1")]
    del rows[0]["prompt"]
    path = _write_parquet(tmp_path / "noprompt.parquet", rows)
    with pytest.raises(ValueError, match=r"noprompt\.parquet: missing column\(s\) \['prompt'\]"):
        list(read_prompt_file(path))


def test_invalid_json_and_non_object_lines(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(_row("1")) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl line 3: invalid JSON"):
        list(read_prompt_file(path))
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl line 1: a row must be a JSON object"):
        list(read_prompt_file(path))


def test_empty_files_and_unknown_extensions(tmp_path: Path) -> None:
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n")
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([_row("1")]).slice(0, 0), empty_parquet)  # columns, no rows
    for path in (empty_jsonl, empty_parquet):
        with pytest.raises(ValueError, match="the file has no rows"):
            list(read_prompt_file(path))
    with pytest.raises(ValueError, match=r"prompts\.csv: unknown file extension '\.csv'"):
        read_prompt_file(tmp_path / "prompts.csv")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        read_prompt_file(tmp_path / "missing.jsonl")


def test_chat_template_renders_qwen3_no_think_generation_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    text = render_prompt_text(messages, tokenizer, "chat")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    [ids] = encode_prompts([messages], tokenizer, "chat")
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_no_think_suffix_template_ends_the_last_user_message_and_leaves_thinking_to_the_model(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """The S2L-PO authors' evaluation prompt: " /no_think" after the last user turn, and no empty
    think block written by the template (their scripts pass no enable_thinking)."""
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+3?"},
    ]
    text = render_prompt_text(messages, tokenizer, "chat-no-think-suffix")
    assert text == (
        "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
        "<|im_start|>user\n2+3? /no_think<|im_end|>\n<|im_start|>assistant\n"
    )
    assert messages[2]["content"] == "2+3?"  # the caller's messages are left alone


def test_chat_default_template_ends_at_the_assistant_turn_without_a_think_block(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """verl's training prompt (no enable_thinking argument), what the S2L-PO authors trained on: the
    Qwen3 template's own default, ending `<|im_start|>assistant\\n` with no pre-filled think block,
    and the very text their offline explorer sampling wrote by hand."""
    messages = [{"role": "user", "content": "2+3?"}]
    text = render_prompt_text(messages, tokenizer, "chat-default")
    assert text == "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert "<think>" in render_prompt_text(messages, tokenizer, "chat")  # the other template pre-fills
    [ids] = encode_prompts([messages], tokenizer, "chat-default")
    assert tokenizer.decode(ids) == text
    assert DataConfig(template="chat-default").template == "chat-default"


def test_raw_template_concatenates_contents(
    tokenizer: PreTrainedTokenizerBase, tokenizer_without_template: PreTrainedTokenizerBase
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    for tok in (tokenizer, tokenizer_without_template):
        assert render_prompt_text(messages, tok, "raw") == "Be brief.\n\n2+3?"
        [ids] = encode_prompts([messages], tok, "raw")
        assert tok.decode(ids) == "Be brief.\n\n2+3?"
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt_text(messages, tokenizer_without_template, "chat")


def test_load_dedups_keeps_first_occurrence_across_files(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    first = _write_parquet(tmp_path / "a.parquet", [_row("p1", uid=0), _row("p2", uid=1), _row("p1", uid=2)])
    second = _write_jsonl(tmp_path / "b.jsonl", [_row("p2", uid=3), _row("p3", uid=4), _row("p3", uid=5)])
    dataset = load_prompt_dataset([first, second], tokenizer, DataConfig())
    assert [record.extra_info["index"] for record in dataset] == [0, 1, 4]
    assert [record.index for record in dataset] == [0, 1, 2]
    assert dataset.num_duplicates == 3
    assert dataset.num_overlong == 0
    assert dataset.prompt_ids == encode_prompts([record.messages for record in dataset], tokenizer, "chat")

    everything = load_prompt_dataset([first, second], tokenizer, DataConfig(dedup=False))
    assert [record.extra_info["index"] for record in everything] == [0, 1, 2, 3, 4, 5]
    assert everything.num_duplicates == 0


def test_overlong_prompts_are_dropped_and_counted(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [_row("short", uid=0), _row("a much longer problem " * 20, uid=1), _row("tiny", uid=2)]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    lengths = [len(ids) for ids in load_prompt_dataset([path], tokenizer, DataConfig()).prompt_ids]
    limit = max(lengths[0], lengths[2])
    assert lengths[1] > limit
    with caplog.at_level(logging.WARNING):
        dataset = load_prompt_dataset([path], tokenizer, DataConfig(max_prompt_tokens=limit))
    assert [record.extra_info["index"] for record in dataset] == [0, 2]
    assert [record.index for record in dataset] == [0, 1]
    assert dataset.num_overlong == 1
    assert "dropped 1 of 3 prompts longer than max_prompt_tokens" in caplog.text
    with pytest.raises(ValueError, match="no prompts left"):
        load_prompt_dataset([path], tokenizer, DataConfig(max_prompt_tokens=min(lengths) - 1))
    with pytest.raises(ValueError, match="no prompt files given"):
        load_prompt_dataset([], tokenizer, DataConfig())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"template": "jinja"}, "template"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
        ({"train_files": ["data/train.csv"]}, "train_files"),
        ({"eval_files": ["aime.json"]}, "eval_files"),
    ],
)
def test_data_config_rejects_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DataConfig(**kwargs)


def _take(sampler: PromptSampler[Any], prompts_per_step: int, steps: int) -> list[list[Any]]:
    batches = sampler.batches(prompts_per_step)
    return [next(batches) for _ in range(steps)]


def test_sampler_epochs_are_fresh_permutations_without_partial_batches() -> None:
    items = list(range(10))
    batches = _take(PromptSampler(items, shuffle=True, seed=3), 3, 9)  # 3 batches per epoch, 1 left over
    epochs = [[item for batch in batches[i : i + 3] for item in batch] for i in (0, 3, 6)]
    for epoch in epochs:
        assert len(set(epoch)) == 9
    assert epochs[0] != epochs[1] != epochs[2]
    assert batches == _take(PromptSampler(items, shuffle=True, seed=3), 3, 9)
    assert batches != _take(PromptSampler(items, shuffle=True, seed=4), 3, 9)
    assert _take(PromptSampler(items, shuffle=False, seed=3), 4, 3) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [0, 1, 2, 3],
    ]


def test_sampler_resumes_exactly_from_its_state() -> None:
    items = list(range(7))
    reference = _take(PromptSampler(items, shuffle=True, seed=0), 2, 12)
    sampler = PromptSampler(items, shuffle=True, seed=0)
    assert _take(sampler, 2, 5) == reference[:5]
    state = sampler.state_dict()
    assert state == {"epoch": 1, "position": 4}  # 3 batches in epoch 0, then 2 in epoch 1
    resumed = PromptSampler(items, shuffle=True, seed=0)
    resumed.load_state_dict(state)
    assert _take(resumed, 2, 7) == reference[5:]


def test_sampler_rejects_bad_arguments_and_states() -> None:
    with pytest.raises(ValueError, match="empty dataset"):
        PromptSampler([], shuffle=True, seed=0)
    sampler = PromptSampler(list(range(4)), shuffle=True, seed=0)
    with pytest.raises(ValueError, match="prompts_per_step"):
        sampler.batches(5)
    with pytest.raises(ValueError, match="exactly the keys"):
        sampler.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="does not fit a dataset of 4 prompts"):
        sampler.load_state_dict({"epoch": 0, "position": 5})


def test_sampler_yields_dataset_records(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [_row(f"problem {i}", uid=i) for i in range(5)])
    dataset = load_prompt_dataset([path], tokenizer, DataConfig())
    [batch] = _take(PromptSampler(dataset, shuffle=False, seed=0), 2, 1)
    assert [record.extra_info["index"] for record in batch] == [0, 1]
    assert all(isinstance(record, PromptRecord) for record in batch)
