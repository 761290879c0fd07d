"""Group a stream of `(hf_name, tensor)` into buckets of about `bucket_bytes` each.

Buckets bound the memory a transport holds at once (a serialized copy, a file, a broadcast batch).
A tensor larger than the bucket size travels alone; order is kept, so a receiver that is told the
names in advance sees them in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class Bucket:
    """Consecutive named tensors, sent together."""

    index: int
    named_tensors: list[tuple[str, torch.Tensor]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.named_tensors)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.named_tensors]


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[Bucket]:
    """Yield buckets of consecutive tensors, each at most `bucket_bytes` unless one tensor is larger."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket, size = Bucket(0), 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket.named_tensors and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = Bucket(bucket.index + 1), 0
        # contiguous: the disk and tensor transports serialize storage, the broadcast needs dense data
        bucket.named_tensors.append((name, tensor.detach().contiguous()))
        size += nbytes
    if bucket.named_tensors:
        yield bucket
