"""Hugging Face Qwen3 <-> Megatron parameter mapping and tensor-parallel (un)sharding.

Pure tensor code (no process groups). Megatron layouts, per TP rank r of tp:
- `linear_qkv.weight` (fused, per query group): for each of this rank's G/tp KV groups g, the rows
  [q heads of g (heads/G of them); k_g; v_g], each head head_dim rows.
- `linear_fc1.weight` = [gate rows of rank r; up rows of rank r] (column parallel, SwiGLU).
- column-parallel (fc1, qkv) split dim 0; row-parallel (`linear_proj`, `linear_fc2`) split dim 1.
- embedding / output layer: rows [r * Vp/tp, (r + 1) * Vp/tp) of the vocabulary padded to Vp;
  the padded rows are zero (and their logits are masked before any softmax).
Layer names are local to the pipeline stage (`decoder.layers.{i}`); HF names use the global index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from megatron_s2l.archs import ModelArch

ShardKind = Literal["replicated", "column", "row", "qkv", "fc1", "vocab"]


class TensorSource(Protocol):
    """Random access to HF tensors by name, reading only the requested slice."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int = 0) -> torch.Tensor:
        """Entries [start, stop) of tensor `name` along `dim`; the whole tensor when dim is None."""
        ...


# Per-layer Megatron suffix -> (kind, HF suffixes under model.layers.{i}.). Both the local spec and
# the TE spec (layer norms fused into the following linear) are listed.
_LAYER_PARAMS: dict[str, tuple[ShardKind, tuple[str, ...]]] = {
    "input_layernorm.weight": ("replicated", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.layer_norm_weight": ("replicated", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.weight": (
        "qkv",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ),
    "self_attention.q_layernorm.weight": ("replicated", ("self_attn.q_norm.weight",)),
    "self_attention.k_layernorm.weight": ("replicated", ("self_attn.k_norm.weight",)),
    "self_attention.linear_proj.weight": ("row", ("self_attn.o_proj.weight",)),
    "pre_mlp_layernorm.weight": ("replicated", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.layer_norm_weight": ("replicated", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.weight": ("fc1", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": ("row", ("mlp.down_proj.weight",)),
}
_LAYER_NAME = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True, slots=True)
class ParamMapping:
    """How one Megatron parameter relates to HF tensors."""

    kind: ShardKind
    hf_names: tuple[str, ...]


def map_megatron_param(name: str, *, layer_offset: int, tied: bool) -> ParamMapping:
    """The HF tensors behind Megatron parameter `name` of a stage whose first layer is layer_offset."""
    match = _LAYER_NAME.match(name)
    if match:
        layer, suffix = int(match.group(1)) + layer_offset, match.group(2)
        if suffix not in _LAYER_PARAMS:
            raise KeyError(f"no HF mapping for Megatron parameter {name!r}")
        kind, hf_suffixes = _LAYER_PARAMS[suffix]
        return ParamMapping(kind, tuple(f"model.layers.{layer}.{s}" for s in hf_suffixes))
    if name == "embedding.word_embeddings.weight":
        return ParamMapping("vocab", ("model.embed_tokens.weight",))
    if name == "decoder.final_layernorm.weight":
        return ParamMapping("replicated", ("model.norm.weight",))
    if name == "output_layer.weight":
        return ParamMapping("vocab", ("model.embed_tokens.weight",) if tied else ("lm_head.weight",))
    raise KeyError(f"no HF mapping for Megatron parameter {name!r}")


def read_shard(
    mapping: ParamMapping, source: TensorSource, arch: ModelArch, *, tp_rank: int, tp: int, padded_vocab: int
) -> torch.Tensor:
    """This TP rank's shard of a Megatron parameter, read slice by slice from the HF tensors."""
    kind, names, read = mapping.kind, mapping.hf_names, source.read
    if kind == "replicated":
        return read(names[0])
    if kind == "row":
        cols = source.shape(names[0])[1] // tp
        return read(names[0], 1, tp_rank * cols, (tp_rank + 1) * cols)
    if kind == "fc1":
        rows = arch.intermediate_size // tp
        lo, hi = tp_rank * rows, (tp_rank + 1) * rows
        return torch.cat([read(names[0], 0, lo, hi), read(names[1], 0, lo, hi)], dim=0)
    if kind == "vocab":
        rows = padded_vocab // tp
        lo, hi = tp_rank * rows, (tp_rank + 1) * rows
        real_BH = read(names[0], 0, min(lo, arch.vocab_size), min(hi, arch.vocab_size))
        pad_rows = rows - real_BH.shape[0]
        return torch.cat([real_BH, real_BH.new_zeros((pad_rows, real_BH.shape[1]))], dim=0)
    if kind == "qkv":
        groups_per_rank, hpg, hd = arch.num_key_value_heads // tp, arch.heads_per_group, arch.head_dim
        parts = []
        for g in range(tp_rank * groups_per_rank, (tp_rank + 1) * groups_per_rank):
            parts.append(read(names[0], 0, g * hpg * hd, (g + 1) * hpg * hd))
            parts.append(read(names[1], 0, g * hd, (g + 1) * hd))
            parts.append(read(names[2], 0, g * hd, (g + 1) * hd))
        return torch.cat(parts, dim=0)
    raise ValueError(f"unknown shard kind {kind!r}")


def merge_shards(
    mapping: ParamMapping, shards: list[torch.Tensor], arch: ModelArch
) -> list[tuple[str, torch.Tensor]]:
    """The full HF tensors from the TP shards (rank order) of one Megatron parameter: the inverse of
    `read_shard` (fusions undone, vocabulary padding removed)."""
    kind, names = mapping.kind, mapping.hf_names
    if kind == "replicated":
        return [(names[0], shards[0])]
    if kind == "row":
        return [(names[0], torch.cat(shards, dim=1))]
    if kind == "fc1":
        halves = [shard.chunk(2, dim=0) for shard in shards]
        gate = torch.cat([h[0] for h in halves], dim=0)
        up = torch.cat([h[1] for h in halves], dim=0)
        return [(names[0], gate), (names[1], up)]
    if kind == "vocab":
        return [(names[0], torch.cat(shards, dim=0)[: arch.vocab_size])]
    if kind == "qkv":
        hpg, hd = arch.heads_per_group, arch.head_dim
        fused_GSDH = torch.cat(shards, dim=0).view(arch.num_key_value_heads, hpg + 2, hd, -1)
        hidden = fused_GSDH.shape[-1]
        q = fused_GSDH[:, :hpg].reshape(arch.num_attention_heads * hd, hidden)
        k = fused_GSDH[:, hpg].reshape(arch.num_key_value_heads * hd, hidden)
        v = fused_GSDH[:, hpg + 1].reshape(arch.num_key_value_heads * hd, hidden)
        return [(names[0], q), (names[1], k), (names[2], v)]
    raise ValueError(f"unknown shard kind {kind!r}")


def shard_dim(kind: ShardKind) -> int | None:
    """The dimension along which TP shards of this kind are concatenated (None: replicated)."""
    return {"replicated": None, "row": 1}.get(kind, 0)
