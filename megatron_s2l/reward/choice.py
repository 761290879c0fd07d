"""Multiple-choice reward (CommonsenseQA, choices A-E): 1.0 for the right letter, 0.0 otherwise.

The chosen letter is read, in order of preference, from the last `Answer:` line (a `(C)` there, else
its first standalone letter), else the last `(C)` anywhere, else the last standalone capital A-E.
Parenthesized letters go first because a bare `A` is often just the article.
"""

from __future__ import annotations

import re

from megatron_s2l.reward.math_reward import last_answer_line

CHOICE_CORRECT, CHOICE_WRONG = 1.0, 0.0

_PAREN_LETTER_RE = re.compile(r"\(([A-E])\)")
_BARE_LETTER_RE = re.compile(r"\b([A-E])\b")


def extract_choice(solution: str) -> str:
    """The letter the response chose, or "" when it names none."""
    answer = last_answer_line(solution)
    if answer is not None:
        found = _PAREN_LETTER_RE.search(answer) or _BARE_LETTER_RE.search(answer)
        if found:
            return found[1]
    for pattern in (_PAREN_LETTER_RE, _BARE_LETTER_RE):
        letters = pattern.findall(solution)
        if letters:
            return letters[-1]
    return ""


def score_choice(solution: str, ground_truth: str) -> dict[str, float | bool | str]:
    pred = extract_choice(solution)
    acc = pred != "" and pred == ground_truth.strip().upper()
    return {"score": CHOICE_CORRECT if acc else CHOICE_WRONG, "acc": acc, "pred": pred}
