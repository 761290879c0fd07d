"""Bucketing of the learner's (hf_name, tensor) stream and SyncConfig validation."""

from __future__ import annotations

import pytest
import torch

from megatron_s2l.sync.buckets import iter_buckets
from megatron_s2l.sync.config import SyncConfig


def test_buckets_keep_order_and_size_bound() -> None:
    sizes = [10, 30, 5, 100, 1, 1, 60]  # float32 elements
    named = [(f"w{i}", torch.randn(n)) for i, n in enumerate(sizes)]
    buckets = list(iter_buckets(iter(named), bucket_bytes=40 * 4))
    assert [name for b in buckets for name in b.names] == [name for name, _ in named]
    assert [b.names for b in buckets] == [["w0", "w1"], ["w2"], ["w3"], ["w4", "w5"], ["w6"]]
    assert [b.index for b in buckets] == list(range(len(buckets)))
    for bucket in buckets:
        assert bucket.nbytes <= 40 * 4 or len(bucket.names) == 1  # an oversized tensor travels alone
    for (_, original), (_, sent) in zip(named, [nt for b in buckets for nt in b.named_tensors], strict=True):
        assert torch.equal(original, sent)


def test_buckets_make_views_contiguous() -> None:
    transposed = torch.randn(4, 6).t()
    (bucket,) = iter_buckets([("w", transposed)], bucket_bytes=1 << 20)
    assert bucket.named_tensors[0][1].is_contiguous() and torch.equal(bucket.named_tensors[0][1], transposed)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"bucket_mb": 0}, "bucket_mb"), ({"timeout_s": 0}, "timeout_s"), ({"max_retries": -1}, "max_retries")],
)
def test_sync_config_names_the_bad_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        SyncConfig(**kwargs)
