"""The rollout -> learner handoff: a typed batch of right-padded token sequences.

Shapes: B sequences, L tokens. Per-token tensors have L - 1 columns: column t belongs to the
predicted token input_ids[:, t + 1] (the log-prob of that token given the tokens before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch


@dataclass(kw_only=True, slots=True)
class TrainBatch:
    """One global batch, identical on every learner rank (SPMD)."""

    input_ids: torch.Tensor
    """[B, L] int64 prompt + response tokens, right-padded (any pad id; padding is masked out)."""
    loss_mask: torch.Tensor
    """[B, L-1] 1 where the predicted token input_ids[:, t+1] is a response token that counts."""
    advantages: torch.Tensor
    """[B] (one per sequence) or [B, L-1] advantages."""
    old_logprobs: torch.Tensor | None = None
    """[B, L-1] log-probs under the policy that sampled (recomputed by `Learner.compute_logprobs`)."""
    ref_logprobs: torch.Tensor | None = None
    """[B, L-1] reference-policy log-probs; needed only when the KL penalty is on."""
    rollout_logprobs: torch.Tensor | None = None
    """[B, L-1] the rollout engine's log-probs of the tokens it sampled, where truncated importance
    sampling reweights them (`algo.rollout_correction: tis`: the learner's samples); NaN elsewhere."""

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(self.input_ids.shape)}")
        num_seqs, length = self.input_ids.shape
        per_token = (num_seqs, length - 1)
        if tuple(self.loss_mask.shape) != per_token:
            raise ValueError(f"loss_mask must be {per_token}, got {tuple(self.loss_mask.shape)}")
        if self.advantages.shape not in (torch.Size([num_seqs]), torch.Size(per_token)):
            raise ValueError(
                f"advantages must be [{num_seqs}] or {per_token}, got {tuple(self.advantages.shape)}"
            )
        for name in ("old_logprobs", "ref_logprobs", "rollout_logprobs"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != per_token:
                raise ValueError(f"{name} must be {per_token}, got {tuple(value.shape)}")

    @classmethod
    def from_sequences(
        cls,
        prompts: Sequence[list[int]],
        responses: Sequence[list[int]],
        advantages: torch.Tensor,
        *,
        pad_id: int = 0,
    ) -> TrainBatch:
        """The right-padded batch of prompt + response token lists, the loss on the response tokens
        (causal attention: padding never affects the real tokens before it)."""
        seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
        input_ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
        loss_mask = torch.zeros(len(seqs), input_ids.shape[1] - 1)
        for row, (prompt, seq) in enumerate(zip(prompts, seqs, strict=True)):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            # Column t predicts token t + 1: the response is predicted from len(prompt) - 1 on.
            loss_mask[row, len(prompt) - 1 : len(seq) - 1] = 1.0
        return cls(input_ids=input_ids, loss_mask=loss_mask, advantages=advantages)

    @property
    def num_seqs(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice | torch.Tensor) -> TrainBatch:
        """The sub-batch of sequences `rows` (a slice gives views; an index tensor, copies)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return TrainBatch(**{k: None if v is None else v[rows] for k, v in values.items()})

    def needed_lengths(self) -> torch.Tensor:
        """[B] how many leading tokens of each sequence matter: up to the last token that counts in
        the loss (causal attention: the padding and anything after it never affect those)."""
        counts_B = self.loss_mask.bool().flip(-1).int().argmax(-1)  # masked columns at the end
        last_B = self.loss_mask.shape[1] - 1 - counts_B
        has_loss_B = self.loss_mask.bool().any(-1)
        return torch.where(has_loss_B, last_B + 2, torch.ones_like(last_B))

    def trim(self, length: int) -> TrainBatch:
        """The batch cut to its first `length` tokens (views)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {}
        for name, value in values.items():
            if value is None or (name == "advantages" and value.ndim == 1):
                out[name] = value
            else:
                out[name] = value[:, : length if name == "input_ids" else length - 1]
        return TrainBatch(**out)

    def to(self, device: torch.device | str) -> TrainBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return TrainBatch(**{k: None if v is None else v.to(device) for k, v in values.items()})
