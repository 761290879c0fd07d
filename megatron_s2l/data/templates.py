"""Prompt templates: DAPO's instruction around a raw problem, the S2L-PO authors' CommonsenseQA prompt,
and chat messages -> prompt token ids.

Four ways to turn messages into tokens:
- "chat": the tokenizer's chat template with a generation prompt, in Qwen3's no-think mode
  (`enable_thinking=False`, which templates without that switch ignore): Qwen3's template then
  pre-fills an empty think block (`<|im_start|>assistant\n<think>\n\n</think>\n\n`). The paper
  reports evaluating in no-think mode; this is our reading of it for training prompts, not what the
  authors' released training scripts did (that is "chat-default").
- "chat-default": the chat template with a generation prompt and no `enable_thinking` argument, the
  template's own default: for Qwen3 the prompt ends `<|im_start|>assistant\n` (no pre-filled think
  block). verl renders training prompts this way (`RLHFDataset.__getitem__` in
  verl/utils/dataset/rl_dataset.py: `apply_chat_template(messages, add_generation_prompt=True,
  tokenize=False, **apply_chat_template_kwargs)`, kwargs empty unless `data.apply_chat_template_kwargs`
  is set, which examples/s2l-po/off2on_4b_8b_16_8.sh does not), so the authors' released training
  runs (github.com/qishisuren123/S2L-PO at commit 9623386) saw these prompts, and
  their offline explorer sampling wrote the same text by hand (`prepare_prompt` in
  verl/examples/small_model_rollout2.py). The `yaml/paper/*-released.yaml` configs use it.
- "chat-no-think-suffix": the chat template with " /no_think" appended to the last user message
  and no `enable_thinking` argument: the S2L-PO authors' evaluation scripts, token for token (the
  model then writes the empty think block itself). `s2l eval`'s default.
- "raw": the message contents joined by a blank line, no markup, for base models without a template.

Evaluation and training prompts differ on purpose: the authors trained on "chat-default" prompts
(the model may open a think block or not) and evaluated with the " /no_think" soft switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PromptTemplate = Literal["raw", "chat", "chat-default", "chat-no-think-suffix"]
PROMPT_TEMPLATES: tuple[str, ...] = PromptTemplate.__args__  # type: ignore[attr-defined]

NO_THINK_SUFFIX = " /no_think"

DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:".'


def build_dapo_prompt(problem: str) -> str:
    """The user message DAPO-Math-17k carries for `problem` (its rows already contain this text)."""
    return f"{DAPO_INSTRUCTION}\n\n{problem}\n\n{DAPO_REMINDER}"


CSQA_INSTRUCTION = "Answer with only the letter ({letters})."


def _or_list(labels: Sequence[str]) -> str:
    """'A, B, C, D, or E' (the authors' wording for five choices); 'A or B'; 'A'."""
    if len(labels) <= 2:
        return " or ".join(labels)
    return f"{', '.join(labels[:-1])}, or {labels[-1]}"


def build_csqa_prompt(question: str, choices: Sequence[tuple[str, str]]) -> str:
    """The S2L-PO authors' CommonsenseQA user message: the question, one "A. text" line per (label,
    text) choice, and "Answer with only the letter (A, B, C, D, or E)." (the letters are the labels).

    The text of github.com/qishisuren123/S2L-PO, eval/inference_csqa.py (`prepare_chat_messages`) at
    commit 0a9f929, less its " /no_think" suffix, which `s2l eval` appends when it evaluates.
    """
    lines = "\n".join(f"{label}. {text}" for label, text in choices)
    letters = _or_list([label for label, _ in choices])
    return f"{question}\n\n{lines}\n\n{CSQA_INSTRUCTION.format(letters=letters)}"


def render_prompt_text(
    messages: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase, template: PromptTemplate
) -> str:
    """The prompt as the model will see it, before tokenization."""
    if template == "raw":
        return "\n\n".join(message["content"] for message in messages)
    if not tokenizer.chat_template:
        raise ValueError(
            f"data.template is {template!r} but the tokenizer has no chat template; use template 'raw' for a "
            "base model without one"
        )
    if template == "chat-no-think-suffix":
        # Qwen3's soft switch, as the S2L-PO authors evaluated: " /no_think" ends the last user
        # message and the model itself writes the empty think block (no enable_thinking argument).
        last_user = max(i for i, message in enumerate(messages) if message["role"] == "user")
        messages = [
            {**m, "content": m["content"] + NO_THINK_SUFFIX} if i == last_user else m
            for i, m in enumerate(messages)
        ]
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    if template == "chat-default":
        # No enable_thinking argument: the template's default, as verl renders training prompts.
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
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
