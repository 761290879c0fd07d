"""Colocated mode without a server: the request order of `Colocation`, the guards that keep SGLang's
scheduler alive (it dies on a release while a request runs and on a resume of a tag it did not
release), and the config checks. The requests go to a recorder in place of `httpx.post` (under
`EngineEndpoint.post`); the same sequence against a real SGLang server is
tests/integration/test_rollout_colocate.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

import megatron_s2l.rollout.http as engine_http
from megatron_s2l.rollout.colocate import KV_CACHE, WEIGHTS, Colocation, colocate_config_errors
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.http import EngineRequestError

ROOT = Path(__file__).resolve().parents[2]
A, B = "http://127.0.0.1:1001", "http://127.0.0.1:1002"


class Recorder:
    """Stands in for `httpx.post`: records (what, url, tag) and answers as SGLang does (200, `null`),
    or with `fail[(path, url, tag)]` as the status code."""

    def __init__(self, calls: list, fail: dict | None = None) -> None:
        self.calls, self.fail = calls, fail or {}

    def __call__(self, url: str, *, json: dict, headers: dict, timeout: float) -> httpx.Response:
        base, path = url.rsplit("/", 1)
        (tag,) = json["tags"]
        what = {"release_memory_occupation": "release", "resume_memory_occupation": "resume"}[path]
        self.calls.append((what, base, tag))
        status = self.fail.get((what, base, tag), 200)
        return httpx.Response(status, content=b"null", headers={"content-type": "application/json"})


def _pool(*urls: str) -> SimpleNamespace:
    servers = [SimpleNamespace(url=url, api_key=None) for url in urls]
    return SimpleNamespace(servers=servers, in_flight={url: 0 for url in urls})


@pytest.fixture
def calls(monkeypatch) -> list:
    recorded: list = []
    monkeypatch.setattr(engine_http.httpx, "post", Recorder(recorded))
    return recorded


def test_phase_boundaries_release_kv_then_weights_and_resume_weights_before_kv(calls) -> None:
    colocation = Colocation(_pool(A, B), enabled=True)
    colocation.release()
    assert calls == [
        ("release", A, KV_CACHE),
        ("release", B, KV_CACHE),
        ("release", A, WEIGHTS),
        ("release", B, WEIGHTS),
    ]
    calls.clear()
    colocation.resume_weights()  # before the sync: the sync writes into the weights' memory
    assert calls == [("resume", A, WEIGHTS), ("resume", B, WEIGHTS)]
    calls.clear()
    colocation.resume_kv_cache()
    assert calls == [("resume", A, KV_CACHE), ("resume", B, KV_CACHE)]
    assert colocation.released == {}
    calls.clear()
    colocation.resume_kv_cache()  # nothing is released: a second resume would kill the servers
    colocation.resume_weights()
    assert calls == []


def test_colocate_off_or_a_rank_without_the_pool_sends_nothing(calls) -> None:
    for colocation in (Colocation(_pool(A), enabled=False), Colocation(None, enabled=True)):
        colocation.release()
        colocation.resume_weights()
        colocation.resume_kv_cache()
    assert calls == []


def test_no_release_while_a_request_is_in_flight(calls) -> None:
    pool = _pool(A, B)
    pool.in_flight[B] = 2
    with pytest.raises(RuntimeError, match="requests in flight"):
        Colocation(pool, enabled=True).release()
    assert calls == []


def test_only_what_was_released_is_resumed(monkeypatch) -> None:
    recorded: list = []
    monkeypatch.setattr(engine_http.httpx, "post", Recorder(recorded, fail={("release", B, WEIGHTS): 400}))
    colocation = Colocation(_pool(A, B), enabled=True)
    with pytest.raises(EngineRequestError, match="400"):
        colocation.release()
    assert colocation.released == {A: {KV_CACHE, WEIGHTS}, B: {KV_CACHE}}
    recorded.clear()
    colocation.resume_weights()
    colocation.resume_kv_cache()
    assert recorded == [("resume", A, WEIGHTS), ("resume", A, KV_CACHE), ("resume", B, KV_CACHE)]


def test_a_server_dropped_while_released_is_not_resumed(calls) -> None:
    pool = _pool(A, B)
    colocation = Colocation(pool, enabled=True)
    colocation.release()
    pool.servers = pool.servers[:1]
    calls.clear()
    colocation.resume_weights()
    colocation.resume_kv_cache()
    assert calls == [("resume", A, WEIGHTS), ("resume", A, KV_CACHE)] and colocation.released == {}


def test_a_dropped_connection_names_the_server_log(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    monkeypatch.setattr(engine_http.httpx, "post", refuse)
    with pytest.raises(EngineRequestError, match=f"kv_cache: {A}/release_memory_occupation.*see its log"):
        Colocation(_pool(A), enabled=True).release()


def test_resume_weights_frees_the_ranks_cache_and_waits_for_every_rank_first(monkeypatch, calls) -> None:
    """Every rank returns its cached CUDA blocks and meets the others before the driver resumes the
    engines' weights on the same GPUs; a rank without the pool only does the first two."""
    import torch
    import torch.distributed as dist

    events = calls  # one list: the order across the three kinds of event is what is checked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append(("empty_cache",)))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: events.append(("barrier",)))
    driver = Colocation(_pool(A), enabled=True)
    driver.release()
    events.clear()
    driver.resume_weights()
    assert events == [("empty_cache",), ("barrier",), ("resume", A, WEIGHTS)]
    events.clear()
    Colocation(None, enabled=True).resume_weights()
    assert events == [("empty_cache",), ("barrier",)]
    events.clear()
    Colocation(None, enabled=False).resume_weights()
    assert events == []


def test_colocated_learner_pool_cannot_be_external() -> None:
    external = EnginePoolConfig(external_urls=["http://node1:30000"])
    with pytest.raises(ValueError, match="colocate: the learner engines must be started here"):
        RolloutConfig(colocate=True, learner=external)
    RolloutConfig(colocate=True, explorer=external)  # an attached explorer is fine


def test_colocate_config_errors_name_cpu_and_the_distributed_transport() -> None:
    cuda = RolloutConfig(colocate=True, learner=EnginePoolConfig(engine=EngineConfig(device="cuda")))
    assert colocate_config_errors(cuda, sync_transport="tensor") == []
    assert colocate_config_errors(cuda, sync_transport="disk") == []
    (error,) = colocate_config_errors(cuda, sync_transport="distributed")
    assert "NCCL" in error and "sync.transport=tensor" in error
    cpu = RolloutConfig(colocate=True, learner=EnginePoolConfig(engine=EngineConfig(device="cpu")))
    (error,) = colocate_config_errors(cpu, sync_transport="tensor")
    assert "rollout.colocate needs CUDA" in error and "torch_memory_saver" in error
    off = RolloutConfig(learner=EnginePoolConfig(engine=EngineConfig(device="cpu")))
    assert colocate_config_errors(off, sync_transport="distributed") == []


def test_colocate_on_cpu_fails_before_any_server_starts(tmp_path) -> None:
    from megatron_s2l.rollout.engines import RolloutEngines

    config = RolloutConfig(
        colocate=True, learner=EnginePoolConfig(engine=EngineConfig(device="cpu")), log_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match=r"rollout\.colocate needs CUDA"):
        RolloutEngines(config, explorer_model=None, learner_model=tmp_path / "l")
    assert not list(tmp_path.iterdir())  # no server log: nothing was launched


@pytest.mark.skipif(not (ROOT / "cache" / "demo" / "learner").is_dir(), reason="needs `s2l demo`'s models")
def test_preflight_refuses_colocate_on_cpu(monkeypatch) -> None:
    import torch

    from megatron_s2l.config import load_config
    from megatron_s2l.configio import ConfigError
    from megatron_s2l.train_cli import preflight

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(ROOT / "yaml" / "demo-cpu.yaml", ["rollout.colocate=true"])
    with pytest.raises(ConfigError, match=r"rollout\.colocate needs CUDA.*sync\.transport=tensor"):
        preflight(cfg)
    preflight(load_config(ROOT / "yaml" / "demo-cpu.yaml"))  # the same run without colocate passes
