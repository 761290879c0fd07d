"""The S2L-PO authors' evaluation protocol (their `eval/inference.py`, no-think mode): the one place
its sampling settings live. `s2l eval` and the evaluation inside a training run (`eval.sampling`)
both start from it.

    from megatron_s2l.eval.protocol import no_think_sampling
    no_think_sampling()  # SamplingConfig(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5, ...)
"""

from __future__ import annotations

from dataclasses import replace

from megatron_s2l.rollout.sampling_params import SamplingConfig

TEMPERATURE = 0.7
TOP_P = 0.8
TOP_K = 20
PRESENCE_PENALTY = 1.5
MAX_NEW_TOKENS = 38_912
"""Qwen3's recommended output budget; capped to the context the engine has left after the prompt."""
SAMPLES_PER_PROBLEM = 16
"""avg@16: the paper's Pass@1 averaged over 16 samples per problem."""
TEMPLATE = "chat-no-think-suffix"
"""The chat template with " /no_think" ending the user turn."""


def no_think_sampling() -> SamplingConfig:
    """The protocol's sampling settings as a `SamplingConfig`."""
    return SamplingConfig(
        temperature=TEMPERATURE,
        top_p=TOP_P,
        top_k=TOP_K,
        presence_penalty=PRESENCE_PENALTY,
        max_new_tokens=MAX_NEW_TOKENS,
    )


def cap_to_context(sampling: SamplingConfig, context: int, longest_prompt: int) -> SamplingConfig:
    """`sampling` with `max_new_tokens` cut to what the context leaves after the longest prompt."""
    room = context - longest_prompt
    if room < 1:
        raise ValueError(
            f"the longest evaluation prompt ({longest_prompt} tokens) fills the context of {context}"
        )
    return replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room))
