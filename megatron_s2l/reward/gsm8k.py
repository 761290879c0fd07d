"""GSM8K's reward as verl scores `openai/gsm8k`: the last `#### <number>` of the response's last 300
characters, commas removed, equal to the ground truth as a string (1 / 0)."""

from __future__ import annotations

import re

GSM8K_CORRECT, GSM8K_WRONG = 1.0, 0.0
GSM8K_TAIL_CHARS = 300

_FINAL_ANSWER_RE = re.compile(r"#### (-?[0-9.,]+)")


def score_gsm8k(solution: str, ground_truth: str) -> dict[str, float | bool | str]:
    matches = _FINAL_ANSWER_RE.findall(solution[-GSM8K_TAIL_CHARS:])
    pred = matches[-1].replace(",", "") if matches else ""
    acc = bool(pred) and pred == ground_truth.strip().replace(",", "")
    return {"score": GSM8K_CORRECT if acc else GSM8K_WRONG, "acc": acc, "pred": pred}
