"""`s2l launch`: the multi-node layouts of the shipped configs, the per-node commands, the errors, and
that the trainer's emitted overrides parse with the project's config loader. No process is started."""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from megatron_s2l.cli import main
from megatron_s2l.config import load_config
from megatron_s2l.configio import apply_overrides, build, read_yaml
from megatron_s2l.launch.plan import (
    LaunchOptions,
    LaunchPlan,
    format_dry_run,
    learner_nodes,
    pack_engines,
    plan_launch,
)
from megatron_s2l.run.rundir import RunDir

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(ROOT.glob("yaml/qwen3-*.yaml")) + sorted(ROOT.glob("yaml/paper/*.yaml"))
CONFIG_8B = "yaml/qwen3-8b-s2l.yaml"
CONFIG_14B = "yaml/qwen3-14b-s2l.yaml"
HEADER_NODE = re.compile(r"^#\s+node (\d+): (.+)$")


def hosts(n: int) -> tuple[str, ...]:
    return tuple(f"n{i}" for i in range(n))


def make_plan(config: str, n_hosts: int, *overrides: str, **options) -> LaunchPlan:
    cfg = load_config(ROOT / config, list(overrides))
    return plan_launch(cfg, config, list(overrides), LaunchOptions(hosts=hosts(n_hosts), **options))


def header_layout(path: Path) -> set[tuple[int, str]]:
    """The `#   node K: ...` lines of a config's leading comment block."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return {(int(m[1]), m[2].strip()) for m in map(HEADER_NODE.match, lines) if m}


def flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def serve_urls(plan: LaunchPlan) -> dict[str, list[str]]:
    """pool -> URLs, read back from the engine nodes' `s2l serve` lines (port P + i for engine i)."""
    urls: dict[str, list[str]] = {}
    for node in plan.nodes:
        for argv in node.commands:
            if argv[:2] != ("s2l", "serve"):
                continue
            pool = "learner" if flag(argv, "--model") == plan_model(plan, "learner") else "explorer"
            port, count = int(flag(argv, "--port")), int(flag(argv, "--num-engines"))
            urls.setdefault(pool, []).extend(f"http://{node.host}:{port + i}" for i in range(count))
    return urls


def plan_model(plan: LaunchPlan, pool: str) -> str:
    return next(g.model for g in plan.serve_groups if g.pool == pool)


def trainer_urls(plan: LaunchPlan) -> dict[str, list[str]]:
    """pool -> URLs as the trainer's overrides give them (parsed the way configio parses them)."""
    data = apply_overrides({}, list(plan.train_overrides))
    return {
        pool: section["external_urls"]
        for pool, section in data["rollout"].items()
        if "external_urls" in section
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "yaml")))
def test_shipped_headers_state_the_launch_layout(path: Path) -> None:
    """Each 8B/14B and paper config says which nodes and GPUs run what, exactly as launch lays it out
    on as many hosts as the header names (a header out of step with the config fails here)."""
    stated = header_layout(path)
    assert stated, f"{path.name}: no `#   node K: ...` layout lines in the header"
    n_hosts = 1 + max(node for node, _ in stated)
    rel = str(path.relative_to(ROOT))
    assert f"s2l launch --config {rel}" in " ".join(path.read_text().split()).replace("# ", "")
    plan = make_plan(rel, n_hosts)
    assert stated == {(node.rank, part) for node in plan.nodes for part in node.parts}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "yaml")))
def test_shipped_layouts_are_consistent(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    n_hosts = 1 + max(node for node, _ in header_layout(path))
    plan = make_plan(rel, n_hosts)
    cfg = load_config(path)
    g = plan.options.gpus_per_node
    for node in plan.nodes:
        assert len(node.gpus) == len(set(node.gpus)) <= g, f"node {node.rank}: a GPU used twice"
        assert all(0 <= gpu < g for gpu in node.gpus)
        if node.role == "engines":
            gpus = [int(x) for argv in node.commands for x in flag(argv, "--gpus").split(",")]
            assert sorted(gpus) == list(node.gpus)  # no two `s2l serve` lines share a GPU
            for argv in node.commands:
                assert len(flag(argv, "--gpus").split(",")) == int(flag(argv, "--num-engines")) * int(
                    flag(argv, "--tp")
                )
                assert flag(argv, "--host") == "0.0.0.0" and flag(argv, "--api-key-env")
            ports = [e.port for e in plan.engines if e.node == node.rank]
            assert len(ports) == len(set(ports))
    # The URLs the trainer is given are exactly the engines the engine nodes start, pool by pool.
    assert trainer_urls(plan) == serve_urls(plan)
    assert sum(len(u) for u in trainer_urls(plan).values()) == len(plan.engines)
    assert len(trainer_urls(plan)["learner"]) == cfg.rollout.learner.num_engines
    ranks = sum(len(n.gpus) for n in plan.nodes if n.role == "learner")
    assert ranks == cfg.ranks


def test_two_node_8b_commands() -> None:
    plan = make_plan(CONFIG_8B, 2)
    (torchrun,) = plan.nodes[0].commands
    assert torchrun[:14] == (
        "torchrun",
        "--nnodes",
        "1",
        "--node-rank",
        "0",
        "--nproc-per-node",
        "8",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "n0:29500",
        "--shutdown-timeout",
        "900",
        "-m",
    )
    assert torchrun[14:18] == ("megatron_s2l.cli", "train", "--config", CONFIG_8B)
    learner, explorer = plan.nodes[1].commands
    assert flag(learner, "--model") == "/models/Qwen3-8B-Base"
    assert (flag(learner, "--gpus"), flag(learner, "--port"), flag(learner, "--tp")) == (
        "0,1,2,3,4,5",
        "30000",
        "2",
    )
    assert flag(explorer, "--model") == "/models/Qwen3-1.7B-Base"
    assert (flag(explorer, "--gpus"), flag(explorer, "--port"), flag(explorer, "--tp")) == (
        "6,7",
        "30003",
        "1",
    )
    assert trainer_urls(plan) == {
        "learner": ["http://n1:30000", "http://n1:30001", "http://n1:30002"],
        "explorer": ["http://n1:30003", "http://n1:30004"],
    }
    # The config names its API key variable: nothing to add for it.
    assert not any("api_key_env" in o for o in plan.train_overrides)
    assert flag(learner, "--mem-fraction-static") == "0.8"


def test_four_node_14b_commands() -> None:
    plan = make_plan(CONFIG_14B, 4)
    assert [n.role for n in plan.nodes] == ["learner", "engines", "engines", "engines"]
    assert flag(plan.nodes[0].commands[0], "--nproc-per-node") == "8"
    urls = trainer_urls(plan)
    assert urls["learner"] == [
        "http://n1:30000",
        "http://n1:30001",
        "http://n2:30000",
        "http://n2:30001",
        "http://n3:30000",
    ]
    assert urls["explorer"] == [f"http://n3:{p}" for p in range(30001, 30005)]
    (last_learner, explorer) = plan.nodes[3].commands
    assert (flag(last_learner, "--gpus"), flag(last_learner, "--num-engines")) == ("0,1,2,3", "1")
    assert (flag(explorer, "--gpus"), flag(explorer, "--port")) == ("4,5,6,7", "30001")


def test_learner_across_two_nodes() -> None:
    """ranks = 16: one torchrun per learner node, same rendezvous on the first host, engines after."""
    overrides = ("ranks=16", "rollout.learner.num_engines=6", "rollout.explorer.num_engines=4")
    plan = make_plan(CONFIG_8B, 4, *overrides, rdzv_port=29400, engine_port=31000)
    first, second = (n.commands[0] for n in plan.nodes[:2])
    for rank, argv in enumerate((first, second)):
        assert (flag(argv, "--nnodes"), flag(argv, "--node-rank")) == ("2", str(rank))
        assert flag(argv, "--rdzv-endpoint") == "n0:29400"
        assert argv[argv.index("--config") + 2 : argv.index("--config") + 5] == overrides  # user's first
    assert first[first.index("--config") :] == second[second.index("--config") :]
    assert trainer_urls(plan)["learner"][0] == "http://n2:31000"
    assert {e.host for e in plan.engines} == {"n2", "n3"}


def test_paper_config_gets_an_api_key_variable() -> None:
    """Engines on other nodes listen on 0.0.0.0 and need a key: a config naming none gets the launch
    default (or --api-key-env), on the serve lines and in the trainer's overrides alike."""
    config = "yaml/paper/qwen3-8b-1.7b-s2l.yaml"
    for options, var in (({}, "S2L_ENGINE_API_KEY"), ({"api_key_env": "MY_KEY"}, "MY_KEY")):
        plan = make_plan(config, 2, **options)
        assert {flag(a, "--api-key-env") for a in plan.nodes[1].commands} == {var}
        assert f"rollout.learner.engine.api_key_env={var}" in plan.train_overrides
        assert f"rollout.explorer.engine.api_key_env={var}" in plan.train_overrides
        assert load_config(ROOT / config, [o for o in plan.train_overrides if "api_key_env" in o])
    serve = make_plan(config, 2).nodes[1].commands[0]
    assert flag(serve, "--context-length") == "4608"


def test_grpo_starts_no_explorer() -> None:
    plan = make_plan("yaml/qwen3-8b-grpo.yaml", 2)
    assert {e.pool for e in plan.engines} == {"learner"}
    assert not any(o.startswith("rollout.explorer.external_urls") for o in plan.train_overrides)
    with pytest.raises(ValueError, match="needs 2 hosts"):
        make_plan("yaml/qwen3-8b-grpo.yaml", 3)


def test_extra_engine_flags_go_last() -> None:
    plan = make_plan(CONFIG_8B, 2, "rollout.explorer.engine.max_running_requests=64")
    explorer = plan.nodes[1].commands[1]
    assert explorer[explorer.index("--extra") :] == ("--extra", "--max-running-requests", "64")


def test_packing_widest_first() -> None:
    # Learner-first would put 3 TP-1 engines on node 0 and leave no room for the second TP-4 engine.
    placed = pack_engines({"learner": (3, 1), "explorer": (2, 4)}, 8)
    by_engine = {(pool, i): (node, gpus) for pool, i, node, gpus in placed}
    assert by_engine[("explorer", 0)] == (0, (0, 1, 2, 3)) and by_engine[("explorer", 1)] == (0, (4, 5, 6, 7))
    assert [by_engine[("learner", i)] for i in range(3)] == [(1, (0,)), (1, (1,)), (1, (2,))]
    with pytest.raises(ValueError, match=r"rollout.learner.engine.tp \(16\) is larger than a node"):
        pack_engines({"learner": (1, 16)}, 8)


def test_learner_node_rules() -> None:
    assert learner_nodes(8, 2, 8) == (1, 8)
    assert learner_nodes(4, 2, 8) == (1, 4)
    assert learner_nodes(32, 4, 8) == (4, 8)
    with pytest.raises(ValueError, match=r"tensor_parallel \(8\) is larger than a node \(4 GPUs\)"):
        learner_nodes(16, 8, 4)
    with pytest.raises(ValueError, match=r"ranks \(8\) must be a multiple of --gpus-per-node \(6\)"):
        learner_nodes(8, 2, 6)
    with pytest.raises(ValueError, match="straddle"):
        learner_nodes(12, 4, 6)


@pytest.mark.parametrize(
    ("overrides", "n_hosts", "options", "match"),
    [
        ((), 1, {}, r"needs 2 hosts of 8 GPUs \(1 for the learner's 8 ranks, 1 for the engines"),
        ((), 3, {}, r"needs 2 hosts .* 3 given"),
        ((), 3, {"gpus_per_node": 4}, r"needs 4 hosts of 4 GPUs \(2 for the learner's 8 ranks, 2 for"),
        ((), 2, {"gpus_per_node": 1}, r"tensor_parallel \(2\) is larger than a node \(1 GPUs\)"),
        ((), 4, {"gpus_per_node": 6}, r"ranks \(8\) must be a multiple of --gpus-per-node \(6\)"),
        (("sync.transport=tensor",), 2, {}, "sync.transport"),
        (('rollout.learner.external_urls=["http://x:1"]',), 2, {}, "sets the engines' URLs itself"),
    ],
)
def test_layout_errors(overrides: tuple[str, ...], n_hosts: int, options: dict, match: str) -> None:
    cfg = load_config(ROOT / CONFIG_8B, [o for o in overrides if "external_urls" not in o])
    with pytest.raises(ValueError, match=match):
        plan_launch(cfg, CONFIG_8B, list(overrides), LaunchOptions(hosts=hosts(n_hosts), **options))


def test_duplicate_host() -> None:
    cfg = load_config(ROOT / CONFIG_8B)
    with pytest.raises(ValueError, match="named twice"):
        plan_launch(cfg, CONFIG_8B, [], LaunchOptions(hosts=("n0", "n0")))


@dataclass(kw_only=True, slots=True)
class _PoolWithUrls:
    """A stand-in for `EnginePoolConfig` once it has `external_urls` (configio converts by type)."""

    external_urls: list[str] = field(default_factory=list)


def test_emitted_overrides_parse_with_the_config_loader() -> None:
    """The printed torchrun line, split as a shell splits it, gives overrides that configio reads
    back as lists of URL strings (a bare YAML flow list would break at the URLs' colons)."""
    plan = make_plan(CONFIG_8B, 2, "seed=3")
    line = next(x for x in format_dry_run(plan).splitlines() if x.startswith("torchrun"))
    argv = shlex.split(line)
    overrides = argv[argv.index("--config") + 2 :]
    assert overrides == ["seed=3", *plan.train_overrides]
    data = apply_overrides(read_yaml(ROOT / CONFIG_8B), overrides)
    for pool in ("learner", "explorer"):
        urls = build(_PoolWithUrls, {"external_urls": data["rollout"][pool]["external_urls"]}).external_urls
        assert urls == plan.urls(pool) and all(u.startswith("http://n1:300") for u in urls)
    assert data["seed"] == 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "yaml")))
def test_emitted_overrides_load_into_the_run_config(path: Path) -> None:
    """The trainer's command line of every shipped layout loads: URLs per pool in the order the
    engine nodes start them, and no local router in front of them."""
    rel = str(path.relative_to(ROOT))
    plan = make_plan(rel, 1 + max(node for node, _ in header_layout(path)))
    cfg = load_config(path, list(plan.train_overrides))
    for pool in {e.pool for e in plan.engines}:
        pool_cfg = getattr(cfg.rollout, pool)
        assert pool_cfg.external_urls == plan.urls(pool) == serve_urls(plan)[pool]
        assert pool_cfg.num_engines == len(plan.urls(pool)) and not pool_cfg.use_router
        assert pool_cfg.engine.api_key_env


def test_cli_dry_run_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["launch", "--config", str(ROOT / CONFIG_8B), "--hosts", "a,b", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    commands = [line for line in out if not line.startswith("#")]
    assert [c.split()[0] for c in commands] == ["torchrun", "s2l", "s2l"]
    assert "# node 1 (b): explorer engines 0-1 (TP 1): GPUs 6-7, ports 30003-30004" in out
    assert any("router" in line and "--request-timeout-secs 14400" in line for line in out)
    assert main([*argv[:3], "--hosts", "a", "--dry-run"]) == 2
    assert "needs 2 hosts" in capsys.readouterr().err
    assert main([*argv[:3], "--hosts", "a,b", "--node-rank", "2"]) == 2
    assert "--node-rank 2: the layout has nodes 0..1" in capsys.readouterr().err


def test_node_rank_runs_that_nodes_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """--node-rank K: a learner node waits for the engines, runs torchrun, then asks every engine node
    to shut down (whatever the trainer's status); an engine node runs its `s2l serve` lines."""
    from megatron_s2l.launch import cli as launch_cli

    calls: list[tuple] = []

    def fake_trainer(argv: list[str], kill_after_s: float) -> tuple[int, bool]:
        calls.append(("trainer", argv[:2], kill_after_s))
        return 3, False

    monkeypatch.setenv("S2L_ENGINE_API_KEY", "k")
    monkeypatch.setattr(launch_cli, "run_trainer", fake_trainer)
    monkeypatch.setattr(
        launch_cli,
        "run_engine_node",
        lambda cmds, options, key: calls.append(("engines", [c[:2] for c in cmds])),
    )
    monkeypatch.setattr(
        launch_cli, "wait_for_engines", lambda plan, s: calls.append(("wait", len(plan.engines)))
    )
    monkeypatch.setattr(
        launch_cli, "request_shutdown", lambda hosts, port, key: calls.append(("shutdown", hosts, port, key))
    )
    monkeypatch.setattr(launch_cli, "resolve_program", lambda name: f"/usr/bin/{name}")
    plan = make_plan(CONFIG_14B, 4)
    source = launch_cli.RunSource(CONFIG_14B, None, [], RunDir(Path("/nonexistent/run")))
    # The learner node ends with the trainer's status, after asking every engine node to stop.
    assert launch_cli.run_node(plan, 0, 60, source) == 3
    assert calls == [
        ("wait", 9),
        ("trainer", ["/usr/bin/torchrun", "--nnodes"], 960),
        ("shutdown", ["n1", "n2", "n3"], 29600, "k"),
    ]
    calls.clear()
    launch_cli.run_node(plan, 3, 60, source)
    assert calls == [("engines", [("s2l", "serve"), ("s2l", "serve")])]
    monkeypatch.delenv("S2L_ENGINE_API_KEY")
    with pytest.raises(ValueError, match="S2L_ENGINE_API_KEY is unset"):
        launch_cli.run_node(plan, 1, 60, source)
    monkeypatch.setenv("S2L_ENGINE_API_KEY", "-k")
    with pytest.raises(ValueError, match="key in S2L_ENGINE_API_KEY starts with '-'"):
        launch_cli.run_node(plan, 1, 60, source)


def save_run_config(run_dir: Path, config: str, overrides: list[str]) -> None:
    """RUN_DIR/config.yaml as `s2l train` writes it (the engine URLs of the job that ran it included)."""
    import yaml
    from megatron_s2l.configio import to_dict

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config(ROOT / config, overrides))))


def torchrun_line(out: str) -> list[str]:
    return shlex.split(next(line for line in out.splitlines() if line.startswith("torchrun")))


def test_resume_uses_the_runs_own_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume RUN_DIR: the layout and the trainer come from RUN_DIR/config.yaml (not a YAML file),
    the trainer continues the run, and this job's engine URLs replace the ones the run recorded."""
    run = tmp_path / "run"
    old = make_plan(CONFIG_8B, 2, "rollout.learner.num_engines=2")  # the run's own layout differs
    save_run_config(run, CONFIG_8B, ["rollout.learner.num_engines=2", *old.train_overrides])
    assert main(["launch", "--resume", str(run), "seed=5", "--hosts", "a,b", "--dry-run"]) == 0
    argv = torchrun_line(capsys.readouterr().out)
    assert "--config" not in argv
    tail = argv[argv.index("--resume") :]
    assert tail[:3] == ["--resume", str(run), "seed=5"]
    data = apply_overrides({}, tail[3:])
    assert data["rollout"]["learner"]["external_urls"] == ["http://b:30000", "http://b:30001"]
    assert main(["launch", "--resume", str(run), "name=x", "--hosts", "a,b", "--dry-run"]) == 2
    assert "a resumed run stays in" in capsys.readouterr().err
    assert main(["launch", "--resume", str(tmp_path / "none"), "--hosts", "a,b", "--dry-run"]) == 2
    assert "no run there" in capsys.readouterr().err


def test_resume_existing_resumes_only_a_run_that_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sbatch's --resume-existing: a new run starts from --config; once its run directory holds a
    run (a requeued job), the same command line continues it."""
    where = f"logging.run_dir={tmp_path}/{{name}}"
    argv = [
        "launch",
        "--config",
        str(ROOT / CONFIG_8B),
        where,
        "--resume-existing",
        "--hosts",
        "a,b",
        "--dry-run",
    ]
    assert main(argv) == 0
    first = torchrun_line(capsys.readouterr().out)
    assert first[first.index("train") + 1 : first.index("train") + 4] == [
        "--config",
        str(ROOT / CONFIG_8B),
        where,
    ]
    run = tmp_path / load_config(ROOT / CONFIG_8B).name
    save_run_config(run, CONFIG_8B, [where])
    assert main(argv) == 0
    out = capsys.readouterr().out
    again = torchrun_line(out)
    assert f"{run} holds a run: resuming it" in out
    assert again[again.index("train") + 1 : again.index("train") + 3] == ["--resume", str(run)]
    assert where not in again  # `s2l train --resume` refuses the run directory's keys


def test_shutdown_endpoint_needs_the_key() -> None:
    from megatron_s2l.launch.lifecycle import ShutdownServer, request_shutdown
    from megatron_s2l.net import find_free_port

    port = find_free_port()
    server = ShutdownServer("127.0.0.1", port, "secret")
    try:
        assert request_shutdown(["127.0.0.1"], port, "wrong") == ["127.0.0.1"]
        assert (
            httpx.post(
                f"http://127.0.0.1:{port}/other", headers={"Authorization": "Bearer secret"}
            ).status_code
            == 404
        )
        assert not server.requested.is_set()
        assert request_shutdown(["127.0.0.1"], port, "secret") == []
        assert server.requested.is_set()
    finally:
        server.close()
    assert request_shutdown(["127.0.0.1"], port, "secret", timeout_s=2) == ["127.0.0.1"]  # gone: reported


def test_supervise_stops_every_command_on_request_or_when_one_ends() -> None:
    from megatron_s2l.launch.cli import supervise

    started = time.monotonic()
    assert supervise([["sleep", "60"], ["sleep", "60"]], lambda: time.monotonic() - started > 1) == 0
    assert time.monotonic() - started < 10
    assert supervise([["sleep", "60"], ["sh", "-c", "exit 4"]], lambda: False) == 4
    assert time.monotonic() - started < 20


def test_engine_node_outlives_one_sigterm_for_the_shutdown_call() -> None:
    """Under SLURM every task gets the time-limit SIGTERM: the engines serve on (the trainer is
    finishing its step) until the call, a second SIGTERM, or the grace period."""
    import threading

    from megatron_s2l.launch.lifecycle import engine_node_stop

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        call = threading.Event()
        should_stop = engine_node_stop(call, term_grace_s=0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        assert not should_stop()
        time.sleep(0.7)
        assert should_stop()  # the grace period ran out
        call = threading.Event()
        should_stop = engine_node_stop(call, term_grace_s=60)
        os.kill(os.getpid(), signal.SIGTERM)
        assert not should_stop()
        call.set()  # the trainer's shutdown call
        assert should_stop()
        should_stop = engine_node_stop(threading.Event(), term_grace_s=60)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert should_stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_stop_signal_and_stopped_at(tmp_path: Path) -> None:
    from megatron_s2l.run.stop import StopSignal, stopped_at

    stop = StopSignal.install()
    try:
        assert not stop.agreed(1)
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
        assert stop.agreed(2)
    finally:
        stop.restore()
    run = RunDir(tmp_path)
    assert stopped_at(run, 3) is None  # no checkpoint: nothing to resume
    (run.checkpoints / "step_000002").mkdir(parents=True)
    (run.checkpoints / "latest").write_text("step_000002")
    assert stopped_at(run, 3) == 2 and stopped_at(run, 2) is None  # step 2 of 2: finished
