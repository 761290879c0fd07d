"""The demo's synthetic task: answers are right, worked solutions score as correct, rows parse."""

import random
from pathlib import Path

import pytest

from megatron_s2l.data import read_prompt_file
from megatron_s2l.demo.task import SYNTHETIC_SOURCE, arithmetic_problem, write_arithmetic_dataset
from megatron_s2l.reward import compute_score


def test_problems_have_correct_answers_and_solutions() -> None:
    rng = random.Random(seed := random.randrange(1 << 30))
    for _ in range(200):
        problem, solution, answer = arithmetic_problem(rng, num_ops=3, max_operand=12)
        expression = problem.removeprefix("Compute ").removesuffix(".")
        tokens = expression.split()
        value = int(tokens[0])
        for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
            value = value + int(operand) if op == "+" else value - int(operand)
        assert value == answer, (seed, problem)
        assert solution.endswith(f"\nAnswer: {answer}")
        assert compute_score(SYNTHETIC_SOURCE, solution, str(answer))["acc"]
        assert not compute_score(SYNTHETIC_SOURCE, solution, str(answer + 1))["acc"]


def test_dataset_rows_are_distinct_and_parse(tmp_path: Path) -> None:
    path = write_arithmetic_dataset(tmp_path / "train.jsonl", 50, seed=3)
    records = list(read_prompt_file(path))
    assert len(records) == 50
    assert len({r.messages[0]["content"] for r in records}) == 50
    assert all(r.data_source == SYNTHETIC_SOURCE and "Answer:" in r.messages[0]["content"] for r in records)
    assert path.read_text() == write_arithmetic_dataset(tmp_path / "again.jsonl", 50, seed=3).read_text()
    with pytest.raises(ValueError, match="distinct problems"):
        write_arithmetic_dataset(tmp_path / "x.jsonl", 10_000, seed=0, num_ops=1, max_operand=3)
