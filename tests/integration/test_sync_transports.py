"""Weight sync into a real learner engine, per transport: afterwards the engine equals the new weights.

The new weights come from a `transformers` model with different random weights (one target model per
transport, so every test starts from weights the engine does not hold). The reference is that
model's own greedy tokens and log-probs; the explorer engine must be unchanged.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from rollout_fixtures import SYNC_TRANSPORTS
from rollout_reference import (
    LOGPROB_ATOL,
    engine_greedy,
    hf_greedy,
    hf_token_logprobs,
    load_hf_model,
    logprobs_of,
)

from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.sync.config import SyncConfig
from megatron_s2l.sync.manifest import read_weight_manifest
from megatron_s2l.sync.weight_sync import WeightSync, WeightSyncError, pool_endpoints

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

NEW_TOKENS = 12


def _make_sync(engines: RolloutEngines, transport: str, tmp_path, bucket_mb: int = 1) -> WeightSync:
    config = SyncConfig(
        transport=transport, bucket_mb=bucket_mb, timeout_s=30.0, disk_dir=str(tmp_path / "sync")
    )
    manifest = read_weight_manifest(engines.learner.model_path)  # what the engine serves
    return WeightSync(config, endpoints=pool_endpoints(engines.learner), manifest=manifest)


@pytest.mark.parametrize("transport", SYNC_TRANSPORTS)
def test_sync_makes_learner_engine_equal_new_weights(
    rollout_engines, tiny_models, transport, tmp_path
) -> None:
    learner_url, explorer_url = (
        rollout_engines.learner.servers[0].url,
        rollout_engines.explorer.servers[0].url,
    )
    target = tiny_models[f"target_{transport}"]
    prompt = [random.randrange(3, 400) for _ in range(6)]
    expected_tokens = hf_greedy(target, prompt, NEW_TOKENS)
    explorer_before = engine_greedy(explorer_url, prompt, NEW_TOKENS)
    assert engine_greedy(learner_url, prompt, NEW_TOKENS)["output_ids"] != expected_tokens, (
        "weights must differ"
    )

    # bucket_mb=1 splits the ~0.7 MB model into buckets, so bucketing is exercised too (tiny model:
    # several tensors per bucket; the embedding alone exceeds none).
    sync = _make_sync(rollout_engines, transport, tmp_path, bucket_mb=1)
    version = f"{transport}-1"
    try:
        pool = rollout_engines.learner
        pool.weight_version = version  # as the trainer does (megatron_s2l.train.sync_learner_engines)
        result = sync.update(load_hf_model(str(target)).named_parameters(), version=version)
    finally:
        sync.close()
    assert result.updated == [learner_url] and not result.missed
    assert result.bytes_sent == sum(p.numel() * 4 for p in load_hf_model(str(target)).parameters())

    after = engine_greedy(learner_url, prompt, NEW_TOKENS)
    assert after["output_ids"] == expected_tokens
    assert logprobs_of(after) == pytest.approx(
        hf_token_logprobs(target, prompt, expected_tokens), abs=LOGPROB_ATOL
    )
    assert after["meta_info"]["weight_version"] == version

    explorer_after = engine_greedy(explorer_url, prompt, NEW_TOKENS)
    assert explorer_after["output_ids"] == explorer_before["output_ids"]
    # Same weights; only the radix-cache hit changes the summation order (differences ~1e-6).
    assert logprobs_of(explorer_after) == pytest.approx(logprobs_of(explorer_before), abs=1e-5)
    explorer_reference = hf_token_logprobs(tiny_models["explorer"], prompt, explorer_after["output_ids"])
    assert logprobs_of(explorer_after) == pytest.approx(explorer_reference, abs=LOGPROB_ATOL)
    assert explorer_after["meta_info"]["weight_version"] == "default"


def test_distributed_sync_with_generation_in_flight_finishes_on_new_weights(
    rollout_engines, tiny_models, tmp_path
):
    """Pause (retract) -> update -> continue: the running request ends with the new weights' tokens."""
    learner_url = rollout_engines.learner.servers[0].url
    target = tiny_models["target_distributed"]
    prompt = [random.randrange(3, 400) for _ in range(5)]
    total = 480  # context length 512
    started = time.monotonic()
    engine_greedy(learner_url, prompt[::-1], 48)
    expected_seconds = (time.monotonic() - started) * total / 48  # this machine's speed right now
    answer: dict = {}

    def long_generation() -> None:
        answer.update(engine_greedy(learner_url, prompt, total))

    generator = threading.Thread(target=long_generation)
    generator.start()
    time.sleep(max(0.2, 0.2 * expected_seconds))  # about a fifth of the way into decoding
    assert generator.is_alive(), "the request finished before the update: make it longer"
    sync = _make_sync(rollout_engines, "distributed", tmp_path)
    try:
        sync.update(load_hf_model(str(target)).named_parameters(), version="in-flight")
    finally:
        sync.close()
    generator.join(timeout=300)

    meta = answer["meta_info"]
    assert len(answer["output_ids"]) == total and meta["finish_reason"]["type"] == "length"
    assert meta["weight_version"] == "in-flight"
    segments = meta["weight_versions"]
    assert [s["version"] for s in segments][-1] == "in-flight" and len(segments) >= 2, segments
    switch = segments[-1]["start"]
    assert 0 < switch < total, "the update landed while the request was decoding"
    # Every token after the switch is the new weights' greedy choice given everything before it.
    prefix = prompt + answer["output_ids"][:switch]
    assert answer["output_ids"][switch:] == hf_greedy(target, prefix, total - switch)


def test_unknown_weight_name_is_refused_before_sending(rollout_engines, tmp_path) -> None:
    """SGLang skips unknown names silently; the sync checks names and shapes against the engine's
    checkpoint first, so an export bug cannot leave the engine on old weights unnoticed."""
    import torch

    learner_url = rollout_engines.learner.servers[0].url
    prompt = [7, 8, 9]
    before = engine_greedy(learner_url, prompt, 4)["output_ids"]
    sync = _make_sync(rollout_engines, "distributed", tmp_path)
    good = [("model.norm.weight", torch.ones(64))]
    try:
        with pytest.raises(WeightSyncError, match=r"'model\.layers\.0\.no_such_weight' is not served"):
            sync.update([*good, ("model.layers.0.no_such_weight", torch.ones(3, 3))], version="bad")
        with pytest.raises(WeightSyncError, match=r"shape \(32,\), the engine's is \(64,\)"):
            sync.update([("model.norm.weight", torch.ones(32))], version="bad")
        with pytest.raises(WeightSyncError, match="lacks"):
            sync.update(good, version="bad")  # one stage must send every weight
    finally:
        sync.close()
    assert engine_greedy(learner_url, prompt, 4)["output_ids"] == before


def test_rejected_broadcast_fails_fast_and_engine_stays_usable(
    rollout_engines, tiny_models, tmp_path
) -> None:
    """An engine that rejects a declaration ends the sender's wait at once (not at the group time-out)."""
    import torch

    from megatron_s2l.rollout.http import EngineRequestError
    from megatron_s2l.sync.buckets import Bucket
    from megatron_s2l.sync.transports import DistributedTransport

    endpoints = pool_endpoints(rollout_engines.learner)
    transport = DistributedTransport(stage=0, master_address="127.0.0.1", backend="gloo", timeout_s=60.0)
    bucket = Bucket(0, [("model.norm.weight", torch.ones(64))])
    transport._ensure_group(endpoints, "gloo")
    # Sent outside /begin_weight_update and to a group the engine lacks: the engine answers 400 at
    # once while this rank already waits in the broadcast.
    transport._group_name = "s2l-no-such-group"
    started = time.monotonic()
    with pytest.raises(EngineRequestError):
        transport.send(bucket, endpoints, "bad")
    assert time.monotonic() - started < 20
    transport.close()
    # The engine still serves and still takes a proper update.
    target = tiny_models["target_distributed"]
    sync = _make_sync(rollout_engines, "distributed", tmp_path)
    try:
        sync.update(load_hf_model(str(target)).named_parameters(), version="after-reject")
    finally:
        sync.close()
    prompt = [5, 6, 7]
    assert engine_greedy(rollout_engines.learner.servers[0].url, prompt, 6)["output_ids"] == hf_greedy(
        target, prompt, 6
    )


def test_engine_restarted_on_the_same_port_gets_a_new_group_before_any_broadcast(
    rollout_engines, tiny_models, tmp_path
) -> None:
    """A learner engine restarted on the same port (as `on_failure: restart` does) no longer holds
    the sync group: the next update builds a new group before broadcasting (its /server_info
    fingerprint changed) instead of failing a bucket on the stale one ("Group ... not in ...",
    which with NCCL would leave the sender waiting in the communicator set-up)."""
    server = rollout_engines.learner.servers[0]
    sync = _make_sync(rollout_engines, "distributed", tmp_path)
    target = tiny_models["target_distributed"]
    try:
        first = sync.update(load_hf_model(str(target)).named_parameters(), version="before-restart")
        assert first.retries == 0
        old_group, old_pid, port = sync.transport._group_name, server.pid, server.port
        server.restart()
        assert server.pid != old_pid and server.port == port
        second = sync.update(load_hf_model(str(target)).named_parameters(), version="after-restart")
        assert second.retries == 0 and second.updated == [server.url]
        new_group = sync.transport._group_name
        assert new_group not in ("", old_group)
        third = sync.update(load_hf_model(str(target)).named_parameters(), version="same-server")
        assert third.retries == 0 and sync.transport._group_name == new_group  # unchanged: kept
    finally:
        sync.close()
    prompt = [5, 6, 7]
    assert engine_greedy(server.url, prompt, 6)["output_ids"] == hf_greedy(target, prompt, 6)
