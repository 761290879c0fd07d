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


def test_solution_without_answer_line_scores_as_wrong_and_keeps_the_work() -> None:
    from megatron_s2l.demo.task import without_answer_line
    from megatron_s2l.reward import compute_score

    solution = "7 + 2 = 9. 9 - 5 = 4.\nAnswer: 4"
    assert compute_score("synthetic_arith", solution, "4")["acc"]
    other = without_answer_line(solution)
    assert other == "7 + 2 = 9. 9 - 5 = 4.\nThe result is 4."
    assert not compute_score("synthetic_arith", other, "4")["acc"]


def test_learning_summary_compares_the_change_with_the_noise_band() -> None:
    from megatron_s2l.demo.cli import learning_summary

    def evals(values: list[tuple[int, float, float]]) -> list[dict]:
        return [{"step": s, "eval/avg_at_k": v, "eval/avg_at_k_se": e} for s, v, e in values] + [{"step": 99}]

    lines = learning_summary(
        {
            "up": evals([(0, 0.30, 0.03), (10, 0.40, 0.03), (20, 0.60, 0.03)]),
            "flat": evals([(0, 0.30, 0.03), (20, 0.35, 0.03)]),
            "once": evals([(0, 0.30, 0.03)]),
        }
    )
    assert lines == [
        "up: held-out avg@k 0.300 +- 0.060 at step 0 -> 0.600 +- 0.060 at step 20: +0.300, beyond the noise "
        "band (+-0.085)",
        "flat: held-out avg@k 0.300 +- 0.060 at step 0 -> 0.350 +- 0.060 at step 20: +0.050, within the "
        "noise band (+-0.085)",
    ]
