"""The CPU demo's task: short multi-step arithmetic with a verifiable `Answer:` line.

Each problem chains `num_ops` additions/subtractions of small operands, e.g. "Compute 7 + 2 - 5.".
The worked solution the warm-up trains on states every intermediate result and ends with the DAPO
answer line: "7 + 2 = 9. 9 - 5 = 4.\\nAnswer: 4". Rows are written in verl's format (data source
`synthetic_arith`, scored by the DAPO math reward), with the worked solution in `extra_info`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from megatron_s2l.data.templates import build_dapo_prompt

SYNTHETIC_SOURCE = "synthetic_arith"


def arithmetic_problem(rng: random.Random, num_ops: int = 2, max_operand: int = 9) -> tuple[str, str, int]:
    """(problem, worked solution, answer) for one random chain of `num_ops` + / - operations."""
    value = rng.randint(0, max_operand)
    expression, steps = str(value), []
    for _ in range(num_ops):
        operand = rng.randint(0, max_operand)
        op = rng.choice("+-")
        result = value + operand if op == "+" else value - operand
        expression += f" {op} {operand}"
        steps.append(f"{value} {op} {operand} = {result}.")
        value = result
    return f"Compute {expression}.", " ".join(steps) + f"\nAnswer: {value}", value


def without_answer_line(solution: str) -> str:
    """The worked solution ending "The result is N." instead of the `Answer: N` line the reward reads."""
    work, answer = solution.rsplit("\nAnswer: ", 1)
    return f"{work}\nThe result is {answer}."


def write_arithmetic_dataset(
    path: str | Path, num_problems: int, *, seed: int, num_ops: int = 2, max_operand: int = 9
) -> Path:
    """Write `num_problems` distinct problems as verl-format JSONL rows; returns the path."""
    rng = random.Random(seed)
    max_distinct = (max_operand + 1) ** (num_ops + 1) * 2**num_ops
    if num_problems > max_distinct:
        raise ValueError(f"only {max_distinct} distinct problems exist for these sizes, asked {num_problems}")
    seen: set[str] = set()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        while len(seen) < num_problems:
            problem, solution, answer = arithmetic_problem(rng, num_ops, max_operand)
            if problem in seen:
                continue
            seen.add(problem)
            row = {
                "data_source": SYNTHETIC_SOURCE,
                "prompt": [{"role": "user", "content": build_dapo_prompt(problem)}],
                "ability": "math",
                "reward_model": {"ground_truth": str(answer), "style": "rule"},
                "extra_info": {"solution": solution},
            }
            f.write(json.dumps(row) + "\n")
    return path
