"""Engine server start-up: command line, child environment and config validation (no server started)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from megatron_s2l.rollout.config import EnginePoolConfig
from megatron_s2l.rollout.server import (
    CPU_SHIMS_DIR,
    EngineConfig,
    ManagedProcess,
    build_server_command,
    build_server_env,
)


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_cpu_command_has_the_cpu_flags_float32_and_loopback(monkeypatch) -> None:
    monkeypatch.setenv("S2L_TEST_KEY", "k3y")
    cmd = build_server_command(
        "/models/x", EngineConfig(device="cpu", api_key_env="S2L_TEST_KEY", context_length=512), 1234
    )
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    assert _flag(cmd, "--device") == "cpu" and _flag(cmd, "--attention-backend") == "torch_native"
    assert _flag(cmd, "--sampling-backend") == "pytorch" and "--disable-cuda-graph" in cmd
    assert _flag(cmd, "--dtype") == "float32"  # a half dtype would shift log-probs by ~4e-3
    assert _flag(cmd, "--host") == "127.0.0.1" and _flag(cmd, "--port") == "1234"
    assert "--api-key" not in cmd and "k3y" not in " ".join(cmd)  # the key goes in a file (--config)
    assert _flag(cmd, "--context-length") == "512"
    assert "--sleep-on-idle" in cmd and _flag(cmd, "--mem-fraction-static") == "0.5"


def test_gpu_command_has_no_cpu_flags_and_keeps_dtype() -> None:
    cmd = build_server_command(
        "/m", EngineConfig(device="cuda", dtype="bfloat16", tp=2, extra_args=["--x"]), 1
    )
    assert "--device" not in cmd and "--disable-cuda-graph" not in cmd and "--mem-fraction-static" not in cmd
    assert _flag(cmd, "--dtype") == "bfloat16" and _flag(cmd, "--tp-size") == "2" and cmd[-1] == "--x"


def test_cpu_stand_ins_only_on_the_cpu_server_path(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/already/there")
    cpu_env = build_server_env("cpu", ["/extra"])
    paths = cpu_env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == str(CPU_SHIMS_DIR) and "/extra" in paths and paths[-1] == "/already/there"
    assert cpu_env["SGLANG_USE_CPU_ENGINE"] == "1"
    gpu_env = build_server_env("cuda")
    assert str(CPU_SHIMS_DIR) not in gpu_env["PYTHONPATH"] and "SGLANG_USE_CPU_ENGINE" not in gpu_env
    assert str(CPU_SHIMS_DIR) not in os.environ.get("PYTHONPATH", "")  # this process is untouched


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 70000}, "port"),
        ({"tp": 0}, "tp"),
        ({"mem_fraction_static": 1.5}, "mem_fraction_static"),
        ({"max_total_tokens": 0}, "max_total_tokens"),
        ({"startup_timeout_s": 0}, "startup_timeout_s"),
    ],
)
def test_engine_config_names_the_bad_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(**kwargs)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "node7", "::"])
def test_network_host_without_an_api_key_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match=f"host '{host}' is not a loopback address: set api_key_env"):
        EngineConfig(host=host)


def test_api_key_comes_from_the_environment_and_never_enters_the_config(monkeypatch) -> None:
    from megatron_s2l.configio import to_dict

    engine = EngineConfig(host="0.0.0.0", api_key_env="S2L_TEST_KEY")
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert EngineConfig(host=host).api_key is None  # loopback needs no key
    with pytest.raises(ValueError, match="S2L_TEST_KEY is unset"):
        _ = engine.api_key
    monkeypatch.setenv("S2L_TEST_KEY", "s3cret-value")
    assert engine.api_key == "s3cret-value"
    assert "s3cret-value" not in repr(to_dict(engine)) and "s3cret-value" not in repr(engine)
    monkeypatch.setenv("S2L_TEST_KEY", "-s3cret")
    with pytest.raises(ValueError, match="key in S2L_TEST_KEY starts with '-'") as refused:
        _ = engine.api_key
    assert "s3cret" not in str(refused.value)


def test_the_keys_given_to_sglang_parse_back_and_a_leading_dash_would_not(tmp_path) -> None:
    """SGLang reads the engine's key file as the arguments `--api-key VALUE` (a key starting with
    '-' made the server exit at start-up in 1 of 64 runs); the router gets `--api-key=VALUE`."""
    from sglang.srt.server_args import prepare_server_args
    from sglang_router.launch_router import parse_router_args

    from megatron_s2l.rollout.router_launch import router_arguments
    from megatron_s2l.rollout.server import RUN_API_KEY, key_file_text

    def engine_parse(key: str):
        key_file = tmp_path / "key.yaml"
        key_file.write_text(key_file_text(key))
        return prepare_server_args(["--model-path", "/models/x", "--config", str(key_file)])

    assert engine_parse(RUN_API_KEY).api_key == RUN_API_KEY
    with pytest.raises(SystemExit):  # why `api_key_from_env` refuses such keys
        engine_parse("-" + RUN_API_KEY)
    for key in (RUN_API_KEY, "-" + RUN_API_KEY):
        key_file = tmp_path / "router-key.yaml"
        key_file.write_text(key_file_text(key))
        argv = router_arguments(["--api-key-file", str(key_file), "--worker-urls", "http://127.0.0.1:1"])
        assert key not in argv[argv.index("--worker-urls") :]
        args = parse_router_args(argv)
        assert args.api_key == key and args.worker_urls == ["http://127.0.0.1:1"]


def test_pool_config_validation_and_consecutive_ports(tmp_path) -> None:
    from megatron_s2l.rollout.pool import EnginePool

    with pytest.raises(ValueError, match="on_failure"):
        EnginePoolConfig(on_failure="ignore")
    engine = EngineConfig(device="cuda", port=30000)
    pool = EnginePool("learner", tmp_path / "m", EnginePoolConfig(num_engines=3, engine=engine), tmp_path)
    assert [server.port for server in pool.servers] == [30000, 30001, 30002]


def test_external_urls_replace_the_servers_and_are_validated(tmp_path) -> None:
    from megatron_s2l.rollout.pool import EnginePool
    from megatron_s2l.rollout.server import ExternalServer

    urls = ["http://node1:30000", "http://10.0.0.2:30001/"]
    config = EnginePoolConfig(external_urls=urls)
    assert config.num_engines == 2
    pool = EnginePool("learner", tmp_path / "m", config, tmp_path)
    assert all(isinstance(s, ExternalServer) for s in pool.servers)
    assert pool.urls == ["http://node1:30000", "http://10.0.0.2:30001"]
    pool.stop()  # not ours to stop: a no-op
    for bad, match in (
        ({"external_urls": ["node1:30000"]}, "not an http"),
        ({"external_urls": urls, "num_engines": 3}, "disagrees"),
        ({"external_urls": urls, "use_router": True}, "use_router"),
    ):
        with pytest.raises(ValueError, match=match):
            EnginePoolConfig(**bad)


def test_engine_gpus_never_overlap_and_skip_the_learners(monkeypatch, tmp_path) -> None:
    from megatron_s2l.rollout.config import RolloutConfig
    from megatron_s2l.rollout.engines import RolloutEngines
    from megatron_s2l.rollout.placement import plan_engine_gpus

    gpus = [str(i) for i in range(8)]
    assert plan_engine_gpus([[2, 2], [1, 1, 1]], gpus) == [[["0", "1"], ["2", "3"]], [["4"], ["5"], ["6"]]]
    with pytest.raises(ValueError, match="need 9 GPUs, 8 are free"):
        plan_engine_gpus([[4, 4], [1]], gpus)
    # 8 GPUs, 4 learner ranks on this node (local ranks use GPUs 0-3): engines get 4-7.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    learner = EnginePoolConfig(num_engines=1, engine=EngineConfig(device="cuda", tp=2))
    explorer = EnginePoolConfig(num_engines=2, engine=EngineConfig(device="cuda"))
    config = RolloutConfig(explorer=explorer, learner=learner, log_dir=str(tmp_path))
    engines = RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    gpus_of = lambda pool: [server.process.env["CUDA_VISIBLE_DEVICES"] for server in pool.servers]
    assert gpus_of(engines.learner) == ["4,5"] and gpus_of(engines.explorer) == ["6", "7"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "6")  # 2 GPUs left for 4 engine GPUs
    with pytest.raises(ValueError, match="external_urls"):
        RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    # Attached pools take no GPU here.
    attached = RolloutConfig(
        explorer=EnginePoolConfig(external_urls=["http://node1:30000"]),
        learner=learner,
        log_dir=str(tmp_path),
    )
    engines = RolloutEngines(attached, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    assert gpus_of(engines.learner) == ["6,7"] and engines.explorer.servers[0].url == "http://node1:30000"


def test_colocated_learner_engines_share_the_learner_gpus_and_the_explorer_gets_its_own(
    monkeypatch, tmp_path
) -> None:
    """rollout.colocate: learner engines of TP t on the next t of the learner ranks' GPUs (started
    with the memory saver and a /health that does not generate); the explorer after the learner's."""
    from megatron_s2l.rollout.colocate import MEMORY_SAVER_FLAG
    from megatron_s2l.rollout.config import RolloutConfig
    from megatron_s2l.rollout.engines import RolloutEngines

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "6")
    learner = EnginePoolConfig(num_engines=3, engine=EngineConfig(device="cuda", tp=2, extra_args=["--x"]))
    explorer = EnginePoolConfig(num_engines=2, engine=EngineConfig(device="cuda"))
    config = RolloutConfig(explorer=explorer, learner=learner, log_dir=str(tmp_path), colocate=True)
    engines = RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    gpus_of = lambda pool: [server.process.env["CUDA_VISIBLE_DEVICES"] for server in pool.servers]
    assert gpus_of(engines.learner) == ["0,1", "2,3", "4,5"] and gpus_of(engines.explorer) == ["6", "7"]
    for server in engines.learner.servers:
        assert server.process.cmd[-2:] == ["--x", MEMORY_SAVER_FLAG]
        assert server.process.env["SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION"] == "false"
    for server in engines.explorer.servers:  # never released: keeps SGLang's defaults
        assert MEMORY_SAVER_FLAG not in server.process.cmd
        assert "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION" not in server.process.env
    assert learner.engine.extra_args == ["--x"]  # the user's config is not changed
    # Without colocate the same learner pool would need 6 GPUs beside the learner's 6.
    with pytest.raises(ValueError, match="need 8 GPUs, 2 are free"):
        RolloutEngines(
            RolloutConfig(explorer=explorer, learner=learner, log_dir=str(tmp_path)),
            explorer_model=tmp_path / "e",
            learner_model=tmp_path / "l",
        )
    # More engine GPUs than learner ranks on this node: an error, not a spill onto the explorer's.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ValueError, match=r"rollout\.colocate: .*num_engines x tp must not exceed 4"):
        RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    # All 8 GPUs are learner ranks': a live explorer has nowhere to go; a cached one needs no GPU.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="external_urls"):
        RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    cached = RolloutConfig(
        learner=learner, log_dir=str(tmp_path), colocate=True, explorer_cache_path=str(tmp_path / "c.jsonl")
    )
    engines = RolloutEngines(cached, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    assert gpus_of(engines.learner) == ["0,1", "2,3", "4,5"] and engines.explorer is None


def test_a_port_in_use_is_refused_before_launch(tmp_path) -> None:
    """Another server on the port (an engine a killed run left behind) would answer the health check
    in this one's place: the port is checked before anything is launched."""
    import socket

    from megatron_s2l.rollout.server import EngineServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EngineServer("/models/x", EngineConfig(device="cpu", port=port), tmp_path / "e.log")
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
        assert time.monotonic() - started < 1.0 and server.pid is None  # nothing was launched


def test_stop_ends_the_whole_process_group(tmp_path) -> None:
    """A child's own children (SGLang's scheduler, detokenizer) go too, by the group's id."""
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('grandchild', 'started', flush=True); time.sleep(60)"
    )
    process = ManagedProcess("sleeper", [sys.executable, "-c", script], dict(os.environ), tmp_path / "log")
    process.spawn()
    deadline = time.monotonic() + 30
    while "grandchild started" not in process.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    group = process.pid
    assert len(_live_members(group)) == 2  # the child and its own child
    process.stop(timeout_s=5.0)
    assert not process.is_running()
    while _live_members(group) and time.monotonic() < deadline:  # SIGKILLed, maybe not yet exited
        time.sleep(0.05)
    assert _live_members(group) == []


def _live_members(group: int) -> list[int]:
    """PIDs in process group `group` that are not zombies (a zombie waits for init to reap it)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat_file:
                    stat = stat_file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == group and stat[0] != "Z":
                members.append(int(entry))
    return members


def test_plan_cpu_cores_gives_disjoint_near_equal_sets_and_shares_when_short() -> None:
    from megatron_s2l.rollout.placement import plan_cpu_cores

    plan = plan_cpu_cores([1, 2], cores=[0, 1, 2, 3, 4, 5, 6])
    assert plan == [[frozenset({0, 1, 2})], [frozenset({3, 4}), frozenset({5, 6})]]
    assert plan_cpu_cores([1, 1], cores=[4, 9]) == [[frozenset({4})], [frozenset({9})]]
    # More engines than cores: one core each, round-robin, none left without a core.
    assert plan_cpu_cores([2, 3], cores=[0, 1]) == [
        [frozenset({0}), frozenset({1})],
        [frozenset({0}), frozenset({1}), frozenset({0})],
    ]
    for engines in ([1], [3, 5], [16, 16]):
        sets = [s for pool in plan_cpu_cores(engines, cores=list(range(32))) for s in pool]
        assert len(sets) == sum(engines) and set().union(*sets) == set(range(32))
        assert sum(map(len, sets)) == 32  # disjoint when there are enough cores
    with pytest.raises(ValueError, match="no CPU cores"):
        plan_cpu_cores([1], cores=[])


def test_a_pinned_child_and_its_children_run_on_their_cores_with_one_thread_each(tmp_path) -> None:
    core = min(os.sched_getaffinity(0))
    env = build_server_env("cpu", cpu_cores=frozenset({core}))
    assert env["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in build_server_env("cpu")
    script = (
        "import os, subprocess, sys, time; "
        "cores = 'print(*sorted(os.sched_getaffinity(0)))'; "
        "subprocess.run([sys.executable, '-c', 'import os; ' + cores]); exec(cores); "
        "print('threads', os.environ['OMP_NUM_THREADS'], flush=True); time.sleep(60)"
    )
    process = ManagedProcess(
        "pinned", [sys.executable, "-c", script], env, tmp_path / "log", cpu_cores=frozenset({core})
    )
    process.spawn()
    deadline = time.monotonic() + 30
    while "threads 1" not in process.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.stop(timeout_s=5.0)
    log = process.log_tail()
    assert log.endswith(f"\n{core}\n{core}\nthreads 1"), log  # grandchild, child, threads
    assert os.sched_getaffinity(0) != {core} or os.cpu_count() == 1  # the parent keeps its cores


def test_run_engines_on_cpu_get_disjoint_cores(tmp_path) -> None:
    from megatron_s2l.rollout.config import RolloutConfig
    from megatron_s2l.rollout.engines import RolloutEngines

    pool = EnginePoolConfig(num_engines=1, engine=EngineConfig(device="cpu"))
    config = RolloutConfig(explorer=pool, learner=pool, log_dir=str(tmp_path))
    engines = RolloutEngines(config, explorer_model=tmp_path / "e", learner_model=tmp_path / "l")
    explorer_cores = engines.explorer.servers[0].process.cpu_cores
    learner_cores = engines.learner.servers[0].process.cpu_cores
    assert explorer_cores and learner_cores
    if len(os.sched_getaffinity(0)) >= 2:
        assert not explorer_cores & learner_cores
    alone = RolloutEngines(config, explorer_model=None, learner_model=tmp_path / "l")  # GRPO
    assert alone.learner.servers[0].process.cpu_cores == frozenset(os.sched_getaffinity(0))
