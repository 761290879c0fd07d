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
from megatron_s2l.rollout.colocate import CUDA_GRAPH, KV_CACHE, WEIGHTS, Colocation, colocate_config_errors
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.http import EngineRequestError

ROOT = Path(__file__).resolve().parents[2]
A, B = "http://127.0.0.1:1001", "http://127.0.0.1:1002"


class Recorder:
    """Stands in for `httpx.post`: records (what, url, tag) and answers as SGLang does (200, `null`),
    or with `fail[(path, url, tag)]` as the status code. `/flush_cache` is recorded as
    ("flush", url, None) and answers 400 (SGLang: requests still run) `busy[url]` times first."""

    def __init__(self, calls: list, fail: dict | None = None, busy: dict | None = None) -> None:
        self.calls, self.fail, self.busy = calls, fail or {}, dict(busy or {})

    def __call__(self, url: str, *, json: dict, headers: dict, timeout: float) -> httpx.Response:
        base, path = url.rsplit("/", 1)
        if path == "flush_cache":
            self.calls.append(("flush", base, None))
            if self.busy.get(base, 0) > 0:
                self.busy[base] -= 1
                return httpx.Response(400, content=b"Cache not flushed: pending requests")
            return httpx.Response(200, content=b"Cache flushed.")
        (tag,) = json["tags"]
        what = {"release_memory_occupation": "release", "resume_memory_occupation": "resume"}[path]
        self.calls.append((what, base, tag))
        status = self.fail.get((what, base, tag), 200)
        return httpx.Response(status, content=b"null", headers={"content-type": "application/json"})


def _no_flush(calls: list) -> list:
    return [c for c in calls if c[0] != "flush"]


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
        ("flush", A, None),  # each engine is idle first (a 200 from /flush_cache)
        ("flush", B, None),
        ("release", A, KV_CACHE),
        ("release", B, KV_CACHE),
        ("release", A, WEIGHTS),
        ("release", B, WEIGHTS),
        ("release", A, CUDA_GRAPH),
        ("release", B, CUDA_GRAPH),
    ]
    calls.clear()
    colocation.resume_weights()  # before the sync: the sync writes into the weights' memory
    assert calls == [("resume", A, WEIGHTS), ("resume", B, WEIGHTS)]
    calls.clear()
    colocation.resume_kv_cache()  # the CUDA graphs come back with the KV cache (slime: onload_kv)
    assert calls == [
        ("resume", A, KV_CACHE),
        ("resume", B, KV_CACHE),
        ("resume", A, CUDA_GRAPH),
        ("resume", B, CUDA_GRAPH),
    ]
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
    assert calls == [("resume", A, WEIGHTS), ("resume", A, KV_CACHE), ("resume", A, CUDA_GRAPH)]
    assert colocation.released == {}


def test_a_dropped_connection_names_the_server_log(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    monkeypatch.setattr(engine_http.httpx, "post", refuse)
    with pytest.raises(EngineRequestError, match=f"{A} still runs requests.*{A}/flush_cache"):
        Colocation(_pool(A), enabled=True, idle_timeout_s=0.2).release()
    monkeypatch.setattr(Colocation, "_wait_until_idle", lambda self, server: None)
    with pytest.raises(EngineRequestError, match=f"kv_cache: {A}/release_memory_occupation.*see its log"):
        Colocation(_pool(A), enabled=True).release()


def test_release_waits_until_a_request_the_client_abandoned_is_done(monkeypatch) -> None:
    """The client's in-flight count is 0 (it gave up on a request), but the server still runs it:
    /flush_cache answers 400 until it is done; only then may the release go out (SGLang's scheduler
    dies of a release while a request runs)."""
    recorded: list = []
    monkeypatch.setattr(engine_http.httpx, "post", Recorder(recorded, busy={B: 3}))
    Colocation(_pool(A, B), enabled=True).release()
    assert [c for c in recorded if c[0] == "flush"] == [("flush", A, None)] + [("flush", B, None)] * 4
    first_release = next(i for i, c in enumerate(recorded) if c[0] == "release")
    assert first_release == 5, "no release before every engine answered /flush_cache with 200"


def test_release_is_refused_when_an_engine_stays_busy_past_the_limit(monkeypatch) -> None:
    recorded: list = []
    monkeypatch.setattr(engine_http.httpx, "post", Recorder(recorded, busy={A: 10**6}))
    with pytest.raises(EngineRequestError, match=r"still runs requests after 0\.3 s"):
        Colocation(_pool(A), enabled=True, idle_timeout_s=0.3).release()
    assert _no_flush(recorded) == [], "nothing released: the busy server would have died"


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
    assert events[-1] == ("barrier",), "every rank meets after the release, before anyone allocates"
    events.clear()
    driver.resume_weights()
    assert events == [("empty_cache",), ("barrier",), ("resume", A, WEIGHTS)]
    events.clear()
    driver.resume_kv_cache()  # the sync's buffers go back before the KV cache is mapped again
    assert events == [("empty_cache",), ("barrier",), ("resume", A, KV_CACHE), ("resume", A, CUDA_GRAPH)]
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


def test_preflight_refuses_colocate_on_cpu(monkeypatch, tmp_path: Path) -> None:
    import json

    import torch

    from megatron_s2l.config import load_config
    from megatron_s2l.configio import ConfigError
    from megatron_s2l.demo.tiny import make_tiny_qwen3
    from megatron_s2l.train_cli import preflight

    learner = make_tiny_qwen3(tmp_path / "learner", seed=1)
    explorer = make_tiny_qwen3(tmp_path / "explorer", tokenizer_dir=learner, seed=2)
    row = {"data_source": "math_dapo", "prompt": [{"role": "user", "content": "1+1?"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps({**row, "reward_model": {"ground_truth": "2"}}) + "\n")
    tiny = [
        f"model.learner={learner}",
        f"model.explorer={explorer}",
        f"data.train_files=[{tmp_path}/train.jsonl]",
    ]
    tiny += ["data.eval_files=[]", f"logging.run_dir={tmp_path}/runs/{{name}}", "schedule.prompts_per_step=1"]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(ROOT / "yaml" / "demo-cpu.yaml", [*tiny, "rollout.colocate=true"])
    with pytest.raises(ConfigError, match=r"rollout\.colocate needs CUDA.*sync\.transport=tensor"):
        preflight(cfg)
    preflight(load_config(ROOT / "yaml" / "demo-cpu.yaml", tiny))  # the same run without colocate passes


def test_learner_state_comes_back_after_the_release_and_leaves_before_the_weights_resume(
    monkeypatch, calls
) -> None:
    """With learner.offload_during_rollout: the learner reloads only after every rank met past the
    engines' release, and offloads before the ranks meet to let the engines take their weights."""
    import torch
    import torch.distributed as dist

    events = calls
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append(("empty_cache",)))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: events.append(("barrier",)))
    learner = SimpleNamespace(
        reload=lambda: events.append(("learner", "reload")),
        offload=lambda: events.append(("learner", "offload")),
    )
    colocation = Colocation(_pool(A), enabled=True, learner=learner)
    colocation.release()
    assert _no_flush(events)[-3:] == [("release", A, CUDA_GRAPH), ("barrier",), ("learner", "reload")]
    events.clear()
    colocation.resume_weights()
    assert events == [("learner", "offload"), ("empty_cache",), ("barrier",), ("resume", A, WEIGHTS)]
