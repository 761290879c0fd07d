"""Reward functions (DAPO `Answer:` line, boxed, boxed-or-answer for AIME, multiple choice) and the
time-limited scorer. CPU only."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from megatron_s2l.reward import (
    RewardConfig,
    RewardResult,
    RewardScorer,
    check_data_source,
    compute_score,
    wrong_answer_score,
)
from megatron_s2l.reward.normalize import last_boxed_content, normalize_answer

NUM_GPUS = 0

# sympy evaluates this tower exactly when math-verify compares it with a number: it never finishes.
HANGING_ANSWER = "9^{9^{9^{9^{9}}}}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", "42"),
        (" -17 ", "-17"),
        ("−17", "-17"),  # Unicode minus
        ("$1,000$ dollars.", "1000"),
        ("1,234,567", "1234567"),
        ("(1,2)", "(1,2)"),  # a pair, not a thousands separator
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac 1 2", "\\frac{1}{2}"),
        ("\\frac{1}2", "\\frac{1}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("x = 5", "5"),
        ("The answer is $7$.", "7"),
        ("\\left( 3, 4 \\right)", "(3,4)"),
        ("30^\\circ", "30"),
        ("30^{\\circ}", "30"),
        ("25\\%", "25"),
        ("5\\text{ cm}^2", "5"),
        ("\\$12.50", "12.5"),
        ("\\text{(B)}", "(B)"),
        (".5", "0.5"),
        ("0.50", "0.5"),
        ("3.0", "3"),
        ("007", "7"),
        ("\\pi r^2", "\\pi r^2"),  # the space that separates \pi from r survives
        ("2 \\cdot 3", "2\\cdot3"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_last_boxed_content_balances_braces_and_takes_the_last() -> None:
    assert last_boxed_content("\\boxed{1} then \\boxed{\\frac{a}{b^{2}}} end") == "\\frac{a}{b^{2}}"
    assert last_boxed_content("\\fbox{7}") == "7"
    assert last_boxed_content("no box") is None
    assert last_boxed_content("\\boxed{\\frac{1}{2}") is None  # cut off


# The unwrapping normalize_answer did before it was made linear: unwrap the innermost wrappers, search
# again, until nothing changes (one pass per nesting level).
_OLD_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox)\s*\{([^{}]*)\}")


def _unwrap_text_by_fixpoint(text: str) -> str:
    while (unwrapped := _OLD_TEXT_WRAPPER_RE.sub(r"\1", text)) != text:
        text = unwrapped
    return text


@pytest.mark.parametrize(
    "text",
    [
        "\\text{5}",
        "5\\text{ cm}^2",
        "\\text{(B)}",
        "\\textbf{\\textit{yes}}",
        "\\text {5 \\mathrm{cm}} and \\mbox{x}",
        "\\text{\\frac{1}{2}}",  # holds braces: stays
        "\\text{a \\text{b} {c}}",  # the inner wrapper goes, the outer one holds {c}: stays
        "\\mathrm{\\mathbf{\\text{x}}}\\text{y}",
        "\\textcolor{red}{5}",  # not a wrapper
        "{\\text{a}",  # unbalanced both ways
        "\\text{a}}",
        "\\text{a{",
        "}\\text{a}{",
        "\\text{a\\}b",
        "\\text{}",
        "no wrapper at all",
    ],
)
def test_text_unwrapping_matches_the_fixpoint_it_replaced(text: str) -> None:
    from megatron_s2l.reward.normalize import _unwrap_text

    assert _unwrap_text(text) == _unwrap_text_by_fixpoint(text)


def test_text_unwrapping_is_linear_in_the_nesting_depth() -> None:
    """10k nested `\\text{` took 15 s when every nesting level cost a search of the whole answer."""
    nested = "\\text{" * 10_000 + "5" + "}" * 10_000
    start = time.monotonic()
    assert normalize_answer(nested) == "5"
    assert time.monotonic() - start < 1.0  # ~0.05 s alone on this 2-core CPU
    assert normalize_answer(nested.replace("5", "\\frac{1}{2}", 1)).startswith("\\text{")  # holds braces


@pytest.mark.parametrize(
    ("solution", "truth", "acc", "pred"),
    [
        ("2 + 40 = 42.\nAnswer: 42", "42", True, "42"),
        ("Answer: 41", "42", False, "41"),
        ("Answer: -7", "-7", True, "-7"),
        ("Answer: 7", "-7", False, "7"),
        ("ANSWER:   $\\dfrac{3}{4}$", "\\frac{3}{4}", True, "\\frac{3}{4}"),
        ("Answer: \\frac34", "\\frac{3}{4}", True, "\\frac{3}{4}"),
        ("Answer: $2\\sqrt{2}$", "2\\sqrt{2}", True, "2\\sqrt{2}"),
        ("Answer: \\boxed{12}", "12", True, "12"),
        ("Answer: 1,000", "1000", True, "1000"),
        ("Answer: 1000", "1,000", True, "1000"),
        ("Answer: x = 3", "3", True, "3"),
        # math-verify decides what string comparison cannot
        ("Answer: 0.5", "\\frac{1}{2}", True, "0.5"),
        ("Answer: \\sqrt{8}", "2\\sqrt{2}", True, "\\sqrt{8}"),
        ("Answer: 0.75", "\\dfrac{3}{4}", True, "0.75"),
        ("Answer: 0.33", "\\frac{1}{3}", False, "0.33"),
        ("Answer: 2\\sqrt{3}", "2\\sqrt{2}", False, "2\\sqrt{3}"),
        # format: no `Answer:`, or more than the bare answer on its line
        ("The answer is 42", "42", False, ""),
        ("So the result is \\boxed{42}", "42", False, ""),
        ("Answer: 42 is my final guess", "42", False, "42ismyfinalguess"),
        ("Answer: 42 (I think}", "42", False, "42(Ithink}"),  # not LaTeX: math-verify must not dig out 42
        ("Answer:\n42", "42", True, "42"),  # DAPO's `Answer\s*:\s*` lets the answer start a line below
        # the last Answer line wins
        ("Answer: 41\nwait, recheck.\nAnswer: 42", "42", True, "42"),
        ("Answer: 42\nwait, recheck.\nAnswer: 41", "42", False, "41"),
        # only the last 300 characters are read
        ("Answer: 42\n" + "x" * 300, "42", False, ""),
        ("Answer: 41\n" + "x" * 300 + "\nAnswer: 42", "42", True, "42"),
    ],
)
def test_dapo_math_reward(solution: str, truth: str, acc: bool, pred: str) -> None:
    result = compute_score("math_dapo", solution, truth)
    assert result == {"score": 1.0 if acc else -1.0, "acc": acc, "pred": pred}


@pytest.mark.parametrize("data_source", ["math_dapo", "math", "math_dapo_reasoning", "synthetic_arith"])
def test_dapo_sources_share_the_dapo_reward(data_source: str) -> None:
    assert compute_score(data_source, "Answer: 12", "12") == {"score": 1.0, "acc": True, "pred": "12"}
    assert compute_score(data_source, "12", "12")["score"] == -1.0
    # training data keeps DAPO's reward: a boxed answer alone does not count
    assert compute_score(data_source, "\\boxed{12}", "12") == {"score": -1.0, "acc": False, "pred": ""}


@pytest.mark.parametrize("data_source", ["aime24", "aime25", "aime_2025", "aime_2024_hf"])
@pytest.mark.parametrize(
    ("solution", "truth", "acc", "pred"),
    [
        # the plain prompt: a boxed answer
        ("so $x = 33$, and the answer is $\\boxed{33}$.", "33", True, "33"),
        ("\\boxed{32}", "33", False, "32"),
        ("first \\boxed{3}, no: \\boxed{33}", "33", True, "33"),
        ("x" * 1000 + "\\boxed{33}" + "y" * 1000, "33", True, "33"),  # anywhere, not the last 300 chars
        # the DAPO prompt: an `Answer:` line, anywhere
        ("2 + 31 = 33.\nAnswer: 33", "33", True, "33"),
        ("Answer: 33\n" + "x" * 400, "33", True, "33"),
        ("Answer: 41\nwait, recheck.\nAnswer: 33", "33", True, "33"),
        # both: the box wins, as in the S2L-PO authors' extraction
        ("\\boxed{33}\nAnswer: 34", "33", True, "33"),
        ("\\boxed{34}\nAnswer: 33", "33", False, "34"),
        # neither: no last-number fallback
        ("The answer is 33.", "33", False, ""),
        ("", "33", False, ""),
        ("\\boxed{33", "33", False, ""),  # a box cut off is no box, and there is no Answer line
        ("\\boxed{33\nAnswer: 33", "33", True, "33"),  # ... but an Answer line after it still counts
        # equivalent forms: normalization, then math-verify
        ("\\boxed{033}", "33", True, "33"),
        ("Answer: 033", "33", True, "33"),
        ("\\boxed{\\frac{1}{2}}", "0.5", True, "\\frac{1}{2}"),
        ("Answer: 0.5", "\\frac{1}{2}", True, "0.5"),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac34", True, "\\frac{3}{4}"),
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True, "\\sqrt{8}"),
        ("\\boxed{1,000}", "1000", True, "1000"),
        ("\\boxed{0.33}", "\\frac{1}{3}", False, "0.33"),
    ],
)
def test_aime_reward_reads_the_box_else_the_answer_line(
    data_source: str, solution: str, truth: str, acc: bool, pred: str
) -> None:
    assert compute_score(data_source, solution, truth) == {
        "score": 1.0 if acc else -1.0,
        "acc": acc,
        "pred": pred,
    }


@pytest.mark.parametrize(
    "data_source",
    ["math_boxed", "lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500"],
)
@pytest.mark.parametrize(
    ("solution", "truth", "acc", "pred"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac12", True, "\\frac{1}{2}"),
        ("first \\boxed{3}, no: \\boxed{4}", "4", True, "4"),
        ("first \\boxed{4}, no: \\boxed{3}", "4", False, "3"),
        ("\\boxed{0.5}", "\\frac{1}{2}", True, "0.5"),
        ("\\boxed{1,000}", "1000", True, "1000"),
        ("Answer: 4", "4", False, ""),  # no box
        ("x" * 1000 + "\\boxed{4}" + "y" * 1000, "4", True, "4"),  # no 300-character window here
    ],
)
def test_boxed_math_reward(data_source: str, solution: str, truth: str, acc: bool, pred: str) -> None:
    result = compute_score(data_source, solution, truth)
    assert result == {"score": 1.0 if acc else 0.0, "acc": acc, "pred": pred}


@pytest.mark.parametrize(
    ("solution", "truth", "acc", "pred"),
    [
        # answers to "Answer with only the letter (A, B, C, D, or E)."
        ("C", "C", True, "C"),
        ("C. bank", "C", True, "C"),
        ("C) bank", "C", True, "C"),
        ("**C**", "C", True, "C"),
        ("(C)", "C", True, "C"),
        ("(C) bank", "C", True, "C"),
        ("\n  C\n", "C", True, "C"),
        ("A", "A", True, "A"),
        ("A. bank", "A", True, "A"),
        ("The answer is C.", "C", True, "C"),
        ("The answer is C", "c", True, "C"),
        ("The correct answer is **C**.", "C", True, "C"),
        ("The best choice would be (E).", "E", True, "E"),
        ("Answer: C", "C", True, "C"),
        ("**Answer:** C", "C", True, "C"),
        ("Reasoning...\nAnswer: (B) bank", "B", True, "B"),
        # the article A is not the choice when another letter is given
        ("A fridge keeps food cold.\nAnswer: D", "D", True, "D"),
        ("A bank is where money is kept, so the answer is C.", "C", True, "C"),
        ("The answer is C. A bank is where money is kept.", "C", True, "C"),
        ("C. A bank is where money is kept.", "C", True, "C"),
        ("C\n\nA bank is where money is kept.", "C", True, "C"),
        ("A bank keeps money safe, so C.", "C", True, "C"),
        ("A bank.", "A", False, ""),  # nor when no letter is: an article is not an answer
        ("I pick (E) since A is wrong", "E", True, "E"),
        ("E.g. a bank keeps money: (B)", "B", True, "B"),  # "E.g." opens no choice
        # the explicit statements come before an opening letter and before other letters
        ("B. No wait, the answer is C.", "C", True, "C"),
        ("Answer: B\nThe answer is C.", "C", False, "B"),  # the Answer: line first
        ("Answer: B", "C", False, "B"),
        ("The answer is a bank", "A", False, ""),  # a lower-case "a" names no choice
        ("I do not know", "C", False, ""),
        ("Answer: F", "F", False, ""),  # only A-E are choices
    ],
)
def test_commonsense_qa_reward(solution: str, truth: str, acc: bool, pred: str) -> None:
    assert compute_score("commonsense_qa", solution, truth) == {"score": float(acc), "acc": acc, "pred": pred}


@pytest.mark.parametrize(
    ("solution", "truth", "acc", "pred"),
    [
        ("so 3 + 4 = 7\n#### 7", "7", True, "7"),
        ("#### 5 first, then #### 1,234", "1234", True, "1234"),  # the last one, commas dropped
        ("#### -12", "-12", True, "-12"),
        ("#### $12", "12", False, ""),  # verl's pattern takes no currency sign
        ("The answer is 7", "7", False, ""),  # no #### line
        ("#### 7" + "x" * 400, "7", False, ""),  # outside the last 300 characters
        ("#### 7.0", "7", False, "7.0"),  # verl compares strings
    ],
)
def test_gsm8k_reward_as_verl_scores_it(solution: str, truth: str, acc: bool, pred: str) -> None:
    assert compute_score("openai/gsm8k", solution, truth) == {"score": float(acc), "acc": acc, "pred": pred}


def test_unknown_data_source_names_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown data source 'gsm8k'.*math_dapo.*openai/gsm8k.*'aime'"):
        compute_score("gsm8k", "Answer: 1", "1")
    with pytest.raises(ValueError, match="unknown data source 'gsm8k'"):
        check_data_source("gsm8k")
    check_data_source("HuggingFaceH4/MATH-500")  # known: no error


def test_wrong_answer_score_follows_each_convention() -> None:
    assert wrong_answer_score("math_dapo") == -1.0
    assert wrong_answer_score("aime25") == -1.0
    assert wrong_answer_score("math") == -1.0  # verl routes "math" to the DAPO reward
    assert wrong_answer_score("lighteval/MATH") == 0.0
    assert wrong_answer_score("openai/gsm8k") == 0.0
    assert wrong_answer_score("commonsense_qa") == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"num_workers": 0}, "num_workers"),
        ({"max_memory_mb": 100}, "max_memory_mb"),
        ({"startup_timeout_s": 0.0}, "startup_timeout_s"),
    ],
)
def test_reward_config_rejects_bad_values(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RewardConfig(**kwargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # gone and reaped
        return False
    return True


def test_scorer_kills_and_replaces_workers_that_run_past_the_limit() -> None:
    cfg = RewardConfig(timeout_s=1.0, num_workers=2)
    with RewardScorer(cfg) as scorer:
        # The first batch waits for the workers to start (imports), which the limit does not cover.
        assert scorer.score([("math_dapo", "Answer: 3", "3")]) == [
            RewardResult(score=1.0, acc=True, pred="3")
        ]
        first_workers = set(scorer.worker_pids())
        assert len(first_workers) == 2
        with pytest.raises(ValueError, match="unknown data source 'nope'"):
            scorer.score([("math_dapo", "Answer: 1", "1"), ("nope", "x", "y")])

        start = time.monotonic()
        results = scorer.score(
            [
                ("math_dapo", "Answer: 0.5", "\\frac{1}{2}"),
                ("commonsense_qa", "Answer: (A)", "B"),
                ("math_dapo", f"Answer: {HANGING_ANSWER}", "5"),
                ("math_boxed", f"\\boxed{{{HANGING_ANSWER}}}", "5"),
            ]
        )
        elapsed = time.monotonic() - start
        assert elapsed < cfg.timeout_s + 2.0
        assert results == [
            RewardResult(score=1.0, acc=True, pred="0.5"),
            RewardResult(score=0.0, acc=False, pred="A"),
            RewardResult(score=-1.0, acc=False, pred="", timed_out=True),
            RewardResult(score=0.0, acc=False, pred="", timed_out=True),
        ]
        # Both hung workers were killed and reaped, and two fresh ones took their places.
        assert not any(_alive(pid) for pid in first_workers)
        second_workers = set(scorer.worker_pids())
        assert len(second_workers) == 2 and not second_workers & first_workers

        assert scorer.score([("math_dapo", "Answer: 8", "8"), ("math_boxed", "\\boxed{9}", "8")]) == [
            RewardResult(score=1.0, acc=True, pred="8"),
            RewardResult(score=0.0, acc=False, pred="9"),
        ]
    assert not any(_alive(pid) for pid in second_workers)
    assert not scorer.worker_pids()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score([("math_dapo", "Answer: 1", "1")])


def test_a_worker_that_dies_mid_item_costs_only_that_item() -> None:
    """A worker killed while scoring (here SIGKILL from outside, as the OOM killer would) gives that
    item the wrong-answer score, marked failed; the others are scored, a fresh worker takes over,
    and the scorer keeps working. Twice in a row."""
    import signal
    import threading

    cfg = RewardConfig(timeout_s=60.0, num_workers=2)
    with RewardScorer(cfg) as scorer:
        scorer.score([("math_dapo", "Answer: 3", "3")])  # the workers are up
        for _ in range(2):
            before = set(scorer.worker_pids())

            def kill_the_busy_worker() -> None:
                time.sleep(1.0)  # the hanging item is being scored by now
                busy = [w for w in scorer._workers if w is not None and w.index == 1]
                os.kill(busy[0].pid, signal.SIGKILL)

            killer = threading.Thread(target=kill_the_busy_worker)
            killer.start()
            start = time.monotonic()
            results = scorer.score(
                [
                    ("math_dapo", "Answer: 2", "2"),
                    ("math_dapo", f"Answer: {HANGING_ANSWER}", "5"),
                    ("commonsense_qa", "Answer: B", "B"),
                ]
            )
            killer.join()
            assert time.monotonic() - start < 30  # not the 60 s time limit
            assert results == [
                RewardResult(score=1.0, acc=True, pred="2"),
                RewardResult(score=-1.0, acc=False, pred="", failed=True),
                RewardResult(score=1.0, acc=True, pred="B"),
            ]
            after = set(scorer.worker_pids())
            assert len(after) == 2 and len(after - before) == 1  # exactly the dead one was replaced
        assert scorer.score([("math_dapo", "Answer: 8", "8")]) == [
            RewardResult(score=1.0, acc=True, pred="8")
        ]


def test_model_output_is_never_evaluated_as_code(tmp_path: Path) -> None:
    """Scoring parses answers (normalisation, LaTeX via math-verify's LaTeX extractor only); nothing
    in the reward package hands model output to eval/exec or sympy's eval-based parsers."""
    import megatron_s2l.reward as reward_package

    source = "\n".join(p.read_text() for p in Path(reward_package.__file__).parent.glob("*.py"))
    for forbidden in ("eval(", "exec(", "parse_expr", "sympify", "ExprExtractionConfig"):
        assert forbidden not in source, forbidden
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path('{marker}').touch()"
    for data_source in ("math_dapo", "math_boxed", "openai/gsm8k", "commonsense_qa"):
        for text in (f"Answer: {payload}", f"\\boxed{{{payload}}}", f"#### {payload}"):
            assert compute_score(data_source, text, "1")["acc"] is False
    assert not marker.exists()


@pytest.mark.parametrize(
    ("response", "truth", "acc", "pred"),
    [
        ("so it is \\boxed{42}.", "42", True, "42"),
        ("\\boxed{ABC}", "abc", True, "abc"),  # both sides lower-cased
        ("first \\boxed{3} then \\boxed{4}", "4", False, "3"),  # the FIRST boxed answer
        ("\\boxed{10}", "1", True, "10"),  # substring match: "1" is in "10"
        ("#### 72 apples\nbye", "72", True, "72 apples"),  # the rest of the #### line
        ("it is 3, then 5.", "5", True, "5."),  # else the last number (a full stop included)
        ("it is 3, then 5.", "3", False, "5."),
        ("-2.50 is it", "-2.5", True, "-2.50"),  # "-2.5" is in "-2.50"
        ("I do not know", "abc", False, "i do not know"),
        ("anything", "", True, "anything"),  # an empty ground truth matches everything
        ("the answer: 7", "\\boxed{7}", True, "7"),  # the ground truth is reduced the same way
    ],
)
def test_released_lenient_check_by_hand(response: str, truth: str, acc: bool, pred: str) -> None:
    """The S2L-PO authors' explorer check (`check_correctness` of their small_model_rollout2.py):
    1 / 0, boxed else #### else last number, equality or substring."""
    got = compute_score("s2l_released_lenient", response, truth)
    assert (got["acc"], got["pred"], got["score"]) == (acc, pred, 1.0 if acc else 0.0)
    assert wrong_answer_score("s2l_released_lenient") == 0.0


def test_explorer_source_must_name_a_reward_function() -> None:
    assert RewardConfig(explorer_source="s2l_released_lenient").explorer_source == "s2l_released_lenient"
    with pytest.raises(ValueError, match="explorer_source: unknown data source 'lenient'"):
        RewardConfig(explorer_source="lenient")
