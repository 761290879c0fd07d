"""`s2l serve`: start SGLang server(s) for one model, as the trainer would, and keep them up.

    s2l serve --model HF_DIR [--port P] [--tp N] [--num-engines N --router] [--api-key-env VAR]
              [--gpus 0,1,2,3]

Server i listens on port P + i (P = 0: free ports) and, on GPUs, runs on its own `--tp` GPUs, taken
in order from `--gpus` (default: every GPU this process sees). On CPU the CPU flags, float32 and the
stand-ins of megatron_s2l/rollout/cpu_shims are applied (see server.py), each server on its own cores.
Prints each server's URL (and the router's) once healthy; Ctrl-C or SIGTERM stops them
all by their own process groups.
"""

from __future__ import annotations

import argparse
import signal
import threading

from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig
from megatron_s2l.rollout.placement import plan_cpu_cores, plan_engine_gpus, visible_gpus
from megatron_s2l.rollout.pool import EnginePool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="HTTP port of server 0, i: port + i (0: free)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size per server")
    parser.add_argument("--num-engines", type=int, default=1, help="servers to start")
    parser.add_argument("--router", action="store_true", help="also start sglang-router in front")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU ids to use (default: all visible)")
    parser.add_argument("--dtype", default="auto", help="SGLang --dtype (auto: float32 on CPU)")
    parser.add_argument(
        "--api-key-env", default="", metavar="VAR", help="environment variable holding the API key"
    )
    parser.add_argument("--mem-fraction-static", type=float, default=None)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--context-length", type=int, default=None)
    parser.add_argument("--log-dir", default="logs/serve", help="one log file per server")
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="more launch_server flags (not --host, --port, --api-key, --admin-api-key, --config)",
    )


def run(args: argparse.Namespace) -> int:
    engine = EngineConfig(
        host=args.host,
        port=args.port,
        tp=args.tp,
        device=args.device,
        dtype=args.dtype,
        api_key_env=args.api_key_env,
        mem_fraction_static=args.mem_fraction_static,
        max_total_tokens=args.max_total_tokens,
        context_length=args.context_length,
        extra_args=list(args.extra),
    )
    config = EnginePoolConfig(num_engines=args.num_engines, engine=engine, use_router=args.router)
    cores = gpus = None
    if engine.resolved_device() == "cpu":
        cores = plan_cpu_cores([args.num_engines])[0]
    else:
        visible = args.gpus.split(",") if args.gpus else visible_gpus()
        gpus = plan_engine_gpus([[args.tp] * args.num_engines], visible)[0]
    # Servers for other processes: without --api-key-env they take no key (loopback only: the config
    # refuses a network host without one), since no client would know a generated one.
    pool = EnginePool("serve", args.model, config, args.log_dir, cores, gpus, generate_key=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        seconds = pool.start()
        for server, took in zip(pool.servers, seconds, strict=True):
            log = server.process.log_path
            where = f", GPUs {','.join(server.gpu_ids)}" if server.gpu_ids else ""
            print(
                f"{server.name}: {server.url} (pid {server.pid}{where}, healthy after {took:.1f} s, "
                f"log {log})"
            )
        if pool.router is not None:
            print(f"router: {pool.router.url} (pid {pool.router.pid})")
        if pool.api_key is None:
            print("note: no API key (--api-key-env): any local user can generate and load weights here")
        print("serving; Ctrl-C stops", flush=True)
        while not stop.wait(1.0):
            dead = [s.name for s in pool.servers if not s.process.is_running()]
            if dead:
                print(f"server(s) exited: {dead}; see their logs")
                return 1
    finally:
        pool.stop()
    return 0
