"""Multiple-choice reward (CommonsenseQA, choices A-E): 1.0 for the right letter, 0.0 otherwise.

The prompt (`build_csqa_prompt`, the S2L-PO authors') asks for "only the letter", so most answers
are "C", "C. bank", "**C**" or "(C)"; others reason first. The chosen letter is read, in order of
preference, from:
1. the last `Answer:` line: a `(C)` there, else its first standalone letter;
2. the last statement "answer/option/choice is C" (also "would be C", ": C", with `(C)`, `**C**`);
3. a letter opening the response on its own or before punctuation ("C", "C. bank", "(C)", "**C**");
4. the last `(C)` anywhere;
5. the last standalone capital A-E, the article excepted: an "A" before a lower-case word ("A bank
   is ...") is never read as a choice here.
Bare letters come last because a bare `A` is often just the article.
"""

from __future__ import annotations

import re

from megatron_s2l.reward.math_reward import last_answer_line

CHOICE_CORRECT, CHOICE_WRONG = 1.0, 0.0

_PAREN_LETTER_RE = re.compile(r"\(([A-E])\)")
_BARE_LETTER_RE = re.compile(r"\b([A-E])\b")
# The keyword in any case, the letter upper-case only: "the answer is a bank" names no choice.
_STATED_LETTER_RE = re.compile(
    r"(?i:\b(?:answer|option|choice)\s*(?:is(?:\s*:)?|would\s+be(?:\s*:)?|:))"
    r"\s*(?:\*\*)?\(?([A-E])\)?(?:\*\*)?(?!\w)"
)
# A letter alone on the first line, or followed by punctuation that is not part of a word ("E.g.").
_LEADING_LETTER_RE = re.compile(r"\A[\s*(\[]*([A-E])(?:[\s*)\].:]*$|[*)\].:,]+(?![A-Za-z]))", re.MULTILINE)
_NOT_ARTICLE_RE = re.compile(r"\b(?:A(?!\s+[a-z])|[B-E])\b")


def extract_choice(solution: str) -> str:
    """The letter the response chose, or "" when it names none."""
    answer = last_answer_line(solution)
    if answer is not None:
        found = _PAREN_LETTER_RE.search(answer) or _BARE_LETTER_RE.search(answer)
        if found:
            return found[1]
    stated = _STATED_LETTER_RE.findall(solution)
    if stated:
        return stated[-1]
    leading = _LEADING_LETTER_RE.match(solution)
    if leading:
        return leading[1]
    letters = _PAREN_LETTER_RE.findall(solution) or _NOT_ARTICLE_RE.findall(solution)
    return letters[-1] if letters else ""


def score_choice(solution: str, ground_truth: str) -> dict[str, float | bool | str]:
    pred = extract_choice(solution)
    acc = pred != "" and pred == ground_truth.strip().upper()
    return {"score": CHOICE_CORRECT if acc else CHOICE_WRONG, "acc": acc, "pred": pred}
