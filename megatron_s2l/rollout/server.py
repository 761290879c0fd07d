"""Start, watch and stop one SGLang server (`python -m sglang.launch_server`) or an `sglang-router`.

    server = EngineServer(model_path, EngineConfig(port=0), log_path="logs/learner0.log")
    server.start()            # returns once GET /health answers 200
    ...
    server.stop()             # SIGTERM to the server's own process group, SIGKILL after a grace

Each server runs in its own session (process group = its PID), so stopping it stops its scheduler and
detokenizer children too, and nothing else. The child also gets PR_SET_PDEATHSIG, and the parent
stops all servers it started at exit, so no server outlives the trainer.

On CPU (no CUDA in this process) this module sets SGLANG_USE_CPU_ENGINE=1, the CPU flags of
DESIGN.md 3.2 and float32, and puts `cpu_shims/` (see its README) plus the directory that holds the
server-only torchvision in front of that child's PYTHONPATH only.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from megatron_s2l.net import find_free_port, port_is_free
from megatron_s2l.rollout.config import EngineConfig
from megatron_s2l.rollout.http import http_get_json, http_get_ok

CPU_SHIMS_DIR = Path(__file__).with_name("cpu_shims")
# NOTE: PyPI's torchvision (needed by SGLang's imports) breaks `transformers` in any process that
# has it, so it is installed apart from the venv's site-packages and put on the server's path only:
#   python -m pip install --no-deps --target .venv/sglang-cpu-site "torchvision==0.28.*"
DEFAULT_SERVER_SITE_DIR = Path(sys.prefix) / "sglang-cpu-site"

_PR_SET_PDEATHSIG = 1
_LIVE_PROCESSES: set[ManagedProcess] = set()
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2l-spawner")


def build_server_command(model_path: str, config: EngineConfig, port: int) -> list[str]:
    """The `sglang.launch_server` command line for `config` on its resolved device."""
    device = config.resolved_device()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path)]
    cmd += ["--host", config.host, "--port", str(port), "--tp-size", str(config.tp)]
    on_cpu = device == "cpu"
    cpu_defaults = {"mem_fraction_static": 0.05, "max_total_tokens": 8192, "max_running_requests": 32}
    if on_cpu:
        cmd += ["--device", "cpu", "--attention-backend", "torch_native", "--sampling-backend", "pytorch"]
        cmd += ["--disable-cuda-graph"]
    dtype = "float32" if on_cpu and config.dtype == "auto" else config.dtype
    cmd += ["--dtype", dtype]
    for name in ("mem_fraction_static", "max_total_tokens", "context_length", "max_running_requests"):
        value = getattr(config, name)
        if value is None and on_cpu:
            value = cpu_defaults.get(name)
        if value is not None:
            cmd += ["--" + name.replace("_", "-"), str(value)]
    if config.api_key is not None:
        cmd += ["--api-key", config.api_key]
    if config.sleep_on_idle:
        cmd.append("--sleep-on-idle")
    return cmd + list(config.extra_args)


def build_server_env(
    device: Literal["cpu", "cuda"],
    site_dirs: list[str] | None = None,
    cpu_cores: frozenset[int] | None = None,
    gpu_ids: list[str] | None = None,
) -> dict[str, str]:
    """A server child's environment: on CPU, the CPU engine switch and the stand-ins on PYTHONPATH,
    and as many OpenMP threads as it has cores when it is given its own (`cpu_cores`); on CUDA, only
    its own GPUs visible (`gpu_ids`, physical ids: SGLang takes the first GPUs it sees)."""
    env = dict(os.environ)
    if device == "cuda" and gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    paths = list(site_dirs or [])
    if device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"  # without it SGLang's CPU path imports vllm
        if cpu_cores:
            env["OMP_NUM_THREADS"] = str(len(cpu_cores))
        paths = [str(CPU_SHIMS_DIR), *paths]
        if DEFAULT_SERVER_SITE_DIR.is_dir():
            paths.append(str(DEFAULT_SERVER_SITE_DIR))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    return env


def check_cpu_server_site(site_dirs: list[str]) -> None:
    """Fail with the fix when no torchvision is reachable for a CPU server (SGLang imports it)."""
    candidates = [DEFAULT_SERVER_SITE_DIR, *map(Path, site_dirs)]
    if any((d / "torchvision").is_dir() for d in candidates) or importlib.util.find_spec("torchvision"):
        return
    raise RuntimeError(
        "a CPU SGLang server needs torchvision on its path, kept out of the venv (it breaks "
        "transformers there); install it with:\n"
        f"  {sys.executable} -m pip install --no-deps --target {DEFAULT_SERVER_SITE_DIR} "
        '"torchvision==0.28.*"'
    )


def _setup_child(cpu_cores: frozenset[int] | None) -> None:
    """Runs in the child between fork and exec: SIGTERM it when the parent dies; pin it (and so
    every process it starts) to `cpu_cores` when given."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if cpu_cores:
        os.sched_setaffinity(0, cpu_cores)


class ManagedProcess:
    """A child process in its own process group, logged to a file, stopped by its own PID; pinned to
    `cpu_cores` when given."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        log_path: str | Path,
        cpu_cores: frozenset[int] | None = None,
    ) -> None:
        self.name, self.cmd, self.env = name, cmd, env
        self.log_path = Path(log_path)
        self.cpu_cores = cpu_cores
        self.proc: subprocess.Popen | None = None
        self.log_start = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.log_start = log.tell()
            # NOTE: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
            # process; a restart from a short-lived worker thread (asyncio.to_thread) would kill the new
            # server moments later. So every child is forked by one thread that lives as long as we do.
            self.proc = _SPAWNER.submit(
                subprocess.Popen,
                self.cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=functools.partial(_setup_child, self.cpu_cores),
            ).result()
        _LIVE_PROCESSES.add(self)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output_since_spawn(self) -> str:
        """What the current child has written to the log (earlier runs appended before it)."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the tests use this to simulate a crash)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout_s`; reap the leader."""
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)
        # The leader may be gone while its scheduler children linger: SIGKILL the group regardless.
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)
        _LIVE_PROCESSES.discard(self)


def _stop_all_at_exit() -> None:
    for process in list(_LIVE_PROCESSES):
        process.stop(timeout_s=5.0)


atexit.register(_stop_all_at_exit)


class PortInUseError(RuntimeError):
    """A server's port is taken (before launch, or between the check and the server's bind)."""


_BIND_FAILED = "address already in use"
"""What uvicorn logs when its port is taken (`[Errno 98] error while attempting to bind`)."""
_PORT_TRIES = 3


class _HttpProcess:
    """Shared start/wait/stop of a managed HTTP server process."""

    name: str
    host: str
    port: int
    api_key: str | None
    startup_timeout_s: float
    stop_timeout_s: float
    process: ManagedProcess
    health_path = "/health"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> float:
        """Launch and block until healthy; returns the seconds it took."""
        if not port_is_free(self.host, self.port):
            # Checked before launch: otherwise another server on that port (an engine a killed run
            # left behind) would answer the health check, and this one would be taken for it.
            raise PortInUseError(
                f"{self.name}: port {self.port} on {self.host} is already in use (another engine, "
                "e.g. of a run that was killed?); free it or use port 0 (pick a free one)"
            )
        started = time.monotonic()
        self.process.spawn()
        self.wait_healthy(self.startup_timeout_s)
        return time.monotonic() - started

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.proc.returncode} before it was healthy; "
                    f"log {self.process.log_path}:\n{self.process.log_tail()}"
                )
            if self.is_healthy():
                return
            if _BIND_FAILED in self.process.output_since_spawn():
                # The port was free when checked, then taken: uvicorn gives up, the server does not exit.
                self.stop()
                raise PortInUseError(
                    f"{self.name}: port {self.port} on {self.host} was taken before the server bound it; "
                    f"log {self.process.log_path}"
                )
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"{self.name} not healthy after {timeout_s:.0f} s; log {self.process.log_path}:\n"
            f"{self.process.log_tail()}"
        )

    def is_healthy(self, timeout_s: float = 5.0) -> bool:
        return self.process.is_running() and http_get_ok(self.url + self.health_path, self.api_key, timeout_s)

    def stop(self) -> None:
        self.process.stop(self.stop_timeout_s)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EngineServer(_HttpProcess):
    """One SGLang server process serving `model_path` (on CPU, on `cpu_cores` when given: see
    `megatron_s2l.rollout.placement`)."""

    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig,
        log_path: str | Path,
        name: str = "",
        port: int = 0,
        cpu_cores: frozenset[int] | None = None,
        gpu_ids: list[str] | None = None,
    ) -> None:
        """`port`: 0 takes `config.port` (0 there too: a free one). `cpu_cores` (CPU) / `gpu_ids`
        (CUDA): the server's own."""
        self.model_path = str(model_path)
        self.config = config
        self.host, self.api_key = config.host, config.api_key
        self.auto_port = not (port or config.port)
        """The port was picked here: one taken before the server binds it is replaced."""
        self.port = port or config.port or find_free_port(config.host)
        self.gpu_ids = gpu_ids
        self.startup_timeout_s, self.stop_timeout_s = config.startup_timeout_s, config.stop_timeout_s
        self.name = name or f"sglang[{Path(self.model_path).name}:{self.port}]"
        cmd = build_server_command(self.model_path, config, self.port)
        if config.resolved_device() == "cpu":
            check_cpu_server_site(config.server_site_dirs)
        device = config.resolved_device()
        cpu_cores = cpu_cores if device == "cpu" else None
        env = build_server_env(device, config.server_site_dirs, cpu_cores, gpu_ids)
        if "--enable-memory-saver" in cmd:
            # SGLang's /health generates one token by default; on a server that has released its
            # memory (colocated mode: megatron_s2l.rollout.colocate) that would run on unmapped memory.
            env["SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION"] = "false"
        self.process = ManagedProcess(self.name, cmd, env, log_path, cpu_cores)

    def start(self) -> float:
        """Launch and block until healthy; returns the seconds it took. A port picked here that
        another process takes first (between the pick and the server's bind) is replaced by another
        free one, up to `_PORT_TRIES` times."""
        for _ in range(_PORT_TRIES - 1):
            try:
                return super().start()
            except PortInUseError:
                if not self.auto_port:
                    raise
                self.port = find_free_port(self.host)
                self.process.cmd = build_server_command(self.model_path, self.config, self.port)
        return super().start()

    def restart(self) -> float:
        """Stop (if needed) and start again on the same port (a picked port, if taken meanwhile, is
        replaced), from the original model path."""
        self.stop()
        return self.start()


class RouterServer(_HttpProcess):
    """An `sglang-router` in front of several engine servers (round-robin or cache-aware)."""

    # /health answers as soon as the router listens; /readiness once it has a healthy worker.
    health_path = "/readiness"

    def __init__(
        self,
        worker_urls: list[str],
        log_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        policy: Literal["cache_aware", "round_robin"] = "cache_aware",
        api_key: str | None = None,
        device: Literal["cpu", "cuda"] = "cpu",
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.host, self.api_key = host, api_key
        self.port = port or find_free_port(host)
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.name = f"sglang-router[{self.port}]"
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", host, "--port", str(self.port)]
        cmd += ["--policy", policy, "--worker-urls", *worker_urls]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        # The router imports SGLang's Python side too, which needs the same stand-ins on CPU.
        env = build_server_env(device)
        self.process = ManagedProcess(self.name, cmd, env, log_path)


class ExternalServer:
    """A server started elsewhere (`s2l serve` on another node, or a router in front of several):
    attached by URL, health-checked, never started or stopped from here. `restart` waits for it to
    come back (whatever runs it restarts it) instead of starting it."""

    def __init__(self, url: str, model_path: str | Path, config: EngineConfig, name: str) -> None:
        self.url, self.model_path, self.config, self.name = url.rstrip("/"), str(model_path), config, name
        self.api_key = config.api_key
        self.pid: int | None = None

    def start(self) -> float:
        """Wait until healthy, then check that it serves this pool's model at this pool's TP size;
        returns the seconds waited."""
        started = time.monotonic()
        self.wait_healthy(self.config.startup_timeout_s)
        info = http_get_json(self.url + "/model_info", self.api_key)
        served = Path(str(info.get("model_path", ""))).name
        if served != Path(self.model_path).name:
            raise ValueError(
                f"{self.name} ({self.url}) serves {info.get('model_path')!r}, not {self.model_path!r} "
                "(the servers are compared by the model directory's name: are two pools' URLs swapped?)"
            )
        tp = http_get_json(self.url + "/server_info", self.api_key).get("tp_size", self.config.tp)
        if tp != self.config.tp:
            raise ValueError(
                f"{self.name} ({self.url}) runs at TP {tp}, the config says engine.tp = {self.config.tp} "
                "(the weight sync's group sizes follow the config)"
            )
        return time.monotonic() - started

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no healthy server at {self.url} after {timeout_s:.0f} s "
                    "(it is started elsewhere: check that process, the address and the API key)"
                )
            time.sleep(1.0)

    def is_healthy(self, timeout_s: float = 5.0) -> bool:
        return http_get_ok(self.url + "/health", self.api_key, timeout_s)

    def restart(self) -> float:
        """Wait for the server to answer again (it comes back with its model path's weights)."""
        return self.start()

    def stop(self) -> None:
        """Not ours to stop."""


Server = EngineServer | ExternalServer
"""A pool's server: started here, or attached by URL."""
