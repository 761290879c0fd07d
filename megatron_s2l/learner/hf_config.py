"""A Hugging Face Qwen3 dense `config.json` -> the architecture record and Megatron's TransformerConfig.

Covers Qwen3-0.6B ... 14B (Base and chat): GQA, qk-layernorm, RMSNorm, SwiGLU, RoPE, no biases,
tied embeddings (small models) or untied (8B and up). `kv_channels` is the config's `head_dim`, which
for Qwen3 is NOT hidden_size / num_heads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from megatron_s2l.archs import ModelArch
from megatron_s2l.learner.parallel import ParallelConfig


def read_qwen3_config(hf_dir: str | Path) -> tuple[ModelArch, dict]:
    """Parse `hf_dir/config.json`; returns the architecture and the raw dict (kept for export)."""
    path = Path(hf_dir) / "config.json"
    raw = json.loads(path.read_text())
    return ModelArch.from_hf_config(raw, str(path)), raw


def padded_vocab_size(vocab_size: int, pad_multiple: int, tp: int) -> int:
    """Round the vocabulary up to a multiple of pad_multiple * tp (each TP rank gets equal rows)."""
    step = pad_multiple * tp
    return int(math.ceil(vocab_size / step) * step)


def build_transformer_config(
    arch: ModelArch,
    parallel: ParallelConfig,
    *,
    params_dtype: torch.dtype,
    recompute_activations: bool = False,
):
    """Megatron TransformerConfig for `arch` at the given parallel sizes and parameter dtype.

    Losses are averaged over micro-batches and DP ranks by Megatron (calculate_per_token_loss=False);
    `train_step` pre-scales each micro-batch loss so that the sum is the global-batch loss.
    """
    from megatron.core.transformer import TransformerConfig

    bf16 = params_dtype == torch.bfloat16
    return TransformerConfig(
        num_layers=arch.num_hidden_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.intermediate_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        sequence_parallel=False,
        params_dtype=params_dtype,
        bf16=bf16,
        pipeline_dtype=params_dtype,
        # Micro-batches differ in rows and length (trimmed, token budgets): stages exchange shapes.
        variable_seq_lengths=parallel.pipeline_parallel > 1,
        # NOTE: a dense model has no MoE dispatcher, but megatron-core 0.16.1 refuses
        # variable_seq_lengths with the default ("allgather") one whatever the model.
        moe_token_dispatcher_type="alltoall",
        # Megatron's kernel fusions stay at their defaults (off): they need Apex/TE CUDA kernels.
        use_cpu_initialization=not torch.cuda.is_available(),
        # NOTE: the weights are overwritten from the checkpoint, but megatron-core 0.16.1 marks
        # parameters as tensor-parallel (`tensor_model_parallel`, used by grad-norm and clipping)
        # only inside its init routines, so they must run.
        perform_initialization=True,
        recompute_granularity="full" if recompute_activations else None,
        recompute_method="uniform" if recompute_activations else None,
        recompute_num_layers=1 if recompute_activations else None,
    )
