"""The rollout FLOPs model against an independent count: FlopCounterMode on a real Qwen3 forward."""

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from megatron_s2l.archs import load_arch
from megatron_s2l.bench.rollout_flops import (
    decode_flops_per_token,
    generation_flops,
    mean_keys,
    prefill_flops,
)

NUM_GPUS = 0


def tiny_qwen3(tmp_path: Path, tied: bool) -> tuple[Qwen3ForCausalLM, Path]:
    """Random Qwen3 with GQA and head_dim != hidden / heads (as Qwen3-0.6B and 4B), eager attention
    (plain matmuls that FlopCounterMode counts), and its config.json written for load_arch."""
    config = Qwen3Config(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    config.save_pretrained(tmp_path)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).eval(), tmp_path


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("context", [1, 17])
def test_one_decode_step_matches_flop_counter(tmp_path: Path, tied: bool, context: int) -> None:
    """Feeding the token at position c with c tokens cached: attention spans c + 1 keys."""
    model, model_dir = tiny_qwen3(tmp_path, tied)
    ids = torch.randint(0, 500, (1, context + 1))
    with torch.no_grad():
        cache = model(ids[:, :context], use_cache=True).past_key_values
        flops = counted_flops(lambda: model(ids[:, context:], past_key_values=cache, use_cache=True))
    assert flops == decode_flops_per_token(load_arch(model_dir), keys=context + 1)


def test_whole_sample_matches_token_by_token_count(tmp_path: Path) -> None:
    """A prompt of P and a response of L tokens, fed one position at a time (positions 0..P+L-2;
    the last response token is never fed): positions 0..P-2 without the LM head are the prefill,
    the L passes from position P-1 on are the response, at the mean key count P + (L-1)/2."""
    model, model_dir = tiny_qwen3(tmp_path, tied=False)
    arch = load_arch(model_dir)
    prompt_len, response_len = 6, 5
    ids = torch.randint(0, 500, (1, prompt_len + response_len))
    cache = DynamicCache(config=model.config)
    prefill = response = 0
    with torch.no_grad():
        for pos in range(prompt_len + response_len - 1):
            token = ids[:, pos : pos + 1]
            if pos < prompt_len - 1:
                prefill += counted_flops(
                    lambda t=token: model.model(t, past_key_values=cache, use_cache=True)
                )
            else:
                response += counted_flops(lambda t=token: model(t, past_key_values=cache, use_cache=True))
    assert prefill == prefill_flops(arch, prompt_len)
    assert response == generation_flops(arch, response_len, response_len, prompt_len)
    assert mean_keys(prompt_len, response_len) == prompt_len + 2  # keys 6, 7, ..., 10


def test_qwen3_8b_per_token_by_hand() -> None:
    """2 x (36 layers x (q,k,v,o + gate,up,down) + LM head) + 4 x 36 x 32 x 128 per key."""
    arch = load_arch("qwen3-8b")
    per_layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 12288
    weights = 36 * per_layer + 151936 * 4096
    assert decode_flops_per_token(arch, keys=1000) == 2 * weights + 4 * 36 * 32 * 128 * 1000
    assert prefill_flops(arch, 0) == prefill_flops(arch, 1) == 0
