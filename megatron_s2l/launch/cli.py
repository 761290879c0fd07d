"""`s2l launch`: the per-node commands of a multi-node run (learner under torchrun, engine nodes
running `s2l serve`), printed or run on this node.

    s2l launch --config yaml/qwen3-8b-s2l.yaml --hosts n0,n1 --dry-run     # print every node's commands
    s2l launch --config yaml/qwen3-8b-s2l.yaml --hosts n0,n1 --node-rank 1 # run node 1's (SLURM_NODEID)
    s2l launch --resume runs/qwen3-8b-s2l --hosts n0,n1 --node-rank 0      # continue a run

Every node gets the same arguments (config, overrides, --hosts in the same order); the layout is
computed the same way everywhere (megatron_s2l/launch/plan.py). A learner node waits for every
engine's /health, runs torchrun, and when it ends asks the engine nodes to shut down; an engine node
runs its `s2l serve` command(s) until that call (megatron_s2l/launch/lifecycle.py). Exit status: the
trainer's; 75 when SIGTERM stopped it with a checkpoint to resume from. docs/deploy.md walks through it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from megatron_s2l.configio import ConfigError
from megatron_s2l.launch.lifecycle import (
    ShutdownServer,
    engine_node_stop,
    request_shutdown,
    run_trainer,
)
from megatron_s2l.launch.plan import (
    DEFAULT_API_KEY_ENV,
    LaunchOptions,
    LaunchPlan,
    format_dry_run,
    plan_launch,
)
from megatron_s2l.rollout.config import api_key_from_env
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.stop import STOPPED_EXIT_CODE, stopped_at


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML run config (yaml/*.yaml)")
    source.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its config.yaml"
    )
    parser.add_argument(
        "--resume-existing",
        action="store_true",
        help="with --config: when the config's run directory holds a run already, continue it (requeue)",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (also passed to the trainer)")
    parser.add_argument("--hosts", required=True, help="the nodes' host names, comma-separated, node 0 first")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--rdzv-port", type=int, default=29500, help="torchrun rendezvous port on node 0")
    parser.add_argument("--engine-port", type=int, default=30000, help="first engine port per engine node")
    parser.add_argument(
        "--control-port",
        type=int,
        default=29600,
        help="engine nodes: port of the shutdown call the learner node makes when training ends (29600)",
    )
    parser.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        metavar="VAR",
        help=f"API key variable for pools whose engine.api_key_env is empty (default {DEFAULT_API_KEY_ENV})",
    )
    parser.add_argument(
        "--engine-wait-s",
        type=float,
        default=1800.0,
        help="learner nodes: wait this long for every engine's /health before torchrun (0: do not wait)",
    )
    parser.add_argument(
        "--stop-timeout-s",
        type=int,
        default=900,
        help="after SIGTERM: how long the trainer may take to finish its step and checkpoint before it "
        "is killed (torchrun --shutdown-timeout), and how long engine nodes wait for the shutdown call",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print every node's commands")
    mode.add_argument("--node-rank", type=int, metavar="K", help="run node K's commands here")


RESUME_FIXED_KEYS = ("name", "logging.run_dir")
"""Overrides a resume cannot take (`s2l train --resume` refuses them): the run directory is given."""


@dataclass(frozen=True, slots=True)
class RunSource:
    """Where the trainer's config comes from: a YAML file, or a run directory to continue."""

    config_path: str
    """The file the plan is computed from (RUN_DIR/config.yaml when resuming)."""
    resume_dir: str | None
    overrides: list[str]
    run_dir: RunDir


def resolve_source(args: argparse.Namespace) -> RunSource:
    """--config, --resume RUN_DIR, or --config with --resume-existing (resume when the run exists)."""
    from megatron_s2l.config import load_config

    overrides = list(args.overrides)
    resume = args.resume
    if resume is None and args.resume_existing:
        existing = RunDir.for_config(load_config(args.config, overrides))
        if existing.config_file.is_file():
            print(f"s2l launch: {existing.root} holds a run: resuming it", flush=True)
            resume = str(existing.root)
            overrides = [o for o in overrides if o.split("=", 1)[0] not in RESUME_FIXED_KEYS]
    if resume is None:
        return RunSource(args.config, None, overrides, RunDir.for_config(load_config(args.config, overrides)))
    run_dir = RunDir(Path(resume))
    if not run_dir.config_file.is_file():
        raise ConfigError(f"--resume {resume}: no run there ({run_dir.config_file} is missing)")
    fixed = [o for o in overrides if o.split("=", 1)[0] in RESUME_FIXED_KEYS]
    if fixed:
        raise ConfigError(f"--resume: {', '.join(fixed)}: a resumed run stays in {resume} under its name")
    return RunSource(str(run_dir.config_file), resume, overrides, run_dir)


def build_plan(args: argparse.Namespace, source: RunSource | None = None) -> LaunchPlan:
    """The layout of the run (config or run directory, with its overrides) on `args.hosts`."""
    from megatron_s2l.config import load_config

    source = source or resolve_source(args)
    cfg = load_config(source.config_path, source.overrides)
    options = LaunchOptions(
        hosts=tuple(h.strip() for h in args.hosts.split(",")),
        gpus_per_node=args.gpus_per_node,
        rdzv_port=args.rdzv_port,
        engine_port=args.engine_port,
        control_port=args.control_port,
        stop_timeout_s=args.stop_timeout_s,
        api_key_env=args.api_key_env,
    )
    return plan_launch(cfg, source.config_path, source.overrides, options, resume_dir=source.resume_dir)


def run(args: argparse.Namespace) -> int:
    if args.resume_existing and args.config is None:
        raise ConfigError("--resume-existing goes with --config (the run directory comes from the config)")
    source = resolve_source(args)
    plan = build_plan(args, source)
    if args.dry_run:
        print(format_dry_run(plan))
        return 0
    if not 0 <= args.node_rank < len(plan.nodes):
        raise ConfigError(f"--node-rank {args.node_rank}: the layout has nodes 0..{len(plan.nodes) - 1}")
    return run_node(plan, args.node_rank, args.engine_wait_s, source)


def run_node(plan: LaunchPlan, rank: int, engine_wait_s: float, source: RunSource) -> int:
    """Run node `rank`'s commands as supervised children; the learner node ends the engine nodes."""
    node = plan.nodes[rank]
    for var in sorted(set(plan.api_key_envs.values())):
        try:
            api_key_from_env(var)
        except ValueError as e:
            raise ConfigError(f"the engines' {e} on {node.host}") from None
    control_key = os.environ[plan.api_key_envs["learner"]]  # every node has it: checked above
    print(f"s2l launch: node {rank} ({node.host}): {node.summary}", flush=True)
    if node.role == "engines":
        return run_engine_node(node.commands, plan.options, control_key)
    engine_hosts = list(dict.fromkeys(e.host for e in plan.engines))
    try:
        if engine_wait_s > 0:
            wait_for_engines(plan, engine_wait_s)
        argv = node.commands[0]
        status, signalled = run_trainer(
            [resolve_program(argv[0]), *argv[1:]], plan.options.stop_timeout_s + 60
        )
    finally:  # success or failure: the engine nodes end with the trainer
        request_shutdown(engine_hosts, plan.options.control_port, control_key)
    steps = _steps_of(source)
    if signalled and stopped_at(source.run_dir, steps) is not None:
        print(f"s2l launch: stopped on SIGTERM with a checkpoint; continue: --resume {source.run_dir.root}")
        return STOPPED_EXIT_CODE
    print(f"s2l launch: the trainer exited with {status}", flush=True)
    return status if status >= 0 else 128 - status  # killed by signal N: 128 + N, as a shell reports it


def _steps_of(source: RunSource) -> int:
    from megatron_s2l.config import load_config

    return load_config(source.config_path, source.overrides).schedule.steps


def run_engine_node(commands: tuple[tuple[str, ...], ...], options: LaunchOptions, control_key: str) -> int:
    """The node's `s2l serve` command(s) until the learner node's shutdown call (or SIGINT)."""
    server = ShutdownServer("0.0.0.0", options.control_port, control_key)
    print(f"s2l launch: shutdown endpoint on port {options.control_port}", flush=True)
    try:
        should_stop = engine_node_stop(server.requested, float(options.stop_timeout_s))
        return supervise([[resolve_program(argv[0]), *argv[1:]] for argv in commands], should_stop)
    finally:
        server.close()


def resolve_program(name: str) -> str:
    """`name` on PATH, else beside this Python (a virtual environment's bin/ need not be on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise ConfigError(f"{name}: not on PATH nor in {Path(sys.executable).parent}")
    return found


def wait_for_engines(plan: LaunchPlan, timeout_s: float, poll_s: float = 5.0) -> None:
    """Block until every engine answers /health: under SLURM all nodes start at once and the engines
    take minutes to load, while the trainer checks them once at start-up."""
    from megatron_s2l.rollout.http import http_get_ok

    pending = {e.url: os.environ.get(plan.api_key_envs[e.pool]) for e in plan.engines}
    deadline = time.monotonic() + timeout_s
    print(f"s2l launch: waiting up to {timeout_s:.0f} s for {len(pending)} engines' /health", flush=True)
    while pending:
        pending = {url: key for url, key in pending.items() if not http_get_ok(f"{url}/health", key)}
        if not pending:
            break
        if time.monotonic() > deadline:
            raise ConfigError(
                f"engines not healthy after {timeout_s:.0f} s: {', '.join(pending)} (see the engine nodes' "
                "logs/serve/; a firewall or a wrong --hosts name also looks like this)"
            )
        time.sleep(poll_s)
    print("s2l launch: every engine is healthy", flush=True)


def supervise(
    commands: list[list[str]], should_stop: Callable[[], bool], stop_timeout_s: float = 60.0
) -> int:
    """Run `commands` side by side until one ends or `should_stop()`, then stop the others (SIGTERM
    to each, SIGKILL to its process group after `stop_timeout_s`). Returns the exit status of the
    first that ended on its own (0 when `should_stop` ended them)."""
    procs: list[subprocess.Popen] = []
    status = 0
    try:
        for argv in commands:  # own sessions: a terminal's Ctrl-C reaches them only through us
            procs.append(subprocess.Popen(argv, start_new_session=True))
        while not should_stop():
            ended = [(p, p.poll()) for p in procs if p.poll() is not None]
            if ended:
                proc, status = ended[0]
                print(f"s2l launch: {proc.args[0]} (pid {proc.pid}) exited with {status}; stopping the rest")
                break
            time.sleep(1.0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return status if status >= 0 else 128 - status
