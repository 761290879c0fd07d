"""A learner server killed in the middle of a batch several times the client's limits: the batch
still comes back complete and correct, and the next batch, on the same event loop, too. And a
server whose port is taken before it binds it."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import threading
import time
from functools import partial

import pytest
from rollout_reference import LOGPROB_ATOL, hf_greedy, hf_token_logprobs

from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.config import EngineConfig
from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.rollout.records import Prompt, RolloutBatch
from megatron_s2l.rollout.sampler import S2LGroupSampler
from megatron_s2l.rollout.sampling_params import SamplingConfig
from megatron_s2l.rollout.server import EngineServer, PortInUseError

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

NEW_TOKENS = 48
GROUP = 8


def sample_during_fault(
    engines: RolloutEngines, sampler: S2LGroupSampler, prompts: list[Prompt], step: int, server, fault
) -> RolloutBatch:
    """Sample `prompts` while `fault()` hits `server` once requests are being decoded on it (a thread
    waits for its first request in flight, then 0.3 s)."""

    def when_busy() -> None:
        deadline = time.monotonic() + 60
        while engines.learner.in_flight[server.url] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        fault()

    thread = threading.Thread(target=when_busy)
    thread.start()
    try:
        return engines.run(sampler.sample(prompts, step))
    finally:
        thread.join()


def test_killed_learner_server_mid_batch_yields_complete_correct_batch(
    rollout_engines: RolloutEngines, tiny_models
) -> None:
    pool = rollout_engines.learner
    assert pool.weight_version == "default", "runs before any weight sync (greedy reference = learner model)"
    # Greedy learner samples have one right answer each, computed independently below.
    config = dataclasses.replace(
        rollout_engines.config, learner_sampling=SamplingConfig(temperature=0.0, max_new_tokens=NEW_TOKENS)
    )
    live = rollout_engines.build_sampler(t_mix=2, group_size=GROUP)
    sampler = S2LGroupSampler(
        live.explorer, live.learner, config, t_mix=2, group_size=GROUP, explorer_loop=live.explorer_loop
    )
    rng = random.Random()
    prompts = [Prompt(f"k{i}", [rng.randrange(3, 400) for _ in range(5)]) for i in range(8)]
    limit = config.client.batch_size * config.client.max_concurrency
    assert GROUP * len(prompts) >= 4 * limit
    server = pool.servers[0]
    old_pid, restarts_before = server.pid, pool.restarts

    kill = partial(server.process.kill, signal.SIGKILL)
    batch = sample_during_fault(rollout_engines, sampler, prompts, 3, server, kill)  # all G: learner
    again = rollout_engines.run(sampler.sample(prompts, step=4))

    assert pool.restarts == restarts_before + 1 and server.pid != old_pid and server.is_healthy()
    assert batch.metrics["rollout/learner_resent_batches"] >= 1
    assert batch.metrics["rollout/learner_samples"] == GROUP * len(prompts)
    assert again.metrics["rollout/learner_samples"] == GROUP * len(prompts)
    for prompt, group, next_group in zip(prompts, batch.groups, again.groups, strict=True):
        assert sorted(r.sample_index for r in group.records) == list(range(GROUP))
        assert sorted(r.sample_index for r in next_group.records) == list(range(GROUP))
        expected = hf_greedy(tiny_models["learner"], prompt.input_ids, NEW_TOKENS)
        for record in group.records:
            # EOS may stop a greedy sample early; what was generated must be the greedy prefix.
            assert record.response_ids == expected[: len(record.response_ids)]
            reference = hf_token_logprobs(tiny_models["learner"], prompt.input_ids, record.response_ids)
            assert record.logprobs == pytest.approx(reference, abs=LOGPROB_ATOL)


def test_hung_learner_server_is_detected_restarted_and_the_batch_completes(
    rollout_engines: RolloutEngines,
) -> None:
    """SIGSTOP freezes the server mid-batch (a hang, not a death: its process is still there). The
    client's request time-out fires, the pool's health check times out too, the server is restarted
    (SIGKILL reaches a stopped process), and the lost batches are re-sent: the batch is complete."""
    pool = rollout_engines.learner
    client = dataclasses.replace(rollout_engines.config.client, request_timeout_s=8.0)
    config = dataclasses.replace(
        rollout_engines.config, client=client, learner_sampling=SamplingConfig(max_new_tokens=NEW_TOKENS)
    )
    learner = RolloutClient(pool, "learner", client)
    sampler = S2LGroupSampler(None, learner, config, t_mix=0, group_size=GROUP)
    rng = random.Random()
    prompts = [Prompt(f"h{i}", [rng.randrange(3, 400) for _ in range(5)]) for i in range(8)]
    server = pool.servers[0]
    old_pid, restarts_before = server.pid, pool.restarts

    started = time.monotonic()
    freeze = partial(os.kill, server.pid, signal.SIGSTOP)
    batch = sample_during_fault(rollout_engines, sampler, prompts, 1, server, freeze)
    assert pool.restarts == restarts_before + 1 and server.pid != old_pid and server.is_healthy()
    assert not _pid_alive(old_pid), "the frozen server was killed, not left behind"
    assert batch.metrics["rollout/learner_resent_batches"] >= 1
    assert batch.metrics["rollout/learner_samples"] == GROUP * len(prompts)
    for group in batch.groups:
        assert sorted(r.sample_index for r in group.records) == list(range(GROUP))
    print(f"hang detected and recovered from in {time.monotonic() - started:.0f} s")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_slow_learner_server_is_waited_for_not_restarted(rollout_engines: RolloutEngines) -> None:
    """A server that answers nothing for longer than the request time-out but is back by the health
    check (SIGSTOP, then SIGCONT 1.5 s after the time-out) is slow, not dead: the batches are re-sent,
    the server is kept (same process, no restart), and the batch is complete."""
    pool = rollout_engines.learner
    client = dataclasses.replace(rollout_engines.config.client, request_timeout_s=6.0)
    config = dataclasses.replace(
        rollout_engines.config, client=client, learner_sampling=SamplingConfig(max_new_tokens=NEW_TOKENS)
    )
    sampler = S2LGroupSampler(None, RolloutClient(pool, "learner", client), config, t_mix=0, group_size=GROUP)
    rng = random.Random()
    prompts = [Prompt(f"s{i}", [rng.randrange(3, 400) for _ in range(5)]) for i in range(8)]
    server = pool.servers[0]
    pid, restarts_before = server.pid, pool.restarts

    def freeze_then_thaw() -> None:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(client.request_timeout_s + 1.5)
        os.kill(pid, signal.SIGCONT)

    batch = sample_during_fault(rollout_engines, sampler, prompts, 1, server, freeze_then_thaw)
    assert pool.restarts == restarts_before and server.pid == pid and server.is_healthy()
    assert batch.metrics["rollout/learner_resent_batches"] >= 1
    assert batch.metrics["rollout/learner_samples"] == GROUP * len(prompts)
    for group in batch.groups:
        assert sorted(r.sample_index for r in group.records) == list(range(GROUP))


def test_a_picked_port_taken_before_the_server_binds_is_replaced(tiny_models, tmp_path) -> None:
    """The race a loaded CI machine hit: the port picked for a server is taken by another process
    before the server binds it. Before launch the check catches it; after launch the server's own
    bind fails (uvicorn then waits forever), which its log shows at once, not at the start-up
    time-out. A picked port then moves to another free one; a configured port is an error."""
    model = tiny_models["explorer"]
    server = EngineServer(model, EngineConfig(device="cpu"), tmp_path / "a.log", name="a0")
    first = server.port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        server.start()
        try:
            assert server.port != first and server.is_healthy()
        finally:
            server.stop()
        racing = EngineServer(model, EngineConfig(device="cpu", port=first), tmp_path / "b.log", name="b0")
        racing.process.spawn()  # past the check, as if the port had been taken just after it
        started = time.monotonic()
        with pytest.raises(PortInUseError, match="taken before the server bound it"):
            racing.wait_healthy(300)
        assert time.monotonic() - started < 150 and not racing.process.is_running()
