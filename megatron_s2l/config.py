"""The run configuration: one typed section per component, loaded from `yaml/*.yaml`.

Load with `load_config(path, overrides)`; overrides are `key.sub=value`. Every default and its
meaning is listed in docs/config.md (generated from the docstrings below by `s2l config --reference`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from megatron_s2l.algo import AlgoConfig, ScheduleConfig
from megatron_s2l.algo.schedule import step_rollouts
from megatron_s2l.configio import ConfigError, apply_overrides, build, read_yaml
from megatron_s2l.data import DataConfig
from megatron_s2l.eval.protocol import no_think_sampling
from megatron_s2l.learner.learner import LearnerConfig
from megatron_s2l.learner.micro_batches import fits_micro_batches
from megatron_s2l.reward import RewardConfig
from megatron_s2l.rollout.config import RolloutConfig
from megatron_s2l.rollout.sampling_params import SamplingConfig
from megatron_s2l.run.wandb_log import WandbConfig
from megatron_s2l.sync.config import SyncConfig


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    learner: str = ""
    """Hugging Face checkpoint directory of the learner (the model being trained)."""
    explorer: str = ""
    """Hugging Face checkpoint directory of the frozen explorer; empty for plain GRPO (t_mix = 0)."""


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    every_steps: int = 0
    """Save learner and loop state every N steps (and at the end); 0 = only at the end."""
    keep_last: int = 2
    """Newest checkpoints kept on disk (older ones are deleted after a newer one is complete);
    0 = keep every checkpoint."""
    keep_steps: list[int] = field(default_factory=list)
    """Steps whose checkpoints `keep_last` never deletes (e.g. [4, 8, 16] to evaluate them later
    with `s2l export` / `s2l eval RUN_DIR@STEP`); each must be a step the run saves (a multiple
    of `every_steps`, or the last)."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {self.every_steps}")
        if self.keep_last < 0:
            raise ValueError(f"keep_last must be >= 0 (0 = keep all), got {self.keep_last}")
        bad = [step for step in self.keep_steps if step < 1]
        if bad:
            raise ValueError(f"keep_steps must be steps >= 1, got {bad}")

    def saves_at(self, step: int, last_step: int) -> bool:
        """Whether the run saves a checkpoint at `step` (every `every_steps`, and at the end)."""
        return step == last_step or (self.every_steps > 0 and step % self.every_steps == 0)


@dataclass(kw_only=True, slots=True)
class LoggingConfig:
    run_dir: str = "runs/{name}"
    """Run directory ({name} is replaced by the run name): config, metrics, plots, checkpoints."""
    tensorboard: bool = True
    """Also write TensorBoard event files."""
    dump_samples: int = 4
    """Samples written per source (explorer, learner) and step to `samples/step_NNNNNN.jsonl` in the
    run directory (prompt and response text, reward, verdict, weight version), and per evaluation to
    `samples/eval_step_NNNNNN.jsonl` (one sample of each of the first N problems); 0 = off."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases: the metrics of `metrics.jsonl` and the resolved config (off by default;
    `offline` keeps its files under the run directory)."""
    explorer_gap_every: int = 1
    """Every N mixing steps log `explorer/engine_minus_learner_logprob` (how much likelier the explorer
    finds its samples than the learner does), which needs the learner's log-probs at the explorer's
    temperature as well: one more log-softmax over the vocabulary for every token of the step's batch
    in the log-prob pass; 0 = never (the log-prob pass then costs what GRPO's does)."""

    def __post_init__(self) -> None:
        if self.dump_samples < 0:
            raise ValueError(f"dump_samples must be >= 0 (0 = off), got {self.dump_samples}")
        if self.explorer_gap_every < 0:
            raise ValueError(f"explorer_gap_every must be >= 0 (0 = never), got {self.explorer_gap_every}")


@dataclass(kw_only=True, slots=True)
class EvalConfig:
    every_steps: int = 0
    """Evaluate on the held-out prompts every N steps; 0 = never."""
    samples_per_prompt: int = 16
    """k of avg@k (the paper reports avg@16)."""
    sampling: SamplingConfig = field(default_factory=no_think_sampling)
    """How the learner engines sample evaluation responses: by default the paper's no-think protocol
    (`s2l eval`'s defaults: temperature 0.7, top_p 0.8, top_k 20, presence penalty 1.5, up to 38,912
    new tokens), independent of `rollout.learner_sampling`. `max_new_tokens` is capped to the
    engine's context (`rollout.learner.engine.context_length`, else the model's) less the longest
    evaluation prompt. The prompts use `data.template`, as the training prompts do."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {self.every_steps}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")


@dataclass(kw_only=True, slots=True)
class S2LConfig:
    name: str = "run"
    """Run name (used in the run directory)."""
    seed: int = 0
    """Seed for data order, sampling seeds and initialisation."""
    ranks: int = 1
    """Learner processes started on this node (TP x PP x DP) when not launched by torchrun."""
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Checks across sections; raises ValueError naming the keys."""
        if self.ranks < 1:
            raise ValueError(f"ranks must be >= 1, got {self.ranks}")
        if self.schedule.t_mix > 0 and not self.model.explorer:
            raise ValueError("schedule.t_mix > 0 needs model.explorer (the explorer's checkpoint)")
        if self.rollout.learner_sampling.temperature <= 0:
            raise ValueError("rollout.learner_sampling.temperature must be > 0: GRPO samples the learner")
        parallel = self.learner.parallel
        model_parallel = parallel.tensor_parallel * parallel.pipeline_parallel
        if self.ranks % model_parallel:
            raise ValueError(
                f"ranks ({self.ranks}) must be a multiple of tensor_parallel * pipeline_parallel"
            )
        prompts = self.schedule.prompts_per_step
        per_update = self.algo.ppo_mini_batch_prompts or prompts
        if prompts % per_update:
            raise ValueError(
                f"schedule.prompts_per_step ({prompts}) must be a multiple of algo.ppo_mini_batch_prompts "
                f"({per_update}): each optimizer update takes whole groups"
            )
        rows = per_update * self.schedule.group_size
        dp = self.ranks // model_parallel
        # With a token budget the micro-batches vary in rows: only the DP split must be even.
        fixed_rows = parallel.max_tokens_per_micro_batch is None
        per_step = dp * parallel.micro_batch_size if fixed_rows else dp

        def splits(rows: int) -> bool:
            per_rank, uneven = divmod(rows, dp)
            return not uneven and (not fixed_rows or fits_micro_batches(per_rank, parallel.micro_batch_size))

        if not splits(rows):
            raise ValueError(
                f"each optimizer update's {rows} sequences (algo.ppo_mini_batch_prompts or "
                f"schedule.prompts_per_step, times group_size) must be divisible by data-parallel size"
                + (f" * learner.parallel.micro_batch_size ({per_step})" if fixed_rows else f" ({dp})")
            )
        self._validate_mixing_mode()
        self._validate_overlap()
        self._validate_cpu_cores()
        for part, rows in _batch_sizes(self.schedule, self.algo):
            if not splits(rows):
                raise ValueError(
                    f"schedule.mode {self.schedule.mode}, schedule.rounding {self.schedule.rounding}: "
                    f"a {part} rollout's batch or optimizer update of {rows} sequences is not divisible "
                    f"by data-parallel size"
                    + (f" * learner.parallel.micro_batch_size ({per_step})" if fixed_rows else f" ({dp})")
                )
        never_saved = [
            s for s in self.checkpoint.keep_steps if not self.checkpoint.saves_at(s, self.schedule.steps)
        ]
        if never_saved:
            raise ValueError(
                f"checkpoint.keep_steps {never_saved}: no checkpoint is saved at these steps "
                f"(checkpoint.every_steps {self.checkpoint.every_steps}, "
                f"schedule.steps {self.schedule.steps})"
            )
        max_new = self.rollout.learner_sampling.max_new_tokens
        if self.algo.overlong_buffer > max_new:
            raise ValueError(
                f"algo.overlong_buffer ({self.algo.overlong_buffer}) exceeds max_new_tokens ({max_new})"
            )

    def _validate_mixing_mode(self) -> None:
        if self.schedule.mode == "alternating" and self.schedule.t_mix == 0:
            raise ValueError(
                "schedule.mode alternating needs schedule.t_mix > 0 (without an explorer every step "
                "is a learner-only step: use schedule.mode combined)"
            )
        if self.algo.explorer_mini_batch == "samples" and self.schedule.mode != "alternating":
            raise ValueError(
                "algo.explorer_mini_batch samples applies to the explorer half-steps of schedule.mode "
                "alternating; schedule.mode combined has none (use algo.explorer_mini_batch prompts)"
            )

    def _validate_cpu_cores(self) -> None:
        """No core on two lists: the learner ranks' and each pool's engines' (a shared explorer's may
        overlap the learner engines': it runs on their cores)."""
        lists = {
            "learner.cpu_cores": self.learner.cpu_cores,
            "rollout.learner.cpu_cores": self.rollout.learner.cpu_cores,
            "rollout.explorer.cpu_cores": self.rollout.explorer.cpu_cores,
        }
        shared = self.rollout.explorer.placement == "shared"
        for (a, cores_a), (b, cores_b) in itertools.combinations(lists.items(), 2):
            both = sorted(set(cores_a or ()) & set(cores_b or ()))
            if both and not (shared and a.startswith("rollout.") and b.startswith("rollout.")):
                raise ValueError(
                    f"{a} and {b} both list core(s) {both}: each core runs the learner ranks or one "
                    "pool's engines (rollout.explorer.placement shared puts the explorer's engines on the "
                    "learner engines' cores)"
                )

    def _validate_overlap(self) -> None:
        if not self.rollout.overlap:
            return
        if self.schedule.mode != "combined":
            raise ValueError(
                f"rollout.overlap 1 needs schedule.mode combined, got {self.schedule.mode} (a learner "
                "half-step samples from the weights of the explorer half-step just before it)"
            )
        if self.algo.dynamic_sampling:
            raise ValueError(
                "rollout.overlap 1 and algo.dynamic_sampling: dynamic sampling draws more prompts until "
                "the batch is full, which an early rollout cannot know in advance; turn one off"
            )


def _batch_sizes(schedule: ScheduleConfig, algo: AlgoConfig) -> list[tuple[str, int]]:
    """(part, rows) of every distinct rollout batch and optimizer update the run makes."""
    sizes = set()
    for step in range(1, schedule.steps + 1):
        for rollout in step_rollouts(step, schedule):
            group = rollout.g_explorer + rollout.g_learner
            prompts = schedule.prompts_per_step
            sizes.add((rollout.part, prompts * group))
            sizes.add((rollout.part, algo.mini_batch_rows(rollout.part, prompts, group)))
    return sorted(sizes)


def load_config(path: str | Path, overrides: list[str] | None = None) -> S2LConfig:
    """Load `path` (with its `base:` chain), apply `key.sub=value` overrides, build and validate."""
    data = apply_overrides(read_yaml(path), overrides or [])
    cfg = build(S2LConfig, data, source=str(path))
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from e
    return cfg
