"""`s2l launch`: the per-node commands of a multi-node run (learner under torchrun, engine nodes
running `s2l serve`), printed or run on this node.

    s2l launch --config yaml/qwen3-8b-s2l.yaml --hosts n0,n1 --dry-run     # print every node's commands
    s2l launch --config yaml/qwen3-8b-s2l.yaml --hosts n0,n1 --node-rank 1 # run node 1's (SLURM_NODEID)

Every node gets the same arguments (config, overrides, --hosts in the same order); the layout is
computed the same way everywhere (megatron_s2l/launch/plan.py). A learner node waits for every
engine's /health, then execs torchrun; an engine node execs its one `s2l serve`, or, with two pools
on the node, runs both and stops both when one ends or on SIGTERM. docs/deploy.md walks through it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from megatron_s2l.configio import ConfigError
from megatron_s2l.launch.plan import (
    DEFAULT_API_KEY_ENV,
    LaunchOptions,
    LaunchPlan,
    format_dry_run,
    plan_launch,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML run config (yaml/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (also passed to the trainer)")
    parser.add_argument("--hosts", required=True, help="the nodes' host names, comma-separated, node 0 first")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--rdzv-port", type=int, default=29500, help="torchrun rendezvous port on node 0")
    parser.add_argument("--engine-port", type=int, default=30000, help="first engine port per engine node")
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
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print every node's commands")
    mode.add_argument("--node-rank", type=int, metavar="K", help="run node K's commands here")


def build_plan(args: argparse.Namespace) -> LaunchPlan:
    """The layout of `args.config` (with its overrides) on `args.hosts`."""
    from megatron_s2l.config import load_config

    cfg = load_config(args.config, args.overrides)
    options = LaunchOptions(
        hosts=tuple(h.strip() for h in args.hosts.split(",")),
        gpus_per_node=args.gpus_per_node,
        rdzv_port=args.rdzv_port,
        engine_port=args.engine_port,
        api_key_env=args.api_key_env,
    )
    return plan_launch(cfg, str(args.config), list(args.overrides), options)


def run(args: argparse.Namespace) -> int:
    plan = build_plan(args)
    if args.dry_run:
        print(format_dry_run(plan))
        return 0
    if not 0 <= args.node_rank < len(plan.nodes):
        raise ConfigError(f"--node-rank {args.node_rank}: the layout has nodes 0..{len(plan.nodes) - 1}")
    return run_node(plan, args.node_rank, args.engine_wait_s)


def run_node(plan: LaunchPlan, rank: int, engine_wait_s: float) -> int:
    """Run node `rank`'s commands in this process (exec) or as supervised children."""
    node = plan.nodes[rank]
    for var in sorted(set(plan.api_key_envs.values())):
        if not os.environ.get(var):
            raise ConfigError(f"the engines' API key variable {var} is unset or empty on {node.host}")
    print(f"s2l launch: node {rank} ({node.host}): {node.summary}", flush=True)
    if node.role == "learner" and engine_wait_s > 0:
        wait_for_engines(plan, engine_wait_s)
    if len(node.commands) == 1:
        argv = node.commands[0]
        os.execv(resolve_program(argv[0]), list(argv))
    return supervise([[resolve_program(argv[0]), *argv[1:]] for argv in node.commands])


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


def supervise(commands: list[list[str]], stop_timeout_s: float = 60.0) -> int:
    """Run `commands` side by side until one ends or SIGTERM/SIGINT arrives, then stop the others
    (SIGTERM to each, SIGKILL to its process group after `stop_timeout_s`). Returns the exit status
    of the first that ended on its own (0 when a signal stopped them)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen] = []
    status = 0
    try:
        for argv in commands:  # own sessions: a terminal's Ctrl-C reaches them only through us
            procs.append(subprocess.Popen(argv, start_new_session=True))
        while not stop.wait(1.0):
            ended = [(p, p.poll()) for p in procs if p.poll() is not None]
            if ended:
                proc, status = ended[0]
                print(f"s2l launch: {proc.args[0]} (pid {proc.pid}) exited with {status}; stopping the rest")
                break
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
