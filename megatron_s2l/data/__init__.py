"""Prompt data: verl-format files -> typed, deduplicated, tokenized records, and a resumable sampler."""

from megatron_s2l.data.dataset import DataConfig, PromptDataset, load_prompt_dataset, prompt_id
from megatron_s2l.data.records import PromptRecord, parse_row, read_prompt_file
from megatron_s2l.data.sampler import PromptSampler
from megatron_s2l.data.templates import (
    PROMPT_TEMPLATES,
    PromptTemplate,
    build_dapo_prompt,
    encode_prompts,
    render_prompt_text,
)

__all__ = [
    "PROMPT_TEMPLATES",
    "DataConfig",
    "PromptDataset",
    "PromptRecord",
    "PromptSampler",
    "PromptTemplate",
    "build_dapo_prompt",
    "encode_prompts",
    "load_prompt_dataset",
    "parse_row",
    "prompt_id",
    "read_prompt_file",
    "render_prompt_text",
]
