"""Prompt templates: DAPO's instruction around a raw problem, and chat messages -> prompt token ids.

Two ways to turn messages into tokens:
- "chat": the tokenizer's chat template with a generation prompt, in Qwen3's no-think mode
  (`enable_thinking=False`, which templates without that switch ignore); the setting the S2L-PO paper
  reports.
- "raw": the message contents joined by a blank line, no markup, for base models without a template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PromptTemplate = Literal["raw", "chat"]
PROMPT_TEMPLATES: tuple[str, ...] = PromptTemplate.__args__  # type: ignore[attr-defined]

DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:".'


def build_dapo_prompt(problem: str) -> str:
    """The user message DAPO-Math-17k carries for `problem` (its rows already contain this text)."""
    return f"{DAPO_INSTRUCTION}\n\n{problem}\n\n{DAPO_REMINDER}"


def render_prompt_text(
    messages: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase, template: PromptTemplate
) -> str:
    """The prompt as the model will see it, before tokenization."""
    if template == "raw":
        return "\n\n".join(message["content"] for message in messages)
    if not tokenizer.chat_template:
        raise ValueError(
            "data.template is 'chat' but the tokenizer has no chat template; use template 'raw' for a "
            "base model without one"
        )
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def encode_prompts(
    prompts: Sequence[Sequence[dict[str, str]]], tokenizer: PreTrainedTokenizerBase, template: PromptTemplate
) -> list[list[int]]:
    """Token ids of each prompt (a list of messages), tokenized as one batch."""
    texts = [render_prompt_text(messages, tokenizer, template) for messages in prompts]
    if not texts:
        return []
    # A chat template writes any BOS token itself; raw text gets whatever the tokenizer adds (a BOS
    # for Llama-style tokenizers, nothing for Qwen's).
    return tokenizer(texts, add_special_tokens=template == "raw")["input_ids"]
