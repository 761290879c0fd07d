"""Model mode of `s2l bench rollout`: the rollout FLOPs a schedule implies, S2L-PO against GRPO.

Per step and method, from the architectures and assumed mean lengths (rollout_flops.py):
- S2L-PO: per prompt, G_w explorer samples at the explorer's cost and G_s learner samples
  (`s2l_schedule`);
- GRPO: G learner samples every step;
- high-temperature GRPO: G learner samples every step, with its own response length (sampling
  hotter changes how long responses get, not what a token costs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_s2l.algo.schedule import s2l_schedule
from megatron_s2l.archs import ModelArch
from megatron_s2l.bench.rollout_flops import (
    decode_flops_per_token,
    generation_flops,
    mean_keys,
    prefill_flops,
)

METHODS = ("s2l", "grpo", "hightemp")


@dataclass(frozen=True, slots=True)
class Lengths:
    """Mean lengths in tokens, the same for every step."""

    prompt: int
    """Prompt tokens (context the responses attend to)."""
    learner: int
    """Response tokens of a learner sample (S2L-PO and GRPO)."""
    explorer: int
    """Response tokens of an explorer sample."""
    hightemp: int
    """Response tokens of a high-temperature GRPO sample."""

    def __post_init__(self) -> None:
        if self.prompt < 0:
            raise ValueError(f"prompt length must be >= 0, got {self.prompt}")
        for name in ("learner", "explorer", "hightemp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} response length must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class StepFlops:
    step: int
    alpha: float
    g_explorer: int
    g_learner: int
    flops: dict[str, float]
    """Generation FLOPs of the step per method (METHODS)."""


@dataclass(frozen=True, slots=True)
class ModelComparison:
    learner: ModelArch
    explorer: ModelArch
    group_size: int
    t_mix: int
    prompts_per_step: int
    lengths: Lengths
    rows: list[StepFlops]
    prefill: dict[str, float]
    """Prefill FLOPs of the whole run per method (kept out of the totals and savings)."""

    def total(self, method: str) -> float:
        return sum(row.flops[method] for row in self.rows)

    def saved_vs(self, baseline: str) -> float:
        """1 - S2L-PO / baseline, over the whole run."""
        return 1 - self.total("s2l") / self.total(baseline)

    def explorer_sample_share(self) -> float:
        """Explorer samples over all samples of the run (the most the explorer could save)."""
        return sum(row.g_explorer for row in self.rows) / (len(self.rows) * self.group_size)

    def flops_per_token(self) -> dict[str, float]:
        """Generation FLOPs per response token at each source's mean context."""
        n = self.lengths
        return {
            "explorer": decode_flops_per_token(self.explorer, mean_keys(n.prompt, n.explorer)),
            "learner": decode_flops_per_token(self.learner, mean_keys(n.prompt, n.learner)),
            "hightemp": decode_flops_per_token(self.learner, mean_keys(n.prompt, n.hightemp)),
        }

    def to_dict(self) -> dict[str, Any]:
        n = self.lengths
        return {
            "mode": "model",
            "assumptions": {
                "learner": self.learner.name,
                "explorer": self.explorer.name,
                "params": {"learner": self.learner.param_count(), "explorer": self.explorer.param_count()},
                "steps": len(self.rows),
                "t_mix": self.t_mix,
                "group_size": self.group_size,
                "prompts_per_step": self.prompts_per_step,
                "prompt_len": n.prompt,
                "learner_len": n.learner,
                "explorer_len": n.explorer,
                "hightemp_len": n.hightemp,
                "flops_per_token": self.flops_per_token(),
                "prefill_flops_per_prompt": {
                    "explorer": prefill_flops(self.explorer, n.prompt),
                    "learner": prefill_flops(self.learner, n.prompt),
                },
                "counted": "generation of every response token (one forward pass each, LM head included, "
                "at the mean context prompt_len + (len-1)/2 keys); prefill reported apart, not in the totals",
            },
            "steps": [
                {
                    "step": r.step,
                    "alpha": r.alpha,
                    "g_explorer": r.g_explorer,
                    "g_learner": r.g_learner,
                    **{f"{m}_flops": r.flops[m] for m in METHODS},
                }
                for r in self.rows
            ],
            "total_flops": {m: self.total(m) for m in METHODS},
            "prefill_flops": self.prefill,
            "explorer_sample_share": self.explorer_sample_share(),
            "rollout_flops_saved_vs_grpo": self.saved_vs("grpo"),
            "rollout_flops_saved_vs_hightemp": self.saved_vs("hightemp"),
        }


def compare_rollout_flops(
    learner: ModelArch,
    explorer: ModelArch,
    *,
    steps: int,
    t_mix: int,
    group_size: int,
    prompts_per_step: int,
    lengths: Lengths,
) -> ModelComparison:
    """Per-step generation FLOPs of S2L-PO, GRPO and high-temperature GRPO for one schedule."""
    if prompts_per_step < 1:
        raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")

    def samples(arch: ModelArch, count: int, length: int) -> float:
        """`count` samples of each prompt, of `length` tokens."""
        return generation_flops(arch, prompts_per_step * count * length, length, lengths.prompt)

    rows = [
        StepFlops(
            step=s.step,
            alpha=s.alpha,
            g_explorer=s.g_explorer,
            g_learner=s.g_learner,
            flops={
                "s2l": samples(explorer, s.g_explorer, lengths.explorer)
                + samples(learner, s.g_learner, lengths.learner),
                "grpo": samples(learner, group_size, lengths.learner),
                "hightemp": samples(learner, group_size, lengths.hightemp),
            },
        )
        for s in s2l_schedule(steps, t_mix, group_size)
    ]
    per_prompt = {
        "explorer": prefill_flops(explorer, lengths.prompt),
        "learner": prefill_flops(learner, lengths.prompt),
    }
    # S2L-PO prefills a prompt on each model that samples it in that step.
    s2l_prefill = sum(
        (row.g_explorer > 0) * per_prompt["explorer"] + (row.g_learner > 0) * per_prompt["learner"]
        for row in rows
    )
    baseline_prefill = len(rows) * per_prompt["learner"] * prompts_per_step
    prefill = {"s2l": s2l_prefill * prompts_per_step, "grpo": baseline_prefill, "hightemp": baseline_prefill}
    return ModelComparison(
        learner=learner,
        explorer=explorer,
        group_size=group_size,
        t_mix=t_mix,
        prompts_per_step=prompts_per_step,
        lengths=lengths,
        rows=rows,
        prefill=prefill,
    )
