"""The lenient 1 / 0 check the S2L-PO authors scored their offline explorer samples with, as released:
`normalize_answer` and `check_correctness` of verl/examples/small_model_rollout2.py in
github.com/qishisuren123/S2L-PO (commit 9623386, before the verl fork was removed), rewritten line
for line. Data source name: `s2l_released_lenient` (for `reward.explorer_source`).

Both the response and the ground truth are normalised the same way (stripped, lower-cased), then
reduced to the first `\\boxed{...}` content (no nested braces), else the rest of the line after the
first `####`, else the last number (`-?\\d+\\.?\\d*`), else the whole text. A response is correct when
its reduced text equals the ground truth's or merely contains it as a substring: a ground truth of
"1" matches a prediction of "10", and an empty ground truth matches anything. That leniency is the
point of keeping it: it reproduces the explorer rewards the released runs trained on, not a good check.
"""

from __future__ import annotations

import re

LENIENT_CORRECT, LENIENT_WRONG = 1.0, 0.0

_BOXED_RE = re.compile(r"\\boxed\{([^}]+)\}")
_HASH_RE = re.compile(r"####\s*(.+)")
_NUMBER_RE = re.compile(r"-?\d+\.?\d*")


def reduce_answer(text: str) -> str:
    """The released `normalize_answer`: boxed content, else after `####`, else the last number."""
    text = text.strip().lower()
    boxed = _BOXED_RE.search(text)
    if boxed:
        return boxed.group(1).strip().lower()
    after_hash = _HASH_RE.search(text)
    if after_hash:
        return after_hash.group(1).strip().lower()
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return numbers[-1]
    return text


def score_released_lenient(solution: str, ground_truth: str) -> dict[str, float | bool | str]:
    """1 when the reduced response equals, or contains, the reduced ground truth; else 0."""
    pred, truth = reduce_answer(solution), reduce_answer(ground_truth)
    acc = pred == truth or truth in pred
    return {"score": LENIENT_CORRECT if acc else LENIENT_WRONG, "acc": acc, "pred": pred}
