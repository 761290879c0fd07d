"""The rollout section of the run config: the two engine pools, how each source is sampled, and the
client's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_s2l.rollout.client import ClientConfig
from megatron_s2l.rollout.pool import EnginePoolConfig
from megatron_s2l.rollout.sampling_params import SamplingConfig, default_explorer_sampling


@dataclass(kw_only=True, slots=True)
class RolloutConfig:
    """Explorer and learner engine pools, how each is sampled, and the client's limits."""

    explorer: EnginePoolConfig = field(default_factory=EnginePoolConfig)
    """The frozen explorer's servers (never receive weights)."""
    learner: EnginePoolConfig = field(default_factory=EnginePoolConfig)
    """The learner's servers (receive weights after every optimizer step)."""
    explorer_sampling: SamplingConfig = field(default_factory=default_explorer_sampling)
    """The authors sampled the explorer at temperature 0.7, top_p 0.95."""
    learner_sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """On-policy GRPO samples the learner at temperature 1."""
    client: ClientConfig = field(default_factory=ClientConfig)
    """Batching, concurrency, time-outs and retries of requests to either pool."""
    explorer_cache_path: str | None = None
    """JSONL of pre-generated explorer samples (tools/fill_explorer_cache.py); None samples live."""
    log_dir: str = "logs/rollout"
    """Where each server's log file goes."""

    def __post_init__(self) -> None:
        if not self.log_dir:
            raise ValueError("log_dir must not be empty")
