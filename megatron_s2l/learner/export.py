"""Megatron -> Hugging Face: full HF-named tensors per pipeline stage, and a safetensors export.

`iter_hf_weights` is the seam the weight-sync code streams from; `export_hf` writes a checkpoint
that `transformers` (and SGLang) load.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from megatron_s2l.archs import ModelArch
from megatron_s2l.learner.convert import map_megatron_param, merge_shards, shard_dim
from megatron_s2l.learner.model import stage_layer_offset, unwrap_model

# Files copied from the source checkpoint next to the exported weights (tokenizer, generation).
_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


@torch.no_grad()
def iter_hf_weights(
    model: torch.nn.Module, arch: ModelArch, *, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, full_tensor)` for every HF tensor held by this rank's pipeline stage.

    Collective: every rank of the learner must iterate to the end (the TP shards of each parameter
    are all-gathered inside the tensor-parallel group). Which ranks get what: every rank yields the
    tensors of its own pipeline stage, complete (TP-gathered, QKV and gate/up fusions undone, vocab
    padding removed); all TP and DP ranks of a stage yield identical tensors in the same order
    (Megatron's parameter order: embedding, layers in order, final norm, output layer). Across
    stages the names are disjoint and together form the whole HF checkpoint. With tied embeddings
    only the first stage yields `model.embed_tokens.weight` (the last stage's copy is skipped).
    Tensors live on the parameters' device, in `dtype` if given (else the parameter dtype).
    """
    from megatron.core import parallel_state

    module = unwrap_model(model)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_group = parallel_state.get_tensor_model_parallel_group()
    offset = stage_layer_offset(module)
    for name, param in module.named_parameters():
        if name == "output_layer.weight" and arch.tie_word_embeddings:
            continue
        mapping = map_megatron_param(name, layer_offset=offset, tied=arch.tie_word_embeddings)
        local = param.detach().contiguous()
        if tp > 1 and shard_dim(mapping.kind) is not None:
            shards = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(shards, local, group=tp_group)
        else:
            shards = [local]
        for hf_name, tensor in merge_shards(mapping, shards, arch):
            yield hf_name, tensor if dtype is None else tensor.to(dtype)


def export_hf(
    model: torch.nn.Module,
    arch: ModelArch,
    raw_config: dict,
    out_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an HF checkpoint of the model to `out_dir` (collective over all learner ranks).

    One safetensors file per pipeline stage, written by that stage's first TP/DP rank, plus
    `model.safetensors.index.json` and `config.json` (global rank 0). Tokenizer and generation files
    are copied from `source_dir` when given.
    """
    from megatron.core import parallel_state

    out_dir = Path(out_dir)
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    writes = (
        parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_data_parallel_rank() == 0
    )
    file_name = f"model-{pp_rank + 1:05d}-of-{pp:05d}.safetensors"
    tensors = {}
    for hf_name, tensor in iter_hf_weights(model, arch, dtype=dtype):
        if writes:
            tensors[hf_name] = tensor.cpu().contiguous()
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out_dir / file_name), metadata={"format": "pt"})
    stage_names = [(name, file_name, t.numel() * t.element_size()) for name, t in tensors.items()]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, stage_names)
    if dist.get_rank() == 0:
        entries = [entry for rank_entries in gathered for entry in rank_entries]
        index = {
            "metadata": {"total_size": sum(size for _, _, size in entries)},
            "weight_map": {name: fname for name, fname, _ in sorted(entries)},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        config = dict(raw_config)
        if dtype is not None:
            config["dtype"] = str(dtype).removeprefix("torch.")
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
        for side_file in _SIDE_FILES:
            if source_dir is not None and (Path(source_dir) / side_file).exists():
                shutil.copy2(Path(source_dir) / side_file, out_dir / side_file)
    dist.barrier()
    return out_dir
