"""Math rewards: DAPO's `Answer:` line (+1 correct / -1 wrong), the `\\boxed{}` variant (1 / 0), and
for evaluation sets the boxed answer else the `Answer:` line (+1 / -1).

All three normalize the prediction and the ground truth (normalize.py) and compare the strings; when those
differ, math-verify decides whether the two are the same value (`\\frac{1}{2}` vs `0.5`, `2\\sqrt{2}`
vs `\\sqrt{8}`). Nothing here has a time limit of its own (sympy can run for ever on `9^{9^{9^9}}`):
untrusted output goes through `RewardScorer`, which kills a worker that overruns.

Score conventions: DAPO's reward is +1 / -1 (its recipe), the boxed variant's 1 / 0 (verl's math
reward), the boxed-or-answer reward's +1 / -1 (AIME sets, DAPO-scored before it); `acc` is the same
boolean in all three.
"""

from __future__ import annotations

import re

import math_verify

from megatron_s2l.reward.normalize import last_boxed_content, normalize_answer

DAPO_CORRECT, DAPO_WRONG = 1.0, -1.0
BOXED_CORRECT, BOXED_WRONG = 1.0, 0.0
DAPO_TAIL_CHARS = 300
"""DAPO only reads the end of a response: an `Answer:` line earlier than this is ignored."""

_ANSWER_LINE_RE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
# LaTeX extraction only: where the answer is not valid LaTeX (`42 (I think}`), math-verify's
# plain-expression extractor would pull a `42` out of it, undoing the check that the answer line hold
# the bare answer.
_LATEX_ONLY = [math_verify.LatexExtractionConfig()]


def last_answer_line(text: str) -> str | None:
    """What follows the last `Answer:` (any case) up to the end of its line; None if there is none."""
    matches = _ANSWER_LINE_RE.findall(text)
    return matches[-1] if matches else None


def answers_match(pred: str, truth: str) -> bool:
    """Whether two normalized answers are equal: as strings, else as values according to math-verify."""
    if not pred:
        return False
    if pred == truth:
        return True
    gold = math_verify.parse(f"${truth}$", extraction_config=_LATEX_ONLY, parsing_timeout=None)
    target = math_verify.parse(f"${pred}$", extraction_config=_LATEX_ONLY, parsing_timeout=None)
    return bool(gold and target) and math_verify.verify(gold, target, timeout_seconds=None)


def score_dapo(solution: str, ground_truth: str) -> dict[str, float | bool | str]:
    """DAPO's reward: the last `Answer:` line of the last 300 characters against the ground truth."""
    answer = last_answer_line(solution[-DAPO_TAIL_CHARS:])
    pred = normalize_answer(answer) if answer is not None else ""
    acc = answers_match(pred, normalize_answer(ground_truth))
    return {"score": DAPO_CORRECT if acc else DAPO_WRONG, "acc": acc, "pred": pred}


def score_boxed(solution: str, ground_truth: str) -> dict[str, float | bool | str]:
    """The boxed-answer reward: the last `\\boxed{...}` anywhere in the response against the truth."""
    boxed = last_boxed_content(solution)
    pred = normalize_answer(boxed) if boxed is not None else ""
    acc = answers_match(pred, normalize_answer(ground_truth))
    return {"score": BOXED_CORRECT if acc else BOXED_WRONG, "acc": acc, "pred": pred}


def score_boxed_or_answer(solution: str, ground_truth: str) -> dict[str, float | bool | str]:
    """The evaluation reward for AIME-style sets: the last `\\boxed{...}` anywhere in the response, else
    the last `Answer:` line anywhere, against the ground truth (+1 / -1).

    It reads the answers of both prompts `s2l data prepare` writes: the plain problem (a model then
    boxes its answer) and DAPO's instruction (an `Answer:` last line). The order and the whole-response
    reach follow the S2L-PO authors' extraction (github.com/qishisuren123/S2L-PO,
    eval/extract_answers.py at 0a9f929), so a response holding both is judged by its box. Their further
    fallbacks (the last `\\frac`, the last number, the last line) and their substring match are not
    taken: a response with neither a box nor an `Answer:` line is wrong.
    """
    answer = last_boxed_content(solution)
    if answer is None:
        answer = last_answer_line(solution)
    pred = normalize_answer(answer) if answer is not None else ""
    acc = answers_match(pred, normalize_answer(ground_truth))
    return {"score": DAPO_CORRECT if acc else DAPO_WRONG, "acc": acc, "pred": pred}
