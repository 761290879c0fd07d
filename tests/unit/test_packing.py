"""THD packing (`learner/packing.py`) against the padded path, on CPU.

The stand-in model is causal and sees only a token and its position within its own sequence, so it
gives the same logits for a sequence padded or packed exactly when the packing restarts positions
per sequence; log-probs then agree exactly when the targets never cross a sequence boundary and
unpacking puts each value back in its row and column. (Attention across the boundaries is TE's
job on GPU; Megatron's CPU attention takes no packed layout.)
"""

from __future__ import annotations

import torch

from megatron_s2l.kernels import logprobs_and_entropy
from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.learner.logprobs import IGNORE_INDEX, shifted_targets
from megatron_s2l.learner.packing import pack

VOCAB = 37


def position_model(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(VOCAB, VOCAB, generator=generator, dtype=torch.float64)
    positions = torch.randn(64, VOCAB, generator=generator, dtype=torch.float64)
    return tokens[input_ids] + positions[position_ids]


def batch_of(lengths: list[int], width: int) -> TrainBatch:
    generator = torch.Generator().manual_seed(len(lengths))
    input_ids = torch.randint(0, VOCAB, (len(lengths), width), generator=generator)
    loss_mask = torch.zeros(len(lengths), width - 1)
    for row, length in enumerate(lengths):
        loss_mask[row, 1 : length - 1] = 1.0  # a 2-token prompt, the rest counts
    return TrainBatch(input_ids=input_ids, loss_mask=loss_mask, advantages=torch.zeros(len(lengths)))


def test_packed_logprobs_equal_the_padded_ones() -> None:
    batch = batch_of([9, 3, 16, 5, 12], width=16)
    padded_ids = batch.input_ids
    positions = torch.arange(padded_ids.shape[1]).expand_as(padded_ids)
    logp_BL, _ = logprobs_and_entropy(
        position_model(padded_ids, positions),
        shifted_targets(padded_ids, batch.loss_mask),
        compute_entropy=False,
    )
    packed = pack(batch)
    assert packed.cu_seqlens.tolist() == [0, 9, 12, 28, 33, 45] and packed.input_ids_1T.shape == (1, 45)
    assert packed.position_ids_1T[0, 9:13].tolist() == [0, 1, 2, 0]  # restarts per sequence
    ends = packed.cu_seqlens[1:] - 1
    assert (packed.targets_1T[0, ends] == IGNORE_INDEX).all()  # no target in the next sequence
    logp_1T, _ = logprobs_and_entropy(
        position_model(packed.input_ids_1T, packed.position_ids_1T), packed.targets_1T, compute_entropy=False
    )
    unpacked = packed.unpack(logp_1T)
    assert unpacked.shape == logp_BL.shape
    torch.testing.assert_close(unpacked, logp_BL, rtol=0, atol=0)
    assert (unpacked[:, :-1][batch.loss_mask.bool()] != 0).all()  # every counted token computed


def test_packed_seq_params_describe_the_boundaries() -> None:
    packed = pack(batch_of([4, 7], width=8))
    params = packed.packed_seq_params()
    assert params.qkv_format == "thd" and params.cu_seqlens_q.dtype == torch.int32
    assert params.cu_seqlens_q.tolist() == params.cu_seqlens_kv.tolist() == [0, 4, 11]
    assert params.max_seqlen_q == params.max_seqlen_kv == 7
