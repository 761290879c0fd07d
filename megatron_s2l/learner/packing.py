"""THD sequence packing: the rows of a micro-batch laid end to end in one row of T tokens, so that
no padding is computed. Attention keeps the sequences apart by their boundaries (`cu_seqlens` in
Megatron's `PackedSeqParams`), positions restart at 0 in each, and the last token of a sequence
predicts nothing (its target is the ignore index, never the next sequence's first token).

Used on the transformer-engine path (`model.transformer_engine_available`): TE's attention takes the
packed layout; Megatron's local attention, the CPU path, does not, so CPU runs stay padded. The
packing itself is plain tensor work, tested on CPU against the padded path
(tests/unit/test_packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.learner.logprobs import shifted_targets


@dataclass(frozen=True, slots=True)
class PackedMicroBatch:
    """One micro-batch packed into a single row: [1, T] tensors and the sequence boundaries."""

    input_ids_1T: torch.Tensor
    position_ids_1T: torch.Tensor
    targets_1T: torch.Tensor
    """Token t + 1 of the same sequence where the loss mask counts it, else the ignore index."""
    cu_seqlens: torch.Tensor
    """[B + 1] int32 offsets of each sequence in the packed row (0, len_0, len_0 + len_1, ...)."""
    width: int
    """L: the padded width the per-token results are unpacked to."""

    def packed_seq_params(self):
        """Megatron's description of the layout for TE attention (`qkv_format="thd"`)."""
        from megatron.core.packed_seq_params import PackedSeqParams

        longest = int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())
        return PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=self.cu_seqlens,
            cu_seqlens_kv=self.cu_seqlens,
            max_seqlen_q=longest,
            max_seqlen_kv=longest,
        )

    def unpack(self, values_1T: torch.Tensor) -> torch.Tensor:
        """Per-token values of the packed row -> [B, L], zeros in the padding."""
        lengths = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()
        out = values_1T.new_zeros(len(lengths), self.width)
        for row, piece in enumerate(values_1T[0].split(lengths)):
            out[row, : len(piece)] = piece
        return out


def pack(batch: TrainBatch) -> PackedMicroBatch:
    """Each row's needed tokens (`TrainBatch.needed_lengths`, at least 2), end to end."""
    lengths = batch.needed_lengths().clamp(min=2, max=batch.input_ids.shape[1]).tolist()
    targets_BL = shifted_targets(batch.input_ids, batch.loss_mask)
    device = batch.input_ids.device
    rows = range(batch.num_seqs)
    cu_seqlens = torch.zeros(batch.num_seqs + 1, dtype=torch.int32, device=device)
    cu_seqlens[1:] = torch.tensor(lengths, device=device).cumsum(0)
    return PackedMicroBatch(
        input_ids_1T=torch.cat([batch.input_ids[r, : lengths[r]] for r in rows])[None],
        position_ids_1T=torch.cat([torch.arange(n, device=device) for n in lengths])[None],
        targets_1T=torch.cat([targets_BL[r, : lengths[r]] for r in rows])[None],
        cu_seqlens=cu_seqlens,
        width=batch.input_ids.shape[1],
    )
