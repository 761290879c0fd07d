"""A weight sync that fails on one learner rank fails on all of them, quickly, instead of leaving the
others waiting at a barrier or inside the collective export. Two gloo ranks, no engine."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from distributed_utils import run_ranks

from megatron_s2l.rollout.http import EngineEndpoint
from megatron_s2l.sync.config import SyncConfig
from megatron_s2l.sync.weight_sync import WeightSync, WeightSyncError


def _collective_export(names: list[str]):
    """Like the learner's export: one collective per tensor, so a rank that stops early would hang."""
    for name in names:
        tensor = torch.ones(2)
        dist.all_reduce(tensor)
        yield name, tensor


def _sender_fails_mid_export(rank: int, world_size: int) -> str:
    sync = WeightSync(
        SyncConfig(transport="disk", disk_dir="/nonexistent-unused"),
        endpoints=[],
        is_sender=rank == 0,
        is_controller=False,
        manifest={"a": (2,), "c": (2,)},
    )
    try:
        sync.update(_collective_export(["a", "b", "c"]), version=1)  # "b" is not an engine weight
    except WeightSyncError as error:
        return str(error)
    return "no error"


def _controller_cannot_reach_engine(rank: int, world_size: int) -> str:
    from megatron_s2l.net import find_free_port

    dead = EngineEndpoint(f"http://127.0.0.1:{find_free_port()}")  # nothing listens there
    sync = WeightSync(
        SyncConfig(transport="distributed", timeout_s=5.0),
        endpoints=[dead],
        is_sender=rank == 0,
        is_controller=rank == 0,
    )
    try:
        sync.update(_collective_export(["a"]), version=1)
    except WeightSyncError as error:
        return str(error)
    return "no error"


def _apply_fails_on_the_controller(rank: int, world_size: int, disk_dir: str) -> str:
    """Fault injection: the engines accept the pause and the buckets, then reject the final apply
    (e.g. `/update_weights_from_disk` answering 400). No engine runs here, so the pause/resume calls
    are switched off and the transport's `apply` raises what an engine's refusal raises."""
    from megatron_s2l.net import find_free_port
    from megatron_s2l.rollout.http import EngineRequestError

    sync = WeightSync(
        SyncConfig(transport="disk", disk_dir=disk_dir, timeout_s=5.0, max_retries=0),
        endpoints=[EngineEndpoint(f"http://127.0.0.1:{find_free_port()}")],
        is_sender=rank == 0,
        is_controller=rank == 0,
    )
    if rank == 0:
        sync._prepare_engines = sync._release_engines = lambda endpoints: None

        def refuse(endpoints, version):
            raise EngineRequestError("/update_weights_from_disk answered 400: cannot load")

        sync.transport.apply = refuse
    try:
        sync.update(_collective_export(["a"]), version=1)
    except WeightSyncError as error:
        return str(error)
    return "no error"


def test_apply_failure_fails_every_rank(tmp_path) -> None:
    controller, other = run_ranks(_apply_fails_on_the_controller, 2, str(tmp_path), timeout=120)
    assert "answered 400" in controller
    assert "failed on another learner rank while applying the weights" in other


def test_sender_failure_mid_export_fails_every_rank() -> None:
    sender, other = run_ranks(_sender_fails_mid_export, 2, timeout=120)
    assert "'b' is not served by the engine" in sender
    assert "failed on another learner rank" in other


def test_unreachable_engine_fails_every_rank() -> None:
    controller, other = run_ranks(_controller_cannot_reach_engine, 2, timeout=120)
    assert "pausing the engines" in controller and "pause_generation" in controller
    assert "failed on another learner rank" in other


@pytest.mark.parametrize("transport", ["disk", "tensor", "distributed"])
def test_non_sender_builds_no_transport(transport) -> None:
    sync = WeightSync(SyncConfig(transport=transport), endpoints=[], is_sender=False, is_controller=False)
    assert sync.transport is None
