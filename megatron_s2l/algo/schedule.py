"""The S2L-PO mixing schedule (Algorithm 1 of the seed paper).

At step i (1-based) of the first T_mix steps the explorer supplies G_w = ceil(alpha_i * G) samples of
each group of G, with alpha_i = 1 - (i-1)/(T_mix-1) = (T_mix - i)/(T_mix - 1); the learner supplies
G_s = G - G_w. After T_mix the run is plain on-policy GRPO (G_w = 0).

Edge cases, by design:
- T_mix = 0: no explorer at any step (the GRPO baseline).
- T_mix = 1: alpha_1 = 1 (the single mixing step is all explorer), then plain GRPO.
- T_mix > T (more mixing steps than the run has): the schedule is not stretched to fit; the run
  simply stops while alpha is still positive, so the last step still carries explorer samples.
  `s2l schedule` prints a note when that happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(kw_only=True, slots=True)
class ScheduleConfig:
    steps: int = 100
    """Training steps T (one rollout batch each; algo.ppo_mini_batch_prompts sets its optimizer updates)."""
    t_mix: int = 0
    """Mixing steps T_mix: the explorer share anneals from 1 at step 1 to 0 at step T_mix; 0 = no explorer."""
    group_size: int = 8
    """Samples per prompt G (explorer + learner), the group the advantage is relative to."""
    prompts_per_step: int = 32
    """Prompts per rollout batch."""

    def __post_init__(self) -> None:
        for name in ("steps", "group_size", "prompts_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.t_mix < 0:
            raise ValueError(f"t_mix must be >= 0, got {self.t_mix}")


def _check(step: int, t_mix: int, group_size: int) -> None:
    if step < 1:
        raise ValueError(f"step must be >= 1 (steps are 1-based), got {step}")
    if t_mix < 0:
        raise ValueError(f"t_mix must be >= 0, got {t_mix}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")


def s2l_alpha(step: int, t_mix: int) -> Fraction:
    """The explorer share alpha_i as an exact fraction (0 outside the mixing phase)."""
    _check(step, t_mix, 1)
    if step > t_mix:
        return Fraction(0)
    if t_mix == 1:
        return Fraction(1)
    return Fraction(t_mix - step, t_mix - 1)


def s2l_split(step: int, t_mix: int, group_size: int) -> tuple[int, int]:
    """(g_explorer, g_learner) for 1-based `step`: G_w = ceil(alpha_i * G), G_s = G - G_w.

    Computed in integers: in floating point 1/3 * 9 = 3.0000000000000004 would round up to 4.
    """
    _check(step, t_mix, group_size)
    alpha = s2l_alpha(step, t_mix)
    g_explorer = -((-alpha.numerator * group_size) // alpha.denominator)  # exact ceil
    return g_explorer, group_size - g_explorer


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    step: int
    alpha: float
    g_explorer: int
    g_learner: int


def s2l_schedule(steps: int, t_mix: int, group_size: int) -> list[ScheduleRow]:
    """The whole schedule for steps 1..`steps`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rows = []
    for step in range(1, steps + 1):
        g_explorer, g_learner = s2l_split(step, t_mix, group_size)
        rows.append(ScheduleRow(step, float(s2l_alpha(step, t_mix)), g_explorer, g_learner))
    return rows
