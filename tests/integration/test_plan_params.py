"""`s2l plan`'s parameters per rank equal Megatron's: the real Qwen3-8B (untied) and Qwen3-1.7B (tied)
GPTModel built on the meta device (shapes only, no memory) on 4 gloo ranks at TP 2 x PP 2, TP 1 x PP 4
and TP 4 x PP 1, every rank counted. Needs 0 GPUs.

    .venv/bin/pytest tests/integration/test_plan_params.py
"""

from __future__ import annotations

import pytest
from distributed_utils import run_ranks

from megatron_s2l.archs import load_arch
from megatron_s2l.plan import stage_params

pytestmark = pytest.mark.slow
NUM_GPUS = 0

ARCHS = ("qwen3-8b", "qwen3-1.7b")
LAYOUTS = ((2, 2), (1, 4), (4, 1))  # (TP, PP), world size 4 each
VOCAB_PAD_MULTIPLE = 128


def _count_params(rank: int, world_size: int) -> dict[tuple[str, int, int], tuple[int, int]]:
    """(arch, TP, PP) -> (this rank's pipeline stage, its parameter count)."""
    import torch

    from megatron_s2l.learner.hf_config import build_transformer_config
    from megatron_s2l.learner.model import build_gpt_model
    from megatron_s2l.learner.parallel import ParallelConfig, destroy_distributed, init_distributed

    counts = {}
    for name in ARCHS:
        arch = load_arch(name)
        for tp, pp in LAYOUTS:
            parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
            layout = init_distributed(
                parallel,
                num_layers=arch.num_hidden_layers,
                num_heads=arch.num_attention_heads,
                num_query_groups=arch.num_key_value_heads,
            )
            tf_config = build_transformer_config(arch, parallel, params_dtype=torch.bfloat16)
            with torch.device("meta"):  # the local spec: same parameters as TE's, buildable anywhere
                model = build_gpt_model(arch, tf_config, vocab_pad_multiple=VOCAB_PAD_MULTIPLE, use_te=False)
            counts[name, tp, pp] = (layout.pp_rank, sum(p.numel() for p in model.parameters()))
            destroy_distributed()
    return counts


def test_stage_params_equal_megatron() -> None:
    per_rank = run_ranks(_count_params, 4, timeout=300)
    for name in ARCHS:
        arch = load_arch(name)
        for tp, pp in LAYOUTS:
            expected = stage_params(arch, tp, pp, VOCAB_PAD_MULTIPLE)
            for counts in per_rank:
                stage, count = counts[name, tp, pp]
                assert count == expected[stage], (name, tp, pp, stage)
