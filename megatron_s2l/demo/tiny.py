"""Tiny Qwen3-architecture models and a locally trained tokenizer, for tests and the CPU demo.

Nothing is downloaded: the byte-level BPE tokenizer is trained here with `tokenizers` and the model is
a randomly initialised `transformers` Qwen3 (head_dim >= 32, which SGLang's CPU attention needs).
Weights use a large init std so that next-token distributions are far from uniform, which makes
log-prob comparisons between implementations meaningful.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A minimal Qwen3-style chat template (no-think mode renders an empty think block, as Qwen3 does).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    """Arithmetic-and-prose lines covering the characters the demo task and tests use."""
    rng = random.Random(seed)
    words = (
        "solve the following math problem step by step the last line of your response should be of "
        "form answer where is to remember put your on its own line after compute sum product of and "
        "then result so we get first next finally check value total"
    ).split()
    out = []
    for _ in range(lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        prose = " ".join(rng.choices(words, k=rng.randint(3, 10)))
        out.append(f"{prose}. {a} {op} {b} = ?\nAnswer: {rng.randint(-999, 9999)}\n")
    return out


def make_tokenizer(
    out_dir: str | Path, vocab_size: int = 512, seed: int = 0, corpus: Iterable[str] | None = None
):
    """Train a byte-level BPE tokenizer on `corpus` (default: built-in arithmetic-and-prose lines) and
    save it as a `PreTrainedTokenizerFast` in `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed) if corpus is None else corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def make_tiny_qwen3(
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    tie_word_embeddings: bool = False,
    init_std: float = 0.4,
    seed: int = 0,
    max_shard_size: str | None = None,
) -> Path:
    """Write a random tiny Qwen3ForCausalLM (float32 safetensors + tokenizer) to `out_dir`.

    The tokenizer is copied from `tokenizer_dir` (so explorer and learner can share one) or trained
    anew. `max_shard_size` (e.g. "50KB") writes a sharded checkpoint with an index file.
    """
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tokenizer = make_tokenizer(out_dir, seed=seed)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tokenizer.save_pretrained(str(out_dir))
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    generator = torch.Generator().manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)  # non-trivial norms, so a missed norm is caught
            else:
                param.copy_(init_std * noise / max(1.0, param.shape[-1] ** 0.5 / 8))
    save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(out_dir), safe_serialization=True, **save_kwargs)
    return out_dir
