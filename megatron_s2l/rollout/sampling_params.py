"""Sampling parameters of one engine pool, in SGLang's `/generate` vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True, slots=True)
class SamplingConfig:
    """How one source is sampled (explorer and learner are configured separately)."""

    temperature: float = 1.0
    """0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    top_k: int = -1
    """-1 disables top-k."""
    max_new_tokens: int = 1024
    """Response length cap; a response cut here finishes with reason `length`."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token already in the response (Qwen3's no-think evaluation
    uses 1.5); 0 is off."""
    stop: list[str] = field(default_factory=list)
    """Stop strings (the EOS token always stops)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """More token ids that stop a response."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not -2 <= self.presence_penalty <= 2:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")

    def to_sglang(self, seed: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.presence_penalty:
            params["presence_penalty"] = self.presence_penalty
        if self.stop:
            params["stop"] = list(self.stop)
        if self.stop_token_ids:
            params["stop_token_ids"] = list(self.stop_token_ids)
        if seed is not None:
            params["sampling_seed"] = seed
        return params


# The S2L-PO authors sampled the frozen explorer at temperature 0.7, top_p 0.95 (docs/design.md 1).
def default_explorer_sampling() -> SamplingConfig:
    return SamplingConfig(temperature=0.7, top_p=0.95)
