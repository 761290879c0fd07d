"""Learner configs, HF config parsing, parallel-size checks, the batch record, checkpoint fallback
and the log-prob CLI's input parsing: single process, no Megatron model. Needs 0 GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.learner.checkpoint import resolve_checkpoint
from megatron_s2l.learner.hf_config import read_qwen3_config
from megatron_s2l.learner.learner import LearnerConfig
from megatron_s2l.learner.logprobs_cli import read_sequences
from megatron_s2l.learner.optimizer import OptimizerConfig
from megatron_s2l.learner.parallel import ParallelConfig, check_parallel_sizes

# Qwen3-8B's config.json (architecture fields), with rope_theta in the transformers 4.x place.
QWEN3_8B = {
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-06,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "hidden_act": "silu",
}


@pytest.mark.parametrize(
    ("factory", "field", "value"),
    [
        (ParallelConfig, "tensor_parallel", 0),
        (ParallelConfig, "micro_batch_size", 0),
        (OptimizerConfig, "lr", 0.0),
        (OptimizerConfig, "adam_beta2", 1.0),
        (OptimizerConfig, "grad_clip", -1.0),
        (LearnerConfig, "vocab_pad_multiple", 0),
    ],
)
def test_configs_name_the_bad_field(factory, field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        factory(**{field: value})


def test_optimizer_config_needs_decay_past_warmup() -> None:
    with pytest.raises(ValueError, match="decay_steps"):
        OptimizerConfig(lr_schedule="cosine", warmup_steps=10, decay_steps=10)


def test_parallel_sizes_checked_against_world_and_model() -> None:
    sizes = dict(num_layers=36, num_heads=32, num_query_groups=8)
    assert check_parallel_sizes(ParallelConfig(tensor_parallel=8, pipeline_parallel=2), 64, **sizes) == 4
    cases = [
        (ParallelConfig(tensor_parallel=3), 6, "world size 6 is not divisible|attention heads"),
        (ParallelConfig(tensor_parallel=2), 3, "world size 3"),
        (ParallelConfig(pipeline_parallel=5), 5, "36 layers"),
        (ParallelConfig(tensor_parallel=16), 16, "8 query groups"),
    ]
    for cfg, world, message in cases:
        with pytest.raises(ValueError, match=message):
            check_parallel_sizes(cfg, world, **sizes)


def test_qwen3_config_parsing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_8B))
    arch, raw = read_qwen3_config(tmp_path)
    assert (arch.head_dim, arch.num_key_value_heads, arch.heads_per_group) == (128, 8, 4)
    assert arch.rope_theta == 1e6 and not arch.tie_word_embeddings and raw == QWEN3_8B
    v5_style = {k: v for k, v in QWEN3_8B.items() if k != "rope_theta"}
    v5_style["rope_parameters"] = {"rope_theta": 5e5, "rope_type": "default"}
    (tmp_path / "config.json").write_text(json.dumps(v5_style))
    assert read_qwen3_config(tmp_path)[0].rope_theta == 5e5
    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_8B, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        read_qwen3_config(tmp_path)


def test_train_batch_checks_shapes_and_selects_rows() -> None:
    batch = TrainBatch(
        input_ids=torch.zeros(4, 6, dtype=torch.long),
        loss_mask=torch.ones(4, 5),
        advantages=torch.arange(4.0),
    )
    sub = batch.select(slice(2, 4))
    assert (
        sub.num_seqs == 2
        and torch.equal(sub.advantages, torch.tensor([2.0, 3.0]))
        and sub.old_logprobs is None
    )
    with pytest.raises(ValueError, match="loss_mask"):
        TrainBatch(
            input_ids=torch.zeros(4, 6, dtype=torch.long),
            loss_mask=torch.ones(4, 6),
            advantages=torch.zeros(4),
        )
    with pytest.raises(ValueError, match="old_logprobs"):
        TrainBatch(
            input_ids=torch.zeros(4, 6, dtype=torch.long),
            loss_mask=torch.ones(4, 5),
            advantages=torch.zeros(4),
            old_logprobs=torch.zeros(4, 6),
        )


def test_checkpoint_falls_back_to_old_copy(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(final)
    (tmp_path / "ckpt.old").mkdir()
    (tmp_path / "ckpt.old" / "meta.json").write_text("{}")  # crash between the two renames
    assert resolve_checkpoint(final) == tmp_path / "ckpt.old"
    final.mkdir()
    (final / "meta.json").write_text("{}")
    assert resolve_checkpoint(final) == final


def test_logprobs_cli_input(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text("[[1, 2, 3], [4]]")
    assert read_sequences(path) == [[1, 2, 3], [4]]
    batch = TrainBatch.from_sequences([[1, 2, 3], [4]], [[], []], torch.zeros(2))
    assert torch.equal(batch.input_ids, torch.tensor([[1, 2, 3], [4, 0, 0]])) and batch.loss_mask.sum() == 0
    batch = TrainBatch.from_sequences([[1, 2], [3]], [[5, 6], [7]], torch.ones(2), pad_id=9)
    assert batch.input_ids.tolist() == [[1, 2, 5, 6], [3, 7, 9, 9]]
    assert batch.loss_mask.tolist() == [[0, 1, 1], [1, 0, 0]]  # column t predicts token t + 1
    path.write_text('[[1, 2], [3, "x"]]')
    with pytest.raises(ValueError, match="entry 1"):
        read_sequences(path)
