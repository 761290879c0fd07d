"""The S2L-PO mixing schedule (Algorithm 1 of the seed paper).

At step i (1-based) of the first T_mix steps the explorer supplies G_w = ceil(alpha_i * G) samples of
each group of G, with alpha_i = 1 - (i-1)/(T_mix-1) = (T_mix - i)/(T_mix - 1); the learner supplies
G_s = G - G_w. After T_mix the run is plain on-policy GRPO (G_w = 0).

Two ways to run a mixing step (`schedule.mode`):
- `combined` (Algorithm 1): one rollout per step, each group holds G_w explorer and G_s learner
  samples and its advantages are relative to all of them.
- `alternating` (the authors' released training scripts): an explorer-only half-step (its own
  prompts, G_w explorer samples each, its own updates and weight sync), then a learner-only half-step
  (the next prompts, G_s learner samples each, sampled from the weights after the explorer half).
  A half-step with no samples (G_s = 0 at step 1, G_w = 0 after T_mix) is skipped.
`schedule.rounding: ceil-both` rounds both counts up as those scripts do (G_s = ceil((1 - alpha) G)),
so a mixing step can carry G + 1 samples per prompt.

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
from typing import Literal

ScheduleMode = Literal["combined", "alternating"]
Rounding = Literal["exact", "ceil-both"]
RolloutPart = Literal["combined", "explorer", "learner"]


@dataclass(kw_only=True, slots=True)
class ScheduleConfig:
    steps: int = 100
    """Training steps T (one rollout batch each, two for a mixing step of mode `alternating`;
    algo.ppo_mini_batch_prompts sets its optimizer updates)."""
    t_mix: int = 0
    """Mixing steps T_mix: the explorer share anneals from 1 at step 1 to 0 at step T_mix; 0 = no explorer."""
    group_size: int = 8
    """Samples per prompt G (explorer + learner), the group the advantage is relative to."""
    prompts_per_step: int = 32
    """Prompts per rollout batch."""
    mode: ScheduleMode = "combined"
    """How a mixing step runs: `combined` (Algorithm 1: explorer and learner samples in one group of
    G) or `alternating` (the released scripts: an explorer-only half-step, then a learner-only
    half-step on the next prompts, each with its own advantages, updates and weight sync)."""
    rounding: Rounding = "exact"
    """`exact`: G_s = G - G_w (Algorithm 1); `ceil-both`: G_s = ceil((1 - alpha) G), as the released
    scripts round (G_w + G_s = G + 1 when alpha G is not an integer)."""

    def __post_init__(self) -> None:
        for name in ("steps", "group_size", "prompts_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.t_mix < 0:
            raise ValueError(f"t_mix must be >= 0, got {self.t_mix}")
        if self.mode not in ("combined", "alternating"):
            raise ValueError(f"mode must be 'combined' or 'alternating', got {self.mode!r}")
        if self.rounding not in ("exact", "ceil-both"):
            raise ValueError(f"rounding must be 'exact' or 'ceil-both', got {self.rounding!r}")


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


def _ceil(share: Fraction, group_size: int) -> int:
    return -((-share.numerator * group_size) // share.denominator)  # exact ceil


def s2l_split(step: int, t_mix: int, group_size: int, rounding: Rounding = "exact") -> tuple[int, int]:
    """(g_explorer, g_learner) for 1-based `step`: G_w = ceil(alpha_i * G), and G_s = G - G_w
    (`exact`) or ceil((1 - alpha_i) * G) (`ceil-both`).

    Computed in integers: in floating point 1/3 * 9 = 3.0000000000000004 would round up to 4.
    """
    _check(step, t_mix, group_size)
    if rounding not in ("exact", "ceil-both"):
        raise ValueError(f"rounding must be 'exact' or 'ceil-both', got {rounding!r}")
    alpha = s2l_alpha(step, t_mix)
    g_explorer = _ceil(alpha, group_size)
    g_learner = group_size - g_explorer if rounding == "exact" else _ceil(1 - alpha, group_size)
    return g_explorer, g_learner


@dataclass(frozen=True, slots=True)
class StepRollout:
    """One rollout of a step: a combined one (Algorithm 1) or one half-step of `alternating`."""

    step: int
    part: RolloutPart
    g_explorer: int
    g_learner: int


def step_rollouts(step: int, schedule: ScheduleConfig) -> list[StepRollout]:
    """The rollouts of 1-based `step` in order: one `combined`, or the `explorer` then the `learner`
    half-step of `alternating` (a half-step with no samples is left out)."""
    g_explorer, g_learner = s2l_split(step, schedule.t_mix, schedule.group_size, schedule.rounding)
    if schedule.mode == "combined":
        return [StepRollout(step, "combined", g_explorer, g_learner)]
    halves = [StepRollout(step, "explorer", g_explorer, 0), StepRollout(step, "learner", 0, g_learner)]
    return [half for half in halves if half.g_explorer + half.g_learner > 0]


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    step: int
    alpha: float
    g_explorer: int
    g_learner: int


def s2l_schedule(steps: int, t_mix: int, group_size: int, rounding: Rounding = "exact") -> list[ScheduleRow]:
    """The whole schedule for steps 1..`steps`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rows = []
    for step in range(1, steps + 1):
        g_explorer, g_learner = s2l_split(step, t_mix, group_size, rounding)
        rows.append(ScheduleRow(step, float(s2l_alpha(step, t_mix)), g_explorer, g_learner))
    return rows
