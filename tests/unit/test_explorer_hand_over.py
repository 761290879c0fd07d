"""The explorer's hand-over after T_mix (rollout.explorer_hand_over): which step it follows, which
cores or GPUs the learner engines that replace the explorer's get, the layout of a run resumed after
it, what happens to attached explorer servers, and the `s2l launch --dry-run` note (no server
started: the engines' start and stop are recorded instead)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from megatron_s2l.algo import ScheduleConfig, s2l_schedule
from megatron_s2l.config import load_config
from megatron_s2l.launch.plan import LaunchOptions, format_dry_run, plan_launch
from megatron_s2l.rollout import engines as engines_module
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.rollout.http import EngineEndpoint, EngineRequestError
from megatron_s2l.rollout.placement import regroup_gpus
from megatron_s2l.rollout.server import EngineServer, ExternalServer
from megatron_s2l.run.hand_over import hands_over, last_explorer_step, resumes_after_explorer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("steps", "t_mix", "mode", "rounding"),
    [
        (4, 3, "combined", "exact"),
        (4, 2, "combined", "exact"),
        (4, 1, "combined", "exact"),
        (4, 0, "combined", "exact"),
        (4, 10, "combined", "exact"),
        (6, 4, "alternating", "ceil-both"),
        (20, 10, "combined", "exact"),
    ],
)
def test_last_explorer_step_is_the_last_schedule_row_with_explorer_samples(
    steps, t_mix, mode, rounding
) -> None:
    schedule = ScheduleConfig(steps=steps, t_mix=t_mix, group_size=8, mode=mode, rounding=rounding)
    rows = s2l_schedule(steps, t_mix, 8, rounding)
    assert last_explorer_step(schedule) == max((r.step for r in rows if r.g_explorer), default=0)


def _cfg(*overrides: str):
    """The demo's config with the hand-over on (the demo turns it off; the default is on)."""
    return load_config(ROOT / "yaml/demo-cpu.yaml", ["rollout.explorer_hand_over=true", *overrides])


def test_which_runs_hand_over() -> None:
    assert hands_over(_cfg("schedule.t_mix=3", "schedule.steps=4"))  # after step 2
    assert not hands_over(_cfg("schedule.t_mix=5", "schedule.steps=4"))  # explorer samples to the end
    assert not hands_over(_cfg("schedule.t_mix=0"))
    assert not hands_over(_cfg("rollout.explorer_hand_over=false"))
    assert not hands_over(_cfg("rollout.explorer_cache_path=/c.jsonl"))  # no explorer engine at all


def test_a_resume_starts_retired_once_the_last_explorer_step_is_checkpointed(tmp_path: Path) -> None:
    cfg = _cfg("schedule.t_mix=3", "schedule.steps=4")  # last explorer step: 2
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    assert not resumes_after_explorer(cfg, checkpoints)  # no checkpoint yet

    def latest(name: str) -> None:
        (checkpoints / name).mkdir(exist_ok=True)
        (checkpoints / "latest").write_text(name)

    latest("step_000001")
    assert not resumes_after_explorer(cfg, checkpoints)
    latest("step_000002_explorer")  # between step 2's half-steps: step 2 is not complete
    assert not resumes_after_explorer(cfg, checkpoints)
    latest("step_000002")
    assert resumes_after_explorer(cfg, checkpoints)
    latest("step_000003")
    assert resumes_after_explorer(cfg, checkpoints)
    assert not resumes_after_explorer(
        _cfg("schedule.t_mix=3", "rollout.explorer_hand_over=false"), checkpoints
    )


def test_regroup_gpus_packs_freed_gpus_at_the_new_tp() -> None:
    assert regroup_gpus([["6"], ["7"]], 1) == [["6"], ["7"]]
    assert regroup_gpus([["4"], ["5"], ["6"]], 2) == [["4", "5"]]  # GPU 6 stays idle
    assert regroup_gpus([["4", "5"], ["6", "7"]], 4) == [["4", "5", "6", "7"]]
    assert regroup_gpus([["6", "7"]], 4) == []


def _gpu_engines(
    tmp_path: Path, monkeypatch, *, learner_tp: int, retired: bool, colocate: bool = False, gpus: int = 8
):
    # 4 learner ranks on this node (GPUs 0-3): engines get the GPUs from 4 on.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus))))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    learner = EnginePoolConfig(num_engines=1, engine=EngineConfig(device="cuda", tp=learner_tp))
    explorer = EnginePoolConfig(num_engines=2, engine=EngineConfig(device="cuda"))
    config = RolloutConfig(explorer=explorer, learner=learner, log_dir=str(tmp_path), colocate=colocate)
    return RolloutEngines(
        config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l", explorer_retired=retired
    )


def _gpus_of(pool) -> list[str]:
    return [server.process.env["CUDA_VISIBLE_DEVICES"] for server in pool.servers]


def test_resumed_gpu_layout_gives_the_explorer_gpus_to_learner_engines(tmp_path, monkeypatch, caplog) -> None:
    live = _gpu_engines(tmp_path, monkeypatch, learner_tp=2, retired=False)
    assert _gpus_of(live.learner) == ["4,5"] and _gpus_of(live.explorer) == ["6", "7"]
    retired = _gpu_engines(tmp_path, monkeypatch, learner_tp=2, retired=True)
    # The learner keeps its own GPUs; one more TP-2 engine takes the explorer's two.
    assert retired.explorer is None and retired.explorer_loop is None
    assert _gpus_of(retired.learner) == ["4,5", "6,7"]
    assert [s.model_path for s in retired.learner.servers] == [str(tmp_path / "l")] * 2
    assert len({s.url for s in retired.learner.servers}) == 2
    # At TP 1 each explorer GPU gets an engine; at TP 4 none fits in two GPUs (said in the log).
    assert _gpus_of(_gpu_engines(tmp_path, monkeypatch, learner_tp=1, retired=True).learner) == [
        "4",
        "5",
        "6",
    ]
    with caplog.at_level(logging.INFO, logger=engines_module.__name__):  # 6 engine GPUs: 4 + 2
        wide = _gpu_engines(tmp_path, monkeypatch, learner_tp=4, retired=True, gpus=10)
    assert _gpus_of(wide.learner) == ["4,5,6,7"]
    assert "hold 0 learner engines at TP 4; 2 GPUs stay idle" in caplog.text


def test_colocated_learner_engines_take_no_explorer_gpus(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with caplog.at_level(logging.INFO, logger=engines_module.__name__):
        engines = _gpu_engines(tmp_path, monkeypatch, learner_tp=2, retired=True, colocate=True)
    assert _gpus_of(engines.learner) == ["0,1"] and engines.explorer is None
    assert "colocated learner engines take none of the explorer's GPUs" in caplog.text


@pytest.fixture
def four_cores(monkeypatch):
    """Engines on CPU on a 4-core machine; starting and stopping a server is recorded, not run."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    monkeypatch.setattr(engines_module, "check_same_tokenizer", lambda *paths: None)
    events: list[tuple[str, str]] = []

    def start(server: EngineServer) -> float:
        events.append(("start", server.name))
        return 0.0

    monkeypatch.setattr(EngineServer, "start", start)
    monkeypatch.setattr(EngineServer, "stop", lambda server: events.append(("stop", server.name)))
    return events


def _cpu_engines(tmp_path: Path, *, retired: bool = False, explorer_urls: list[str] | None = None):
    cpu = EngineConfig(device="cpu")
    config = RolloutConfig(
        explorer=EnginePoolConfig(engine=cpu, external_urls=explorer_urls or []),
        learner=EnginePoolConfig(engine=cpu),
        log_dir=str(tmp_path),
    )
    return RolloutEngines(
        config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l", explorer_retired=retired
    )


def _cores_of(pool) -> list[frozenset[int] | None]:
    return [server.process.cpu_cores for server in pool.servers]


def test_hand_over_on_cpu_replaces_the_explorer_engine_by_a_learner_engine_on_its_cores(
    tmp_path, four_cores
) -> None:
    engines = _cpu_engines(tmp_path).start()
    explorer_url = engines.explorer.servers[0].url
    assert _cores_of(engines.learner) == [frozenset({0, 1})] and _cores_of(engines.explorer) == [
        frozenset({2, 3})
    ]
    assert four_cores == [("start", "explorer0"), ("start", "learner0")] or four_cores == [
        ("start", "learner0"),
        ("start", "explorer0"),
    ]
    four_cores.clear()
    engines.learner.in_flight[engines.learner.servers[0].url] = 1
    with pytest.raises(RuntimeError, match="requests in flight"):
        engines.hand_over_explorer()
    engines.learner.in_flight[engines.learner.servers[0].url] = 0

    done = engines.hand_over_explorer()
    assert four_cores == [("stop", "explorer0"), ("start", "learner1")]  # stopped before its cores are reused
    new = engines.learner.servers[1]
    assert done.stopped == [explorer_url] and done.started == [new.url] and done.released == []
    assert _cores_of(engines.learner) == [frozenset({0, 1}), frozenset({2, 3})]
    assert new.process.env["OMP_NUM_THREADS"] == "2" and new.model_path == str(tmp_path / "l")
    assert engines.explorer is None and engines.explorer_loop is None and engines.explorer_retired
    # The client picks the least busy server: the new one serves as soon as the other is busy.
    engines.learner.in_flight[engines.learner.servers[0].url] = 3
    assert engines.learner.pick()[0] is new
    # Once is enough; a resumed run starts in the same layout, explorer-free.
    assert engines.hand_over_explorer().started == [] and len(engines.learner.servers) == 2
    engines.stop()
    resumed = _cpu_engines(tmp_path, retired=True)
    assert resumed.explorer is None and _cores_of(resumed.learner) == _cores_of(engines.learner)
    sampler = resumed.build_sampler(t_mix=3, group_size=4)  # no explorer left to sample
    assert sampler.explorer is None and sampler.t_mix == 0


def test_a_cached_explorer_has_nothing_to_hand_over(tmp_path, four_cores) -> None:
    config = RolloutConfig(
        learner=EnginePoolConfig(engine=EngineConfig(device="cpu")),
        log_dir=str(tmp_path),
        explorer_cache_path=str(tmp_path / "cache.jsonl"),
    )
    for retired in (False, True):
        engines = RolloutEngines(
            config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l", explorer_retired=retired
        )
        assert engines.explorer is None and not engines.explorer_retired
        assert _cores_of(engines.learner) == [frozenset({0, 1, 2, 3})]  # the learner's alone, as before
        assert engines.hand_over_explorer().started == []


def test_attached_explorer_servers_are_released_not_stopped(tmp_path, four_cores, monkeypatch) -> None:
    calls: list[tuple[str, str, dict | None]] = []

    def post(endpoint: EngineEndpoint, path: str, payload=None, timeout_s: float = 60.0) -> dict:
        calls.append((endpoint.url, path, payload))
        if endpoint.url.endswith(":2") and path == "/release_memory_occupation":
            raise EngineRequestError("refused")
        return {}

    monkeypatch.setattr(EngineEndpoint, "post", post)
    monkeypatch.setattr(ExternalServer, "is_healthy", lambda server: not server.url.endswith(":3"))
    engines = _cpu_engines(tmp_path, explorer_urls=["http://node1:1", "http://node1:2", "http://node1:3"])
    assert engines.explorer is not None and _cores_of(engines.learner) == [frozenset({0, 1, 2, 3})]
    done = engines.hand_over_explorer()
    # Idle first (flush_cache answers 200 only then), then release every tag (SGLang: no tags = all).
    assert calls == [
        ("http://node1:1", "/flush_cache", None),
        ("http://node1:1", "/release_memory_occupation", {}),
        ("http://node1:2", "/flush_cache", None),
        ("http://node1:2", "/release_memory_occupation", {}),
    ]  # :3 does not answer /health: not waited for
    assert done.released == ["http://node1:1"] and done.stopped == done.started == []
    assert engines.explorer is None and len(engines.learner.servers) == 1 and four_cores == []


def test_dry_run_says_what_happens_to_the_explorer_gpus_after_t_mix() -> None:
    def dry_run(*overrides: str) -> str:
        cfg = load_config(ROOT / "yaml/qwen3-8b-s2l.yaml", list(overrides))
        options = LaunchOptions(hosts=("n0", "n1"))
        return format_dry_run(plan_launch(cfg, "yaml/qwen3-8b-s2l.yaml", list(overrides), options))

    note = next(line for line in dry_run().splitlines() if "explorer engines after T_mix" in line)
    assert "from step 100 on" in note  # t_mix 100: the last step with explorer samples is 99
    assert "explorer engines (n1 GPUs 6-7)" in note
    assert "frees nothing without --enable-memory-saver" in note
    saver = dry_run('rollout.explorer.engine.extra_args=["--enable-memory-saver"]')
    assert "which frees their GPUs for other work" in saver
    assert "explorer engines after T_mix" not in dry_run("rollout.explorer_hand_over=false")


class _FakeDriver:
    """The driver as the loop hook sees it: its engines, a hand-over that reports new engines."""

    def __init__(self, tmp_path: Path, *, retired: bool = False, starts: bool = True) -> None:
        self.calls: list[str] = []
        self.run = type("Run", (), {"checkpoints": tmp_path})()
        pool = type("Pool", (), {"check_weight_versions": lambda _: self.calls.append("check")})()
        self.engines = type("Engines", (), {"explorer_retired": retired, "learner": pool})()
        self.starts = starts

    def hand_over_explorer(self) -> bool:
        self.calls.append("hand-over")
        return self.starts


def _pieces(cfg, driver, tmp_path: Path):
    from megatron_s2l.run.phases import Phases
    from megatron_s2l.run.steps import StepPieces

    status = tmp_path / "status.json" if driver else None
    return StepPieces(
        cfg=cfg,
        learner="learner",
        driver=driver,
        sync="sync",
        colocation=None,
        phases=Phases(status),
        checkpoint_explorer_half=lambda *a: False,
    )


@pytest.fixture
def synced(monkeypatch) -> list[tuple]:
    """The hook's collectives, recorded: the broadcast hands the driver's value to every rank."""
    from megatron_s2l.run import hand_over

    calls: list[tuple] = []
    monkeypatch.setattr(hand_over, "broadcast", lambda value: value if value is not None else True)
    monkeypatch.setattr(hand_over, "sync_learner_engines", lambda *args: calls.append(args))
    return calls


def test_the_loop_hands_over_before_step_t_mix_and_syncs_the_new_engines(tmp_path, synced) -> None:
    from megatron_s2l.run.hand_over import hand_over_explorer
    from megatron_s2l.run.phases import read_status

    cfg = _cfg("schedule.t_mix=3", "schedule.steps=4")
    driver = _FakeDriver(tmp_path)
    pieces = _pieces(cfg, driver, tmp_path)
    assert [bool(hand_over_explorer(pieces, step)) for step in (1, 2, 3, 4)] == [False, False, True, False]
    # Once, at step 3 (after step 2, the last with explorer samples), to the weights after step 2.
    assert driver.calls == ["hand-over", "check"]
    assert synced == [(pieces.sync, pieces.learner, 2, driver.engines.learner)]
    assert read_status(tmp_path / "status.json")["phase"] == "hand-over"
    # Another rank (no driver) makes the same collective calls; nothing started: no sync at all.
    synced.clear()
    assert hand_over_explorer(_pieces(cfg, None, tmp_path), 3) and len(synced) == 1
    synced.clear()
    hand_over_explorer(_pieces(cfg, _FakeDriver(tmp_path, starts=False), tmp_path), 3)
    assert synced == []
    # Nothing to hand over: no hook at all (no explorer, or samples to the last step).
    for no in (_cfg("schedule.t_mix=0"), _cfg("schedule.t_mix=9", "schedule.steps=4")):
        driver = _FakeDriver(tmp_path)
        assert not any(hand_over_explorer(_pieces(no, driver, tmp_path), s) for s in range(1, 5))
        assert driver.calls == []


def test_a_retired_explorer_at_a_step_that_needs_it_stops_the_run(tmp_path, synced) -> None:
    from megatron_s2l.run.hand_over import hand_over_explorer

    cfg = _cfg("schedule.t_mix=3", "schedule.steps=4")
    pieces = _pieces(cfg, _FakeDriver(tmp_path, retired=True), tmp_path)
    with pytest.raises(RuntimeError, match="step 2 has explorer samples"):
        hand_over_explorer(pieces, 2)  # an older checkpoint than the layout assumed was loaded
    assert hand_over_explorer(pieces, 3) is not None and hand_over_explorer(pieces, 4) == {}
