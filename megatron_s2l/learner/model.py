"""Build this rank's pipeline stage of a Qwen3 GPTModel (Megatron-core), TE spec when available."""

from __future__ import annotations

import functools
import importlib.util

import torch

from megatron_s2l.archs import ModelArch
from megatron_s2l.learner.hf_config import padded_vocab_size


@functools.cache
def transformer_engine_available() -> bool:
    """TE is used when it is importable and a GPU is present (the local spec otherwise). Decided
    once per process: the layer spec and the packing of every micro-batch (`grpo_step`) follow it."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def build_layer_spec(use_te: bool):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    return get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")


def build_gpt_model(
    arch: ModelArch, transformer_config, *, vocab_pad_multiple: int, use_te: bool | None = None
):
    """This rank's stage of the GPTModel (not yet wrapped in DDP), parameters on the current device.

    The output layer keeps logits vocab-parallel (`parallel_output=True`): nothing gathers the full
    vocabulary on one rank.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    use_te = transformer_engine_available() if use_te is None else use_te
    tp = parallel_state.get_tensor_model_parallel_world_size()
    model = GPTModel(
        config=transformer_config,
        transformer_layer_spec=build_layer_spec(use_te),
        vocab_size=padded_vocab_size(arch.vocab_size, vocab_pad_multiple, tp),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(arch.rope_theta),
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    from megatron.core.models.gpt import GPTModel

    while not isinstance(model, GPTModel):
        model = model.module
    return model


def stage_layer_offset(gpt_model: torch.nn.Module) -> int:
    """Global index of this pipeline stage's first transformer layer."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    return get_transformer_layer_offset(gpt_model.config)


def return_hidden_states(gpt_model: torch.nn.Module) -> None:
    """Make the last stage return its final hidden states [b, s, h] instead of logits: the output
    layer passes them through, and the fused log-prob op multiplies them with its weight
    (`output_weight`) a chunk at a time (`LearnerConfig.fused_output_layer`)."""
    if gpt_model.post_process:
        gpt_model.output_layer.forward = lambda hidden_states, weight=None, runtime_gather_output=None: (
            hidden_states,
            None,
        )


def output_weight(gpt_model: torch.nn.Module) -> torch.Tensor:
    """The [vocab / TP, hidden] weight the last stage's output layer multiplies with: the embedding
    (or, with PP > 1, its copy on the last stage) for tied models, the layer's own otherwise."""
    if gpt_model.share_embeddings_and_output_weights:
        return gpt_model.shared_embedding_or_output_weight()
    return gpt_model.output_layer.weight
