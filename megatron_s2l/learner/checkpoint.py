"""Learner checkpoints: model shards, optimizer (distributed or not), LR scheduler, step, RNG.

Layout: `<dir>/rank_tp{t}_pp{p}_dp{d}.pt` (one file per rank, this rank's shards) and `<dir>/meta.json`
(step, parallel sizes). Resuming needs the same TP/PP/DP layout; use `export_hf` to move weights
between layouts.

Atomic writes: all ranks write into `<dir>.partial`, then (after a barrier) global rank 0 swaps it
into place: `<dir>` -> `<dir>.old`, `<dir>.partial` -> `<dir>`, delete `<dir>.old`. A crash before the
first rename leaves `<dir>` untouched; a crash between the renames leaves `<dir>.old`, which
`load_checkpoint` falls back to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_s2l.compat import mark_unpadded_param_state, unshare_adam_steps
from megatron_s2l.learner.model import unwrap_model
from megatron_s2l.learner.parallel import any_rank

_META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (every rank raises it together)."""


def _rank_file(directory: Path) -> Path:
    from megatron.core import parallel_state as ps

    return directory / (
        f"rank_tp{ps.get_tensor_model_parallel_rank()}_pp{ps.get_pipeline_model_parallel_rank()}"
        f"_dp{ps.get_data_parallel_rank()}.pt"
    )


def _distributed_optimizers(optimizer) -> list:
    """The DistributedOptimizer parts of `optimizer` (Megatron may chain several optimizers)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    return [part for part in parts if isinstance(part, DistributedOptimizer)]


def save_checkpoint(
    directory: str | Path, model: torch.nn.Module, optimizer, lr_scheduler, step: int
) -> Path:
    """Collective: every rank writes its own state; the finished checkpoint appears atomically."""
    from megatron.core import parallel_state as ps

    final = Path(directory)
    partial = final.with_name(final.name + ".partial")
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    state = {
        "model": {name: p.detach().cpu().clone() for name, p in unwrap_model(model).named_parameters()},
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "step": step,
        "rng": torch.get_rng_state(),
    }
    # The distributed optimizer keeps its per-parameter state (main params, Adam moments, and the
    # step count with torch's Adam) apart, sharded over DP: each rank stores its own shard.
    state["optimizer_param_state"] = [
        mark_unpadded_param_state(part.get_parameter_state_dp_reshardable())
        for part in _distributed_optimizers(optimizer)
    ]
    error = None
    try:
        torch.save(state, _rank_file(partial))
    except (OSError, RuntimeError) as e:  # a full disk: torch's writer raises RuntimeError (EFBIG/ENOSPC)
        error = e
    if any_rank(error is not None):
        raise CheckpointError(
            f"writing {partial} failed ({error or 'on another rank'}); the previous checkpoint is intact"
        )
    if dist.get_rank() == 0:
        sizes = {
            "tensor_parallel": ps.get_tensor_model_parallel_world_size(),
            "pipeline_parallel": ps.get_pipeline_model_parallel_world_size(),
            "data_parallel": ps.get_data_parallel_world_size(),
        }
        (partial / _META).write_text(json.dumps({"step": step, **sizes}))
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_state_file(path: str | Path) -> Any:
    """`torch.load` of a checkpoint file that runs no code from it (`weights_only=True`, torch's
    restricted unpickler: tensors, dtypes, containers, numbers, strings). A checkpoint comes from a
    run directory that may not be ours (`--resume`, `s2l eval --model RUN_DIR@STEP`): a pickle that
    names any other callable is refused (`pickle.UnpicklingError`), never run. Megatron's optimizer
    state (distributed or not) and the loop state need nothing more: the checkpoints of
    tests/integration/test_learner_checkpoint.py and test_run_checkpoint.py load with no extra
    `torch.serialization.add_safe_globals` entry."""
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_checkpoint(directory: str | Path) -> Path:
    """`directory`, or its `.old` copy left by a crash mid-swap."""
    final = Path(directory)
    if (final / _META).exists():
        return final
    old = final.with_name(final.name + ".old")
    if (old / _META).exists():
        return old
    raise FileNotFoundError(f"no complete learner checkpoint at {final}")


@torch.no_grad()
def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer, lr_scheduler) -> int:
    """Restore this rank's state from a checkpoint of the same parallel layout; returns the step."""
    from megatron.core import parallel_state as ps

    # Read and check this rank's file first, and agree across ranks before touching any state: a
    # truncated or corrupted file on one rank fails every rank (naming it) instead of a hang.
    error, state = None, None
    try:
        source = resolve_checkpoint(directory)
        meta = json.loads((source / _META).read_text())
        layout = (
            ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_world_size(),
            ps.get_data_parallel_world_size(),
        )
        saved = (meta["tensor_parallel"], meta["pipeline_parallel"], meta["data_parallel"])
        if saved != layout:
            raise ValueError(f"{source}: saved with (tp, pp, dp) = {saved}, this run is {layout}")
        rank_file = _rank_file(source)
        try:
            state = load_state_file(rank_file)
        except Exception as e:  # truncated, corrupted, missing or refused: torch raises many kinds
            raise ValueError(f"{rank_file} is unreadable ({type(e).__name__}: {e})") from e
        if dict(unwrap_model(model).named_parameters()).keys() != state["model"].keys():
            raise ValueError(f"{source}: parameter names differ from this model's")
    except (OSError, ValueError, KeyError) as e:
        error = e
    failed = any_rank(error is not None)
    if error is not None:
        raise CheckpointError(f"learner checkpoint {directory}: {error}") from error
    if failed:
        raise CheckpointError(f"learner checkpoint {directory}: unreadable on another rank (see its log)")
    params = dict(unwrap_model(model).named_parameters())
    for name, param in params.items():
        param.copy_(state["model"][name])
    optimizer.load_state_dict(state["optimizer"])
    for part, part_state in zip(
        _distributed_optimizers(optimizer), state["optimizer_param_state"], strict=True
    ):
        part.load_parameter_state_from_dp_reshardable(part_state)
    unshare_adam_steps(optimizer)
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    torch.set_rng_state(state["rng"])
    dist.barrier()
    return int(state["step"])
