"""With several pipeline stages, the stages' senders take turns: stage 0 sends all its buckets, then
stage 1, never two at once (two stages broadcasting into the same engines at once can deadlock: each
SGLang engine serves one update request at a time). Two gloo ranks, one stage each, no engine: the
transport's `send` is replaced by one that records when each bucket starts and ends."""

from __future__ import annotations

import json
import time

import torch
from distributed_utils import run_ranks

from megatron_s2l.sync.config import SyncConfig
from megatron_s2l.sync.weight_sync import WeightSync, WeightSyncError

NUMEL = 150_000  # 0.57 MiB of float32: one tensor per 1 MiB bucket


def _stage_sends(rank: int, world_size: int, events_path: str, fail_stage: int) -> str:
    names = [f"stage{rank}.w{i}" for i in range(3)]
    manifest = {name: (NUMEL,) for r in range(world_size) for name in (f"stage{r}.w{i}" for i in range(3))}
    if fail_stage == rank:
        del manifest[names[1]]  # this stage's second tensor is not an engine weight
    sync = WeightSync(
        SyncConfig(transport="disk", disk_dir="/nonexistent-unused", bucket_mb=1),
        endpoints=[],
        is_sender=True,
        is_controller=False,
        stage=rank,
        num_stages=world_size,
        manifest=manifest,
    )

    def record(bucket, endpoints, version) -> None:
        with open(events_path, "a") as stream:  # O_APPEND: whole lines from both processes
            stream.write(json.dumps([rank, bucket.index, "start", time.monotonic()]) + "\n")
        time.sleep(0.3)  # long enough that concurrent stages would overlap
        with open(events_path, "a") as stream:
            stream.write(json.dumps([rank, bucket.index, "end", time.monotonic()]) + "\n")

    sync.transport.send = record
    try:
        sync.update(((name, torch.ones(NUMEL)) for name in names), version=1)
    except WeightSyncError as error:
        return str(error)
    return "ok"


def _events(path) -> list[tuple[int, int, str, float]]:
    return sorted((tuple(json.loads(line)) for line in path.read_text().splitlines()), key=lambda e: e[3])


def test_stages_send_one_after_another_in_pp_order(tmp_path) -> None:
    events_path = tmp_path / "events.jsonl"
    assert run_ranks(_stage_sends, 2, str(events_path), -1, timeout=120) == ["ok", "ok"]
    events = _events(events_path)
    assert [(stage, index, kind) for stage, index, kind, _ in events] == [
        (stage, index, kind) for stage in (0, 1) for index in range(3) for kind in ("start", "end")
    ]
    last_end_of_stage0 = max(t for stage, _, kind, t in events if stage == 0 and kind == "end")
    first_start_of_stage1 = min(t for stage, _, kind, t in events if stage == 1 and kind == "start")
    assert last_end_of_stage0 <= first_start_of_stage1


def test_a_stage_that_fails_stops_the_later_stages_and_every_rank_raises(tmp_path) -> None:
    events_path = tmp_path / "events.jsonl"
    stage0, stage1 = run_ranks(_stage_sends, 2, str(events_path), 0, timeout=120)
    assert "'stage0.w1' is not served by the engine" in stage0
    assert "failed on another learner rank while sending stage 0's weights" in stage1
    # The bad tensor is refused before its bucket (and the one before it) is sent; stage 1 never
    # had its turn.
    assert not events_path.exists()
