"""Start-up check that the explorer and the learner share one tokenizer (docs/design.md 1).

S2L-PO mixes both models' token ids in one group and the learner scores the explorer's tokens, so
the two vocabularies, their special tokens and the chat template must be identical, not just alike.
"""

from __future__ import annotations

from pathlib import Path


class TokenizerMismatchError(ValueError):
    """Explorer and learner tokenizers differ."""


def _describe(tokenizer) -> dict[str, object]:
    return {
        "vocabulary": tokenizer.get_vocab(),
        "special tokens": sorted(tokenizer.all_special_tokens),
        "eos token": tokenizer.eos_token,
        "chat template": tokenizer.chat_template,
        "backend": tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else None,
    }


def _first_vocab_difference(a: dict[str, int], b: dict[str, int]) -> str:
    if len(a) != len(b):
        return f"sizes {len(a)} vs {len(b)}"
    for token, index in a.items():
        if b.get(token) != index:
            return f"token {token!r} has id {index} vs {b.get(token)}"
    return "same entries"


def check_same_tokenizer(explorer_dir: str | Path, learner_dir: str | Path) -> None:
    """Raise TokenizerMismatchError naming the first difference between the two tokenizers."""
    from transformers import AutoTokenizer

    explorer = _describe(AutoTokenizer.from_pretrained(str(explorer_dir)))
    learner = _describe(AutoTokenizer.from_pretrained(str(learner_dir)))
    for aspect, explorer_value in explorer.items():
        learner_value = learner[aspect]
        if explorer_value == learner_value:
            continue
        detail = (
            _first_vocab_difference(explorer_value, learner_value)  # type: ignore[arg-type]
            if aspect == "vocabulary"
            else f"{str(explorer_value)[:200]!r} vs {str(learner_value)[:200]!r}"
        )
        raise TokenizerMismatchError(
            f"explorer ({explorer_dir}) and learner ({learner_dir}) tokenizers differ in their {aspect}: "
            f"{detail}. S2L-PO needs one shared tokenizer: pick an explorer of the learner's family."
        )
