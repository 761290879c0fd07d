"""Bundled architectures and their parameter counts, against transformers' own Qwen3 model."""

import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from megatron_s2l.archs import bundled_names, load_arch

NUM_GPUS = 0
BUNDLED = Path(__file__).resolve().parents[2] / "megatron_s2l" / "archs"


def hf_param_count(config: Qwen3Config) -> int:
    with torch.device("meta"):  # shapes only: a 32B model costs no memory
        model = Qwen3ForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # tied weights once


def test_every_size_is_bundled() -> None:
    sizes = ["0.6b", "1.7b", "4b", "8b", "14b", "32b"]
    assert bundled_names() == [f"qwen3-{s}" for s in sizes]


@pytest.mark.parametrize("name", bundled_names())
def test_param_count_equals_transformers(name: str) -> None:
    values = json.loads((BUNDLED / f"{name}.json").read_text())
    assert load_arch(name).param_count() == hf_param_count(Qwen3Config(**values))


def test_published_sizes() -> None:
    """The counts the model cards and docs/design.md 5 give (0.6B: 596,049,920 in Keras Hub's preset)."""
    counts = {n: load_arch(n).param_count() for n in bundled_names()}
    assert counts["qwen3-0.6b"] == 596_049_920
    assert round(counts["qwen3-1.7b"] / 1e9, 2) == 1.72
    assert round(counts["qwen3-8b"] / 1e9, 2) == 8.19
    assert round(counts["qwen3-14b"] / 1e9, 1) == 14.8
    assert round(counts["qwen3-32b"] / 1e9, 1) == 32.8


def test_names_accepted() -> None:
    assert load_arch("8b") == load_arch("qwen3-8b") == load_arch("Qwen3-8B-Base")
    arch = load_arch("qwen3-4b")
    assert (arch.hidden_size, arch.num_attention_heads * arch.head_dim, arch.tie_word_embeddings) == (
        2560,
        4096,
        True,
    )
    with pytest.raises(ValueError, match=r"qwen3-0\.6b, qwen3-1\.7b"):
        load_arch("qwen3-7b")


@pytest.mark.parametrize("tied", [True, False])
def test_load_hf_directory(tmp_path: Path, tied: bool) -> None:
    """A directory written by transformers itself (rope_theta nested under rope_parameters)."""
    config = Qwen3Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        rope_theta=5000.0,
    )
    config.save_pretrained(tmp_path)
    arch = load_arch(tmp_path)
    assert arch.name == str(tmp_path)
    assert (arch.num_hidden_layers, arch.num_key_value_heads, arch.head_dim) == (3, 2, 32)
    assert (arch.tie_word_embeddings, arch.rope_theta) == (tied, 5000.0)
    assert arch.param_count() == hf_param_count(config)


def test_rejects_other_layouts(tmp_path: Path) -> None:
    raw = json.loads((BUNDLED / "qwen3-0.6b.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is not supported"):
        load_arch(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "attention_bias": True}))
    with pytest.raises(ValueError, match="attention biases"):
        load_arch(tmp_path)
