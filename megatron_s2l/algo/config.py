"""What the GRPO update does with a rollout batch: advantages, the objective, PPO mini-batches and
epochs, and the DAPO extras. The S2L mixing schedule is configured by `ScheduleConfig` beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_s2l.algo.loss import LossConfig

FilterMetric = Literal["acc", "reward"]
MiniBatchUnit = Literal["prompts", "samples"]
RolloutCorrection = Literal["none", "tis"]


@dataclass(kw_only=True, slots=True)
class AlgoConfig:
    norm_adv_by_std: bool = True
    """Divide group-centred rewards by the group std (GRPO); false is Dr.GRPO."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The policy objective: clipping, aggregation, KL and entropy terms."""
    ppo_mini_batch_prompts: int = 0
    """Prompts (whole groups) per optimizer update; 0 = the whole step in one update. The step's
    batch is cut into prompts_per_step / ppo_mini_batch_prompts updates (verl's ppo_mini_batch_size)."""
    explorer_mini_batch: MiniBatchUnit = "prompts"
    """What `ppo_mini_batch_prompts` counts in an explorer half-step of `schedule.mode: alternating`:
    `prompts` (whole groups, as everywhere else) or `samples` (the released scripts, whose explorer
    runs leave rollout.n unset: G_w times as many updates, each of ppo_mini_batch_prompts samples;
    0 = prompts_per_step samples).
    Only `prompts` is allowed with `schedule.mode: combined`."""
    ppo_epochs: int = 1
    """Passes over the step's mini-batches (in a new seeded order each pass)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups that carry no signal and sample more prompts."""
    dynamic_sampling_metric: FilterMetric = "acc"
    """What must differ within a group to keep it: `acc` (the verifier's verdict, DAPO's scripts) or
    `reward` (the shaped score, which overlong shaping can make differ with equal verdicts)."""
    max_sampling_rounds: int = 10
    """With dynamic sampling: give up (error) after this many extra generation rounds per step."""
    overlong_buffer: int = 0
    """DAPO overlong shaping: penalise the last `overlong_buffer` tokens before max_new_tokens; 0 = off."""
    overlong_penalty_factor: float = 1.0
    """Penalty at max_new_tokens (linear from 0 at the buffer's start)."""
    rollout_correction: RolloutCorrection = "none"
    """`tis`: truncated importance sampling of the learner's samples, as verl's `tis_imp_ratio_cap`:
    each response token's policy loss is weighted by min(exp(old_logp - engine_logp), tis_cap)
    (detached), where engine_logp is the learner engine's log-prob of the token as sampled. It
    corrects the train/inference mismatch and, with `rollout.overlap: 1`, the samples' staleness.
    The explorer's samples are not reweighted (they are off-policy on purpose). `none`: no weights."""
    tis_cap: float = 2.0
    """Upper bound of the truncated importance weight (verl's default)."""

    def __post_init__(self) -> None:
        if self.ppo_mini_batch_prompts < 0:
            raise ValueError(f"ppo_mini_batch_prompts must be >= 0, got {self.ppo_mini_batch_prompts}")
        if self.explorer_mini_batch not in ("prompts", "samples"):
            raise ValueError(
                f"explorer_mini_batch must be 'prompts' or 'samples', got {self.explorer_mini_batch!r}"
            )
        if self.ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {self.ppo_epochs}")
        if self.dynamic_sampling_metric not in ("acc", "reward"):
            raise ValueError(
                f"dynamic_sampling_metric must be 'acc' or 'reward', got {self.dynamic_sampling_metric!r}"
            )
        if self.max_sampling_rounds < 1:
            raise ValueError(f"max_sampling_rounds must be >= 1, got {self.max_sampling_rounds}")
        if self.overlong_buffer < 0:
            raise ValueError(f"overlong_buffer must be >= 0, got {self.overlong_buffer}")
        if self.overlong_penalty_factor < 0:
            raise ValueError(f"overlong_penalty_factor must be >= 0, got {self.overlong_penalty_factor}")
        if self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be > 0, got {self.tis_cap}")

    def updates_per_step(self, prompts_per_step: int) -> int:
        """Optimizer updates one rollout step makes (mini-batches x epochs)."""
        prompts = self.ppo_mini_batch_prompts or prompts_per_step
        return prompts_per_step // prompts * self.ppo_epochs

    def by_samples(self, part: str) -> bool:
        """Whether the mini-batches of a rollout `part` ("combined", "explorer", "learner") count
        samples rather than prompts."""
        return part == "explorer" and self.explorer_mini_batch == "samples"

    def mini_batch_rows(self, part: str, prompts: int, group_size: int) -> int:
        """Rows (samples) per optimizer update of a rollout `part` with `prompts` groups of
        `group_size`."""
        if self.by_samples(part):
            return self.ppo_mini_batch_prompts or prompts
        return (self.ppo_mini_batch_prompts or prompts) * group_size

    def updates_per_rollout(self, part: str, prompts: int, group_size: int) -> int:
        """Optimizer updates of one rollout `part` (mini-batches x epochs)."""
        return prompts * group_size // self.mini_batch_rows(part, prompts, group_size) * self.ppo_epochs
