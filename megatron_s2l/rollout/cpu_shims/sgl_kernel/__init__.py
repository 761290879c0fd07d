"""CPU stand-ins for the two `sgl_kernel` helpers SGLang 0.5.23 imports on CPU (see ../README.md).

Semantics follow SGLang's Triton kernels of the same purpose (`assign_req_to_token_pool` in
sglang/srt/mem_cache/allocation.py, `copy_all_layer_kv_cache_tiled` in
sglang/kernels/ops/kvcache/cache_move.py).
"""

from __future__ import annotations

import ctypes

import torch


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """For request i write the next (end_i - start_i) cache slots into req_to_token[row_i, start_i:end_i].

    `out_cache_loc` holds the new slots of all requests back to back, in request order.
    """
    del pool_len  # the row length is req_to_token.shape[1]; kept for the upstream signature
    read = 0
    for row, start, end in zip(
        req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist(), strict=True
    ):
        length = end - start
        req_to_token[row, start:end] = out_cache_loc[read : read + length].to(req_to_token.dtype)
        read += length


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """In every buffer b (raw address data_ptrs[b], slot size strides[b] bytes) copy slot src -> tgt.

    All source slots are read before any target is written, so overlapping moves are safe (as in the
    tiled Triton kernel).
    """
    pairs = list(zip(tgt_loc.tolist(), src_loc.tolist(), strict=True))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        saved = [ctypes.string_at(base + src * stride, stride) for _, src in pairs]
        for (tgt, _), data in zip(pairs, saved, strict=True):
            ctypes.memmove(base + tgt * stride, data, stride)


def _speculative_only(name: str):
    """A placeholder for a helper SGLang imports at module load on CPU but calls only when speculative
    decoding is on (which the CPU servers here never enable)."""

    def unavailable(*args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            f"sgl_kernel.{name} is a speculative-decoding kernel with no CPU stand-in "
            "(megatron_s2l/rollout/cpu_shims): do not enable speculative decoding on CPU servers"
        )

    unavailable.__name__ = name
    return unavailable


SPECULATIVE_ONLY_NAMES = (
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_tree_kernel_efficient_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
    "verify_tree_greedy_cpu",
)
globals().update({name: _speculative_only(name) for name in SPECULATIVE_ONLY_NAMES})
