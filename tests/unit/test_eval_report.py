"""`s2l eval`'s summaries: pass@k per k against the closed-form estimator, pass@1 == avg@n, pass@k
non-decreasing in k, maj@n, per-source splits, and the markdown table and JSON shape."""

import math
import random

import pytest

from megatron_s2l.eval.cli import markdown_table, model_report, plot_pass_at_k
from megatron_s2l.eval.score import ProblemResult, ks_up_to, summarize


def _problem(index: int, source: str, correct: list[bool], preds: list[str] | None = None) -> ProblemResult:
    preds = preds or [("right" if c else f"wrong{j}") for j, c in enumerate(correct)]
    return ProblemResult(index, source, [f"r{j}" for j in correct], preds, correct)


def test_ks_are_powers_of_two_then_n() -> None:
    assert ks_up_to(1) == [1]
    assert ks_up_to(16) == [1, 2, 4, 8, 16]
    assert ks_up_to(12) == [1, 2, 4, 8, 12]


def test_summary_matches_the_unbiased_formula_and_is_monotone_in_k() -> None:
    rng = random.Random(0)
    n = 12
    problems = [
        _problem(i, "aime24", [rng.random() < p for _ in range(n)]) for i, p in enumerate([0, 0.1, 0.5, 1])
    ]
    summary = summarize(problems, n)
    for k in ks_up_to(n):
        want = sum(1 - math.comb(n - sum(p.correct), k) / math.comb(n, k) for p in problems) / len(problems)
        assert summary["pass@k"][str(k)] == pytest.approx(want, abs=1e-12)
    assert summary["pass@k"]["1"] == pytest.approx(summary["avg@n"])
    values = list(summary["pass@k"].values())
    assert values == sorted(values)
    assert summary["problems"] == 4


def test_maj_at_n_votes_over_predictions() -> None:
    # 3 of 5 say "7" (wrong), 2 say "9" (right): the majority is wrong although pass@5 is 1.
    problem = _problem(0, "s", [False, True, False, True, False], ["7", "9", "7", "9", "7"])
    summary = summarize([problem, _problem(1, "s", [True] * 5, ["4"] * 5)], 5)
    assert summary["maj@n"] == 0.5 and summary["pass@k"]["5"] == 1.0


def test_report_splits_by_source_and_table_lists_every_row(tmp_path) -> None:
    problems = [_problem(0, "aime24", [True, False]), _problem(1, "commonsense_qa", [False, False])]
    report = model_report("m", 2, problems)
    assert set(report) == {"model", "n", "problems", "avg@n", "avg@n_se", "pass@k", "maj@n", "by_source"}
    assert report["avg@n"] == 0.25
    # Standard error over problems of the per-problem accuracies 0.5 and 0: sample std 0.3536 / sqrt(2).
    assert report["avg@n_se"] == pytest.approx(0.25) and report["by_source"]["aime24"]["avg@n_se"] == 0.0
    assert report["by_source"]["aime24"]["avg@n"] == 0.5 and report["by_source"]["commonsense_qa"][
        "pass@k"
    ] == {
        "1": 0.0,
        "2": 0.0,
    }
    table = markdown_table([report, model_report("other", 2, problems[:1])])
    assert table.splitlines()[0] == "| model | source | problems | avg@n | pass@1 | pass@2 | maj@n |"
    assert "| m | aime24 | 1 | 0.5000 | 0.5000 | 1.0000 | 1.0000 |" in table  # a tie: the first answer seen
    assert len(table.splitlines()) == 2 + 3 + 2
    png = plot_pass_at_k([report], tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
