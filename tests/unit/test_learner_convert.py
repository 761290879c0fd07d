"""HF <-> Megatron sharding without processes: the fused layouts Megatron expects, and that merging
the TP shards undoes sharding exactly. Needs 0 GPUs."""

from __future__ import annotations

import pytest
import torch

from megatron_s2l.archs import ModelArch
from megatron_s2l.learner.convert import map_megatron_param, merge_shards, read_shard
from megatron_s2l.learner.hf_config import padded_vocab_size

ARCH = ModelArch(
    name="tiny",
    model_type="qwen3",
    vocab_size=50,
    hidden_size=8,
    intermediate_size=12,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=3,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


class DictSource:
    """In-memory TensorSource."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int = 0) -> torch.Tensor:
        tensor = self.tensors[name]
        return tensor if dim is None else tensor.narrow(dim, start, stop - start)


def hf_layer_tensors(layer: int) -> dict[str, torch.Tensor]:
    a, hd = ARCH, ARCH.head_dim
    shapes = {
        "self_attn.q_proj.weight": (a.num_attention_heads * hd, a.hidden_size),
        "self_attn.k_proj.weight": (a.num_key_value_heads * hd, a.hidden_size),
        "self_attn.v_proj.weight": (a.num_key_value_heads * hd, a.hidden_size),
        "self_attn.o_proj.weight": (a.hidden_size, a.num_attention_heads * hd),
        "self_attn.q_norm.weight": (hd,),
        "mlp.gate_proj.weight": (a.intermediate_size, a.hidden_size),
        "mlp.up_proj.weight": (a.intermediate_size, a.hidden_size),
        "mlp.down_proj.weight": (a.hidden_size, a.intermediate_size),
    }
    tensors = {f"model.layers.{layer}.{k}": torch.randn(shape) for k, shape in shapes.items()}
    tensors["lm_head.weight"] = torch.randn(a.vocab_size, a.hidden_size)
    return tensors


def test_names_use_global_layer_index_and_tied_output() -> None:
    mapping = map_megatron_param("decoder.layers.1.mlp.linear_fc1.weight", layer_offset=2, tied=False)
    assert mapping.kind == "fc1"
    assert mapping.hf_names == ("model.layers.3.mlp.gate_proj.weight", "model.layers.3.mlp.up_proj.weight")
    te_norm = map_megatron_param(
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight", layer_offset=0, tied=False
    )
    assert te_norm.hf_names == ("model.layers.0.input_layernorm.weight",)
    assert map_megatron_param("output_layer.weight", layer_offset=0, tied=True).hf_names == (
        "model.embed_tokens.weight",
    )
    with pytest.raises(KeyError, match="no HF mapping"):
        map_megatron_param("decoder.layers.0.mlp.router.weight", layer_offset=0, tied=False)


def test_qkv_is_laid_out_per_query_group() -> None:
    tensors = hf_layer_tensors(0)
    source = DictSource(tensors)
    mapping = map_megatron_param(
        "decoder.layers.0.self_attention.linear_qkv.weight", layer_offset=0, tied=False
    )
    fused = read_shard(mapping, source, ARCH, tp_rank=0, tp=1, padded_vocab=64)
    q, k, v = (tensors[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    hd, hpg = ARCH.head_dim, ARCH.heads_per_group
    expected = torch.cat(
        [
            torch.cat(
                [q[g * hpg * hd : (g + 1) * hpg * hd], k[g * hd : (g + 1) * hd], v[g * hd : (g + 1) * hd]]
            )
            for g in range(ARCH.num_key_value_heads)
        ]
    )
    assert torch.equal(fused, expected)
    rank1 = read_shard(mapping, source, ARCH, tp_rank=1, tp=2, padded_vocab=64)
    assert torch.equal(rank1, expected[expected.shape[0] // 2 :])  # rank 1 holds query groups 2 and 3


def test_fc1_shard_is_gate_then_up_of_the_rank() -> None:
    tensors = hf_layer_tensors(0)
    mapping = map_megatron_param("decoder.layers.0.mlp.linear_fc1.weight", layer_offset=0, tied=False)
    shard = read_shard(mapping, DictSource(tensors), ARCH, tp_rank=1, tp=2, padded_vocab=64)
    gate, up = tensors["model.layers.0.mlp.gate_proj.weight"], tensors["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(shard, torch.cat([gate[6:], up[6:]]))


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize(
    "megatron_name",
    [
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.self_attention.linear_proj.weight",
        "decoder.layers.0.self_attention.q_layernorm.weight",
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.0.mlp.linear_fc2.weight",
        "output_layer.weight",
    ],
)
def test_merge_undoes_read(tp: int, megatron_name: str) -> None:
    tensors = hf_layer_tensors(0)
    padded = padded_vocab_size(ARCH.vocab_size, 8, tp)
    mapping = map_megatron_param(megatron_name, layer_offset=0, tied=False)
    shards = [
        read_shard(mapping, DictSource(tensors), ARCH, tp_rank=r, tp=tp, padded_vocab=padded)
        for r in range(tp)
    ]
    if megatron_name == "output_layer.weight":
        assert sum(s.shape[0] for s in shards) == padded
        assert torch.count_nonzero(shards[-1][-(padded - ARCH.vocab_size) :]) == 0  # padded rows are zero
    for hf_name, tensor in merge_shards(mapping, shards, ARCH):
        assert torch.equal(tensor, tensors[hf_name]), hf_name


def test_padded_vocab_size() -> None:
    assert padded_vocab_size(151936, 128, 1) == 151936
    assert padded_vocab_size(151936, 128, 8) == 152576  # 149 * 1024
    assert padded_vocab_size(512, 48, 2) == 576


class CountingSource(DictSource):
    """Counts the elements each read returns (what a safetensors slice read would load)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(tensors)
        self.elements_read = 0

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int = 0) -> torch.Tensor:
        out = super().read(name, dim, start, stop)
        self.elements_read += out.numel()
        return out


@pytest.mark.parametrize(
    "megatron_name",
    [
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.self_attention.linear_proj.weight",
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.0.mlp.linear_fc2.weight",
        "output_layer.weight",
    ],
)
def test_each_rank_reads_only_its_slice(megatron_name: str) -> None:
    tensors = hf_layer_tensors(0)
    mapping = map_megatron_param(megatron_name, layer_offset=0, tied=False)
    full = sum(tensors[n].numel() for n in mapping.hf_names)
    source = CountingSource(tensors)
    read_shard(mapping, source, ARCH, tp_rank=1, tp=2, padded_vocab=padded_vocab_size(ARCH.vocab_size, 8, 2))
    assert source.elements_read <= full // 2  # streaming: never the whole tensor on every rank
