"""The CPU and GPU layout set by the config: `learner.cpu_cores`, `rollout.<pool>.cpu_cores` and
`rollout.explorer.placement` (docs/rollout.md, "Layout: cores and GPUs"). Core plans against layouts
worked out by hand, every bad input's error (naming its key), the shared explorer's GPU blocks on
fake GPU lists, the servers' environment, and the learner ranks' shares. No server starts: starting
and stopping one is recorded instead. The one test that pins real processes is the last."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from megatron_s2l.config import load_config
from megatron_s2l.configio import ConfigError
from megatron_s2l.learner.parallel import spawn_local_ranks
from megatron_s2l.rollout import engines as engines_module
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.rollout.placement import learner_rank_cores, plan_engine_cores, share_gpus
from megatron_s2l.rollout.server import CPU_SHIMS_DIR, EngineServer, build_server_env
from megatron_s2l.train_cli import check_layout

ROOT = Path(__file__).resolve().parents[2]
CPU, GPU = EngineConfig(device="cpu"), EngineConfig(device="cuda", mem_fraction_static=0.4)


def _pool(engines: int = 1, cores: list[int] | None = None, *, engine=CPU, shared: bool = False):
    return EnginePoolConfig(
        num_engines=engines, engine=engine, cpu_cores=cores, placement="shared" if shared else "dedicated"
    )


def _sets(*cores: tuple[int, ...]) -> list[frozenset[int]]:
    return [frozenset(c) for c in cores]


# --- plan_engine_cores against hand-worked layouts ---------------------------------------------


@pytest.mark.parametrize(
    ("pools", "available", "reserved", "expected"),
    [
        # Nothing set: both pools over the process's cores, learner first (as before these keys).
        (
            {"learner": _pool(), "explorer": _pool()},
            range(4),
            (),
            {"learner": [(0, 1)], "explorer": [(2, 3)]},
        ),
        # GRPO: the one pool takes every core.
        ({"learner": _pool()}, range(4), (), {"learner": [(0, 1, 2, 3)]}),
        # Learner ranks on core 0: the engines share 1-3 (3 cores, 2 engines: the first gets the spare).
        (
            {"learner": _pool(), "explorer": _pool()},
            range(4),
            (0,),
            {"learner": [(1, 2)], "explorer": [(3,)]},
        ),
        # Several pools, uneven: ranks 0-1, explorer listed on 6, two learner engines on what is left.
        (
            {"learner": _pool(2), "explorer": _pool(1, [6])},
            range(7),
            (0, 1),
            {"learner": [(2, 3), (4, 5)], "explorer": [(6,)]},
        ),
        # A list split unevenly over its engines; the unset explorer gets the cores no list takes.
        (
            {"learner": _pool(2, [3, 4, 5, 6, 7]), "explorer": _pool()},
            range(8),
            (0,),
            {"learner": [(3, 4, 5), (6, 7)], "explorer": [(1, 2)]},
        ),
        # More engines than cores: round-robin, none without a core.
        (
            {"learner": _pool(1, [0]), "explorer": _pool(3, [5])},
            range(8),
            (),
            {"learner": [(0,)], "explorer": [(5,)] * 3},
        ),
        (
            {"learner": _pool(2), "explorer": _pool(1)},
            [4, 9],
            (),
            {"learner": [(4,), (9,)], "explorer": [(4,)]},
        ),
        # Shared: the explorer's engines split the learner engines' cores (here all of 1-3).
        (
            {"learner": _pool(), "explorer": _pool(2, shared=True)},
            range(4),
            (0,),
            {"learner": [(1, 2, 3)], "explorer": [(1, 2), (3,)]},
        ),
        # Shared over two learner engines: one explorer engine on all their cores.
        (
            {"learner": _pool(2, [2, 3, 4]), "explorer": _pool(1, shared=True)},
            range(6),
            (0, 1),
            {"learner": [(2, 3), (4,)], "explorer": [(2, 3, 4)]},
        ),
        # Shared with a list of its own, within the learner engines' cores.
        (
            {"learner": _pool(1, [2, 3]), "explorer": _pool(1, [3], shared=True)},
            range(4),
            (),
            {"learner": [(2, 3)], "explorer": [(3,)]},
        ),
        # The demo's 2 cores: ranks on 0, the learner engine on 1, the explorer shares it.
        (
            {"learner": _pool(), "explorer": _pool(shared=True)},
            range(2),
            (0,),
            {"learner": [(1,)], "explorer": [(1,)]},
        ),
        # GPU engines' servers are not split: each runs on every core the lists leave.
        (
            {"learner": _pool(2, engine=GPU), "explorer": _pool(1, engine=GPU)},
            range(4),
            (0, 1),
            {"learner": [(2, 3)] * 2, "explorer": [(2, 3)]},
        ),
    ],
)
def test_engine_cores_follow_the_lists(pools, available, reserved, expected) -> None:
    plan = plan_engine_cores(pools, available, reserved)
    assert plan == {name: _sets(*sets) for name, sets in expected.items()}
    assert plan == plan_engine_cores(pools, available, reserved)  # the same plan twice
    for name, sets in plan.items():
        assert not set().union(*sets) & set(reserved), name  # never on the learner ranks' cores


def test_engine_cores_at_scale_are_disjoint_and_use_every_free_core() -> None:
    """128 cores, ranks on 0-63: 7, 16, 128 and 200 dedicated engines over the other 64 cores. Every
    free core is used; up to 64 engines the sets are disjoint and within one core of each other
    (more engines than cores: one core each, round-robin)."""
    for learner, explorer in ((3, 4), (6, 10), (64, 64), (100, 100)):
        plan = plan_engine_cores(
            {"learner": _pool(learner), "explorer": _pool(explorer)}, range(128), range(64)
        )
        sets = plan["learner"] + plan["explorer"]
        assert len(sets) == learner + explorer and set().union(*sets) == set(range(64, 128))
        if learner + explorer <= 64:
            assert sum(map(len, sets)) == 64 and max(map(len, sets)) - min(map(len, sets)) <= 1


# --- every bad input, each naming its key --------------------------------------------------------


def _cfg(*overrides: str):
    cpu = ("rollout.learner.engine.device=cpu", "rollout.explorer.engine.device=cpu")
    return load_config(ROOT / "yaml/demo-cpu.yaml", [*cpu, *overrides])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learner.cpu_cores=[]"], r"learner: cpu_cores is empty"),
        (["rollout.explorer.cpu_cores=[]"], r"rollout.explorer: cpu_cores is empty"),
        (
            ["rollout.learner.cpu_cores=[1, 2, 1]"],
            r"rollout.learner: cpu_cores lists core\(s\) \[1\] more than once",
        ),
        (["learner.cpu_cores=[0, 0, 3, 3]"], r"learner: cpu_cores lists core\(s\) \[0, 3\] more than once"),
        (["rollout.explorer.cpu_cores=[-1]"], r"rollout.explorer: cpu_cores: -1 is not a core number"),
        (
            ['rollout.explorer.external_urls=["http://n1:30000"]', "rollout.explorer.cpu_cores=[1]"],
            r"rollout.explorer: cpu_cores places the engines started here",
        ),
        (
            ["learner.cpu_cores=[0, 1]", "rollout.learner.cpu_cores=[1, 2]"],
            r"learner.cpu_cores and rollout.learner.cpu_cores both list core\(s\) \[1\]",
        ),
        (
            [
                "learner.cpu_cores=[0, 1]",
                "rollout.explorer.cpu_cores=[0]",
                "rollout.explorer.placement=shared",
            ],
            r"learner.cpu_cores and rollout.explorer.cpu_cores both list core\(s\) \[0\]",
        ),
        (
            ["rollout.learner.cpu_cores=[2, 3]", "rollout.explorer.cpu_cores=[3, 4]"],
            r"rollout.learner.cpu_cores and rollout.explorer.cpu_cores both list core\(s\) \[3\]",
        ),
        (["rollout.learner.placement=shared"], r"rollout.learner.placement: only the explorer's engines"),
        (
            ["rollout.explorer.placement=shared", "rollout.colocate=true"],
            r"rollout.explorer.placement shared with rollout.colocate",
        ),
        (
            ["rollout.explorer.placement=shared", 'rollout.learner.external_urls=["http://n1:30000"]'],
            r"rollout.explorer.placement shared: rollout.learner.external_urls",
        ),
        (
            ["rollout.explorer.placement=shared", 'rollout.explorer.external_urls=["http://n1:30000"]'],
            r"rollout.explorer.placement shared: rollout.explorer.external_urls",
        ),
    ],
)
def test_config_errors_name_the_key(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(*overrides)


def test_a_shared_explorer_may_list_the_learner_engines_cores() -> None:
    cfg = _cfg(
        "rollout.learner.cpu_cores=[2, 3]",
        "rollout.explorer.cpu_cores=[3]",
        "rollout.explorer.placement=shared",
    )
    assert cfg.rollout.explorer.cpu_cores == [3]


@pytest.mark.parametrize(
    ("overrides", "available", "message"),
    [
        (
            ["learner.cpu_cores=[0, 5, 7]"],
            {0, 1, 2, 3},
            r"learner.cpu_cores: core\(s\) \[5, 7\] not in this process's CPU affinity",
        ),
        (["rollout.explorer.cpu_cores=[9]"], {0, 1}, r"rollout.explorer.cpu_cores: core\(s\) \[9\] not in"),
        (
            ["rollout.learner.cpu_cores=[4]"],
            {0, 1, 2, 3},
            r"rollout.learner.cpu_cores: core\(s\) \[4\] not in",
        ),
        # The learner ranks take both cores: nothing for the engines.
        (
            ["learner.cpu_cores=[0, 1]"],
            {0, 1},
            r"rollout.learner.cpu_cores: no core is left for the learner engines",
        ),
        (
            ["learner.cpu_cores=[0]", "rollout.learner.cpu_cores=[1]"],
            {0, 1},
            r"rollout.explorer.cpu_cores: no core is left for the explorer engines",
        ),
        (
            [
                "rollout.learner.cpu_cores=[1]",
                "rollout.explorer.cpu_cores=[0, 1]",
                "rollout.explorer.placement=shared",
            ],
            {0, 1},
            r"rollout.explorer.cpu_cores: with rollout.explorer.placement shared .* \[0\] are not theirs",
        ),
        (
            ["rollout.explorer.placement=shared", "rollout.explorer.engine.device=cuda"],
            {0, 1},
            r"rollout.explorer.placement: shared .* the explorer's run on cuda and the learner's on cpu",
        ),
        (
            ["rollout.learner.engine.device=cuda", "rollout.learner.cpu_cores=[1]"],
            {0, 1},
            r"rollout.learner.cpu_cores: the learner engines run on GPUs",
        ),
    ],
)
def test_preflight_checks_the_layout_against_the_machine(overrides, available, message) -> None:
    cfg = _cfg(*overrides)
    with pytest.raises(ConfigError, match=message):
        check_layout(cfg, available)


def test_preflight_passes_a_layout_that_fits_and_ignores_an_explorer_that_does_not_run() -> None:
    check_layout(_cfg("learner.cpu_cores=[0]", "rollout.explorer.placement=shared"), {0, 1})
    check_layout(_cfg("learner.cpu_cores=[0]"), {0, 1})  # the engines round-robin on core 1
    # GRPO (t_mix 0): the explorer's keys place nothing.
    check_layout(
        _cfg("schedule.t_mix=0", "rollout.explorer.placement=shared", "rollout.explorer.engine.device=cuda"),
        {0, 1},
    )


def _gpu(engines: int, tp: int, fraction: float | None = 0.4, *, shared: bool = False) -> EnginePoolConfig:
    engine = EngineConfig(device="cuda", tp=tp, mem_fraction_static=fraction)
    return _pool(engines, engine=engine, shared=shared)


@pytest.mark.parametrize(
    ("learner", "explorer", "message"),
    [
        (
            _gpu(1, 2),
            _gpu(1, 4, shared=True),
            r"rollout.explorer.engine.tp \(4\) must divide rollout.learner.engine.tp \(2\)",
        ),
        (_gpu(2, 4), _gpu(1, 3, shared=True), r"rollout.explorer.engine.tp \(3\) must divide"),
        (
            _gpu(2, 2),
            _gpu(5, 1, shared=True),
            r"rollout.explorer.num_engines \(5\): .* learner engines' 4 GPUs hold 4 explorer",
        ),
        (
            _gpu(2, 2),
            _gpu(3, 2, shared=True),
            r"rollout.explorer.num_engines \(3\): .* hold 2 explorer engines of TP 2",
        ),
        (
            _gpu(1, 2, None),
            _gpu(1, 1, shared=True),
            r"^rollout.learner.engine.mem_fraction_static: must be set",
        ),
        (
            _gpu(1, 2),
            _gpu(1, 1, None, shared=True),
            r"^rollout.explorer.engine.mem_fraction_static: must be set",
        ),
        (
            _gpu(1, 2, None),
            _gpu(1, 1, None, shared=True),
            r"rollout.learner.engine.mem_fraction_static and rollout.explorer.engine.mem_fraction_static",
        ),
    ],
)
def test_shared_gpu_errors(tmp_path, learner, explorer, message) -> None:
    config = RolloutConfig(learner=learner, explorer=explorer, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match=message):
        RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l", learner_ranks=0)


# --- the shared explorer's GPUs -----------------------------------------------------------------


def test_share_gpus_spreads_the_explorer_over_the_learner_engines() -> None:
    blocks = [["4", "5"], ["6", "7"]]
    assert share_gpus(blocks, 1, 2) == [["4"], ["6"]]  # one per learner engine first
    assert share_gpus(blocks, 1, 4) == [["4"], ["6"], ["5"], ["7"]]
    assert share_gpus(blocks, 2, 2) == blocks  # equal TP: the same blocks
    assert share_gpus([["GPU-a", "GPU-b", "GPU-c", "GPU-d"]], 2, 2) == [
        ["GPU-a", "GPU-b"],
        ["GPU-c", "GPU-d"],
    ]


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[str, str]]:
    """Starting and stopping a server is recorded, not run; a start takes a moment, so that starts
    made side by side overlap in the record."""
    monkeypatch.setattr(engines_module, "check_same_tokenizer", lambda *paths: None)
    events: list[tuple[str, str]] = []

    def start(server: EngineServer) -> float:
        events.append(("start", server.name))
        time.sleep(0.2)
        events.append(("up", server.name))
        return 0.2

    monkeypatch.setattr(EngineServer, "start", start)
    monkeypatch.setattr(EngineServer, "stop", lambda server: events.append(("stop", server.name)))
    return events


def _engines(
    tmp_path: Path, learner: EnginePoolConfig, explorer: EnginePoolConfig, **kwargs
) -> RolloutEngines:
    config = RolloutConfig(learner=learner, explorer=explorer, log_dir=str(tmp_path))
    return RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l", **kwargs)


def _gpus_of(pool) -> list[str]:
    return [server.process.env["CUDA_VISIBLE_DEVICES"] for server in pool.servers]


def test_a_shared_explorer_runs_on_the_learner_engines_gpus_and_starts_after_them(
    tmp_path, monkeypatch, recorded
) -> None:
    # 8 GPUs, 4 learner ranks (GPUs 0-3): two TP-2 learner engines on 4-7, the explorer on theirs.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(8))))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    shared = _gpu(4, 1, shared=True)
    engines = _engines(tmp_path, _gpu(2, 2), shared, cores={0, 1, 2, 3}, learner_cores=[0, 1])
    assert _gpus_of(engines.learner) == ["4,5", "6,7"]
    assert _gpus_of(engines.explorer) == ["4", "6", "5", "7"]
    # Their processes run on the cores the learner ranks leave; no OpenMP settings on GPU.
    for server in engines.learner.servers + engines.explorer.servers:
        assert server.process.cpu_cores == frozenset({2, 3})
        assert "OMP_WAIT_POLICY" not in server.process.env and "OMP_NUM_THREADS" not in server.process.env
    engines.start()
    learner_up = max(
        i for i, (what, name) in enumerate(recorded) if what == "up" and name.startswith("learner")
    )
    explorer_start = min(i for i, (what, name) in enumerate(recorded) if name.startswith("explorer"))
    assert learner_up < explorer_start, recorded  # SGLang sizes memory from what is free at its start
    assert engines.startup_seconds == {"learner": [0.2, 0.2], "explorer": [0.2] * 4}
    # Dedicated, the explorer's 4 GPUs would not fit even beside 2 learner ranks.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="need 8 GPUs, 6 are free"):
        _engines(tmp_path, _gpu(2, 2), _gpu(4, 1))
    # Dedicated pools start side by side (each start overlaps the other's).
    recorded.clear()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    _engines(tmp_path, _gpu(1, 2), _gpu(2, 1)).start()
    assert [what for what, _ in recorded[:2]] == ["start", "start"], recorded


def test_shared_gpu_hand_over_stops_the_explorer_and_starts_no_successor(
    tmp_path, monkeypatch, recorded
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    shared = _gpu(2, 1, shared=True)
    engines = _engines(tmp_path, _gpu(1, 2), shared).start()
    urls = engines.explorer.urls
    recorded.clear()
    done = engines.hand_over_explorer()
    assert (
        done.stopped == urls
        and done.started == []
        and recorded == [("stop", "explorer0"), ("stop", "explorer1")]
    )
    assert engines.explorer is None and _gpus_of(engines.learner) == ["2,3"]
    # Resumed after the hand-over: the learner's engine alone, on its own GPUs.
    resumed = _engines(tmp_path, _gpu(1, 2), shared, explorer_retired=True)
    assert resumed.explorer is None and _gpus_of(resumed.learner) == ["2,3"]


# --- CPU: the servers' cores and environment ---------------------------------------------------------


def test_server_environment_adds_only_the_cpu_settings(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/already/there")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = build_server_env("cpu", ["/extra"], cpu_cores=frozenset({2, 3, 5}), passive_wait=True)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "3"
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[:2] == [str(CPU_SHIMS_DIR), "/extra"] and paths[-1] == "/already/there"
    changed = {key for key in env.keys() | os.environ.keys() if env.get(key) != os.environ.get(key)}
    assert changed == {"OMP_WAIT_POLICY", "OMP_NUM_THREADS", "PYTHONPATH", "SGLANG_USE_CPU_ENGINE"}
    dedicated = build_server_env("cpu", cpu_cores=frozenset({2}))
    assert "OMP_WAIT_POLICY" not in dedicated and dedicated["OMP_NUM_THREADS"] == "1"
    gpu = build_server_env("cuda", cpu_cores=frozenset({2}), gpu_ids=["3"], passive_wait=True)
    assert (
        "OMP_WAIT_POLICY" not in gpu and "OMP_NUM_THREADS" not in gpu and gpu["CUDA_VISIBLE_DEVICES"] == "3"
    )


def _cores_of(pool) -> list[frozenset[int]]:
    return [server.process.cpu_cores for server in pool.servers]


def _waits(pool) -> list[str | None]:
    return [server.process.env.get("OMP_WAIT_POLICY") for server in pool.servers]


def test_shared_cpu_engines_run_on_the_learner_engines_cores_waiting_passively(
    tmp_path, monkeypatch, recorded
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cores = {0, 1, 2, 3}
    shared = _engines(tmp_path, _pool(), _pool(2, shared=True), cores=cores, learner_cores=[0])
    assert _cores_of(shared.learner) == _sets((1, 2, 3)) and _cores_of(shared.explorer) == _sets((1, 2), (3,))
    assert _waits(shared.learner) == ["PASSIVE"] and _waits(shared.explorer) == ["PASSIVE", "PASSIVE"]
    assert [s.process.env["OMP_NUM_THREADS"] for s in shared.explorer.servers] == ["2", "1"]
    dedicated = _engines(tmp_path, _pool(), _pool(2), cores=cores, learner_cores=[0])
    assert _cores_of(dedicated.learner) == _sets((1,)) and _cores_of(dedicated.explorer) == _sets((2,), (3,))
    assert _waits(dedicated.learner) == [None] and _waits(dedicated.explorer) == [None, None]
    # The hand-over stops the explorer's engines and starts none: the learner's has their cores.
    shared.start()
    recorded.clear()
    done = shared.hand_over_explorer()
    assert done.started == [] and recorded == [("stop", "explorer0"), ("stop", "explorer1")]
    assert _cores_of(shared.learner) == _sets((1, 2, 3)) and shared.explorer is None
    # Resumed after it: the learner engine alone, on the same cores, without the passive wait
    # (no other pool's engine shares them any more).
    resumed = _engines(
        tmp_path, _pool(), _pool(2, shared=True), cores=cores, learner_cores=[0], explorer_retired=True
    )
    assert _cores_of(resumed.learner) == _sets((1, 2, 3)) and _waits(resumed.learner) == [None]
    # Twice in a row: the same plan.
    again = _engines(tmp_path, _pool(), _pool(2, shared=True), cores=cores, learner_cores=[0])
    assert _cores_of(again.learner) == _sets((1, 2, 3)) and _cores_of(again.explorer) == _sets((1, 2), (3,))


def test_a_pinned_driver_places_its_engines_on_the_cores_it_had_before(tmp_path, monkeypatch) -> None:
    """The driver is learner rank 0: once pinned to its share, its affinity mask is that share; the
    engines are placed on the mask it had before (`cores`), less the learner ranks' list."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})  # rank 0's share after the pin
    engines = _engines(tmp_path, _pool(), _pool(), cores={0, 1, 2, 3}, learner_cores=[0, 1])
    assert _cores_of(engines.learner) == _sets((2,)) and _cores_of(engines.explorer) == _sets((3,))


# --- the learner ranks' shares ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "ranks", "shares"),
    [
        ([0], 1, [(0,)]),
        (list(range(8)), 3, [(0, 1, 2), (3, 4, 5), (6, 7)]),  # the first ranks take the spare cores
        ([10, 11, 12, 13], 2, [(10, 11), (12, 13)]),
        ([4, 5], 4, [(4,), (5,), (4,), (5,)]),  # more ranks than cores: round-robin
        (list(range(64)), 8, [tuple(range(8 * r, 8 * r + 8)) for r in range(8)]),
    ],
)
def test_learner_rank_shares(cores, ranks, shares) -> None:
    assert [learner_rank_cores(cores, rank, ranks) for rank in range(ranks)] == _sets(*shares)


def _report_pin(cores: list[int], out_dir: str) -> None:
    """A learner rank as `s2l train` spawns it: a thread already running, then the pin."""
    import torch

    from megatron_s2l.learner.parallel import pin_learner_rank

    stop = threading.Event()
    early = threading.Thread(target=stop.wait)
    early.start()
    before = pin_learner_rank(cores)
    report = {
        "before": sorted(before),
        "after": sorted(os.sched_getaffinity(0)),
        "early_thread": sorted(os.sched_getaffinity(early.native_id)),
        "torch_threads": torch.get_num_threads(),
    }
    stop.set()
    early.join()
    Path(out_dir, f"rank{os.environ['LOCAL_RANK']}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_spawned_learner_ranks_pin_themselves_to_their_share(tmp_path) -> None:
    available = sorted(os.sched_getaffinity(0))
    cores = available[:2]
    spawn_local_ranks(_report_pin, 2, cores, str(tmp_path))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    shares = [[cores[0]], [cores[1 % len(cores)]]]  # by hand: one core each (the same one on 1 core)
    for report, share in zip(reports, shares, strict=True):
        assert report["before"] == available and report["after"] == share
        assert report["early_thread"] == share and report["torch_threads"] == 1
    assert os.sched_getaffinity(0) == set(available)  # the launching process is untouched


def test_s2l_launch_refuses_a_shared_explorer() -> None:
    """`s2l launch` attaches the trainer to engines on nodes of their own (external_urls), which a
    shared explorer cannot use: refused with the key, before any command is printed."""
    from megatron_s2l.launch.plan import LaunchOptions, plan_launch

    cfg = load_config(ROOT / "yaml/qwen3-8b-s2l.yaml", ["rollout.explorer.placement=shared"])
    with pytest.raises(ValueError, match=r"rollout.explorer.placement: shared .* s2l launch"):
        plan_launch(cfg, "yaml/qwen3-8b-s2l.yaml", [], LaunchOptions(hosts=("n0", "n1")))
