"""The Megatron learner: parallel start-up, Qwen3 from/to Hugging Face, log-probs, the GRPO train step.

Megatron-core itself is imported lazily (inside functions), so importing this package is cheap.
"""

from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.learner.export import export_hf, iter_hf_weights
from megatron_s2l.learner.learner import (
    Learner,
    LearnerConfig,
    LoadedPolicy,
    load_hf_policy,
    wrap_for_training,
)
from megatron_s2l.learner.optimizer import OptimizerConfig
from megatron_s2l.learner.parallel import ParallelConfig, ParallelLayout, init_distributed

__all__ = [
    "Learner",
    "LearnerConfig",
    "LoadedPolicy",
    "OptimizerConfig",
    "ParallelConfig",
    "ParallelLayout",
    "TrainBatch",
    "export_hf",
    "init_distributed",
    "iter_hf_weights",
    "load_hf_policy",
    "wrap_for_training",
]
