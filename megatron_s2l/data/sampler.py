"""A deterministic, resumable sampler of prompt batches.

Epoch e visits the prompts in an order that depends only on (seed, e), so the whole stream of
batches is fixed by the seed and the state is just (epoch, position): a run resumed from
`state_dict()` continues with exactly the batches it would have drawn.

A batch never spans two epochs: the last len % prompts_per_step prompts of each epoch's order are
skipped (verl's drop_last); with shuffling, different prompts are skipped each epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

_STATE_KEYS = ("epoch", "position")


class PromptSampler(Generic[T]):
    """Hands out batches of `items` (a PromptDataset, or any sequence), epoch after epoch."""

    def __init__(self, items: Sequence[T], *, shuffle: bool, seed: int) -> None:
        if len(items) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.items = items
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0
        """How many prompts of this epoch's order have been handed out."""

    def epoch_order(self, epoch: int) -> list[int]:
        """Item indices in the order epoch `epoch` visits them."""
        order = list(range(len(self.items)))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)  # str seeds hash the same on every run
        return order

    def batches(self, prompts_per_step: int) -> Iterator[list[T]]:
        """Endless batches of `prompts_per_step` items; the state advances as each batch is handed out."""
        if not 1 <= prompts_per_step <= len(self.items):
            raise ValueError(
                f"prompts_per_step must be in [1, dataset size {len(self.items)}], got {prompts_per_step}"
            )
        return self._batches(prompts_per_step)

    def _batches(self, prompts_per_step: int) -> Iterator[list[T]]:
        order_epoch, order = -1, []
        while True:
            if self.position + prompts_per_step > len(self.items):
                self.epoch += 1
                self.position = 0
            if order_epoch != self.epoch:  # also picks up a load_state_dict made between batches
                order_epoch, order = self.epoch, self.epoch_order(self.epoch)
            start = self.position
            self.position += prompts_per_step  # before the yield: a checkpoint taken now resumes after it
            yield [self.items[i] for i in order[start : self.position]]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if sorted(state) != sorted(_STATE_KEYS):
            raise ValueError(f"sampler state must have exactly the keys {_STATE_KEYS}, got {sorted(state)}")
        epoch, position = state["epoch"], state["position"]
        if epoch < 0 or not 0 <= position <= len(self.items):
            raise ValueError(
                f"sampler state {state} does not fit a dataset of {len(self.items)} prompts "
                "(epoch must be >= 0 and position in [0, dataset size])"
            )
        self.epoch, self.position = epoch, position
