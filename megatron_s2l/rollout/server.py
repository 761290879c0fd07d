"""Start, watch and stop one SGLang server (`python -m sglang.launch_server`) or an `sglang-router`.

    server = EngineServer(model_path, EngineConfig(port=0), log_path="logs/learner0.log")
    server.start()            # returns once GET /health answers 200
    ...
    server.stop()             # SIGTERM to the server's own process group, SIGKILL after a grace

Each server runs in its own session (process group = its PID), so stopping it stops its scheduler and
detokenizer children too, and nothing else. The child also gets PR_SET_PDEATHSIG, and the parent
stops all servers it started at exit, so no server outlives the trainer.

Engines prove who they are: every server started here has an API key (the config's `api_key_env`,
else a random key of this process, `RUN_API_KEY`), passed in a 0600 file under a 0700 directory
(SGLang's `--config FILE`, YAML `api-key: ...`; the router through `router_launch.py`), never on a
command line; the child's output reaches its log (0600) through a thread here that replaces the
key. The server is trusted once the socket listening on its port belongs to its own process group
(`/proc/net/tcp*`, `/proc/<pid>/fd`) and it accepts the key and refuses another (`/model_info` is
authenticated).

On CPU (no CUDA in this process) this module sets SGLANG_USE_CPU_ENGINE=1, the CPU flags of
docs/design.md 3.2 and float32, and puts `cpu_shims/` (see its README) plus the directory that holds the
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
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from megatron_s2l.net import find_free_port, port_is_free
from megatron_s2l.rollout.config import EngineConfig
from megatron_s2l.rollout.http import http_get_json, http_get_ok, http_get_status

CPU_SHIMS_DIR = Path(__file__).with_name("cpu_shims")
# NOTE: PyPI's torchvision (needed by SGLang's imports) breaks `transformers` in any process that
# has it, so it is installed apart from the venv's site-packages and put on the server's path only:
#   python -m pip install --no-deps --target .venv/sglang-cpu-site "torchvision==0.28.*"
DEFAULT_SERVER_SITE_DIR = Path(sys.prefix) / "sglang-cpu-site"

_PR_SET_PDEATHSIG = 1
# NOTE: resolved once here, not in the child between fork and exec: dlopen there (`ctypes.CDLL`)
# takes locks a thread of the parent (CUDA, NCCL, the loader) may have held at fork, and hangs.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_SIGTERM = int(signal.SIGTERM)

RUN_API_KEY = secrets.token_hex(32)
"""The API key of the servers this process starts whose config names no `api_key_env`: loopback
engines get a key too, so that a process that takes an engine's port cannot pass for it. Hex, never
a leading '-' (which SGLang's argument parser takes for a flag: see `api_key_from_env`); a URL-safe
key started with one in 1 of 64 runs and the first server exited at once."""
REDACTED = "<api-key>"
"""What replaces an API key in every log line and error message written here."""

_LIVE_PROCESSES: set[ManagedProcess] = set()
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2l-spawner")


def build_server_command(
    model_path: str, config: EngineConfig, port: int, key_file: Path | None = None
) -> list[str]:
    """The `sglang.launch_server` command line for `config` on its resolved device; the API key
    stays off it, in `key_file` (YAML `api-key: ...`, read by SGLang's `--config`)."""
    device = config.resolved_device()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path)]
    cmd += ["--host", config.host, "--port", str(port), "--tp-size", str(config.tp)]
    on_cpu = device == "cpu"
    # NOTE: on CPU SGLang charges any drop in free host memory while it loads the weights to the
    # weights, and fails when the drop exceeds 1 - mem_fraction_static of what was free before ("Loaded
    # weights leave no GPU memory for the KV cache"): other processes (learner ranks, other engines)
    # allocating meanwhile made 0.05 fail with 6.8 GB free. The KV cache is sized by max_total_tokens.
    cpu_defaults = {"mem_fraction_static": 0.5, "max_total_tokens": 8192, "max_running_requests": 32}
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
    if key_file is not None:
        # sglang/srt/server_args.py prepare_server_args: `--config` is merged by ConfigArgumentMerger
        # (sglang/srt/utils/server_args_config_parser.py) in front of the other flags.
        cmd += ["--config", str(key_file)]
    if config.sleep_on_idle:
        cmd.append("--sleep-on-idle")
    return cmd + list(config.extra_args)


def build_server_env(
    device: Literal["cpu", "cuda"],
    site_dirs: list[str] | None = None,
    cpu_cores: frozenset[int] | None = None,
    gpu_ids: list[str] | None = None,
    passive_wait: bool = False,
) -> dict[str, str]:
    """A server child's environment: on CPU, the CPU engine switch and the stand-ins on PYTHONPATH,
    as many OpenMP threads as it has cores when it is given its own (`cpu_cores`), and with
    `passive_wait` (its cores are shared with another pool's engine) OpenMP threads that sleep
    while they wait instead of spinning; on CUDA, only its own GPUs visible (`gpu_ids`, physical ids:
    SGLang's TP rank r takes visible GPU base_gpu_id + r, base 0: sglang/srt/entrypoints/engine.py)."""
    env = dict(os.environ)
    if device == "cuda" and gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    paths = list(site_dirs or [])
    if device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"  # without it SGLang's CPU path imports vllm
        if cpu_cores:
            env["OMP_NUM_THREADS"] = str(len(cpu_cores))
        if passive_wait:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
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
    _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM)
    if cpu_cores:
        os.sched_setaffinity(0, cpu_cores)


@functools.cache
def private_dir() -> Path:
    """A directory only this user can read (0700), removed when this process exits: where the
    servers' key files are written."""
    path = Path(tempfile.mkdtemp(prefix="s2l-engines-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only (0600 from its creation on)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def key_file_text(api_key: str) -> str:
    """The YAML of a key file (quoted as needed: a key such as `123` or `true` stays a string). The
    key is spelled as the flag: SGLang's ConfigArgumentMerger turns `key: v` into `--key v` as is."""
    import yaml

    return yaml.safe_dump({"api-key": api_key})


def redact(text: str, secrets_: tuple[str, ...]) -> str:
    for secret in secrets_:
        text = text.replace(secret, REDACTED)
    return text


def _copy_redacted(pipe, log, secrets_: tuple[str, ...]) -> None:
    """Copy a child's output to its log line by line, each secret replaced (SGLang logs its
    `server_args=`, API key included, at start-up)."""
    encoded = [secret.encode() for secret in secrets_]
    with pipe, log:
        for line in iter(pipe.readline, b""):
            for secret in encoded:
                line = line.replace(secret, REDACTED.encode())
            log.write(line)
            log.flush()


def _open_private_log(path: Path):
    """`path` opened for appending, 0600 (also when an earlier run left it readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


class ManagedProcess:
    """A child process in its own process group, logged to a file, stopped by its own PID; pinned to
    `cpu_cores` when given. `secrets` never reach the log (the output passes through a thread here
    that replaces them); `private_files` (path -> text) are written 0600 before each start and
    removed at stop."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        log_path: str | Path,
        cpu_cores: frozenset[int] | None = None,
        *,
        secrets: tuple[str, ...] = (),
        private_files: dict[Path, str] | None = None,
    ) -> None:
        self.name, self.cmd, self.env = name, cmd, env
        self.log_path = Path(log_path)
        self.cpu_cores = cpu_cores
        self.secrets = tuple(s for s in secrets if s)
        self.private_files = dict(private_files or {})
        self.proc: subprocess.Popen | None = None
        self.log_start = 0
        self._copier: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for path, text in self.private_files.items():
            write_private_file(path, text)
        log = _open_private_log(self.log_path)
        try:
            log.write(f"\n=== {time.strftime('%F %T')} {self.redact(' '.join(self.cmd))}\n".encode())
            log.flush()
            self.log_start = log.tell()
            # NOTE: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
            # process; a restart from a short-lived worker thread (asyncio.to_thread) would kill the new
            # server moments later. So every child is forked by one thread that lives as long as we do.
            self.proc = _SPAWNER.submit(
                subprocess.Popen,
                self.cmd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=functools.partial(_setup_child, self.cpu_cores),
            ).result()
        except BaseException:
            log.close()
            raise
        self._copier = threading.Thread(
            target=_copy_redacted,
            args=(self.proc.stdout, log, self.secrets),
            name=f"s2l-log-{self.name}",
            daemon=True,
        )
        self._copier.start()
        _LIVE_PROCESSES.add(self)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output_since_spawn(self) -> str:
        """What the current child has written to the log (earlier runs appended before it)."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_start)
            return self.redact(log.read().decode(errors="replace"))

    def log_tail(self, lines: int = 40) -> str:
        """The log's last `lines` lines, for error messages (waits a moment for a child that
        exited: its last lines are what explains it)."""
        if self._copier is not None and not self.is_running():
            self._copier.join(timeout=2.0)
        try:
            return self.redact("\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]))
        except OSError:
            return "(no log)"

    def group_members(self) -> list[int]:
        """PIDs in this child's process group (the server and the processes it started)."""
        if self.proc is None:
            return []
        members = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[2]) == self.proc.pid:
                        members.append(int(entry))
        return members

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the tests use this to simulate a crash)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout_s`; reap the leader."""
        for path in self.private_files:
            path.unlink(missing_ok=True)
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)
        # The leader may be gone while its scheduler children linger: SIGKILL the group regardless.
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)
        if self._copier is not None:
            self._copier.join(timeout=5.0)  # the pipe ends when the group's last writer is gone
        _LIVE_PROCESSES.discard(self)


def listening_socket_inodes(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on `port`, on any address (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], int(fields[9])
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def socket_inodes_of(pids: list[int]) -> set[int]:
    """Inodes of the sockets that processes `pids` hold open."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    return inodes


def _stop_all_at_exit() -> None:
    for process in list(_LIVE_PROCESSES):
        process.stop(timeout_s=5.0)


atexit.register(_stop_all_at_exit)


class PortInUseError(RuntimeError):
    """A server's port is taken (before launch, or between the check and the server's bind)."""


_BIND_FAILED = "address already in use"
"""What uvicorn logs when its port is taken (`[Errno 98] error while attempting to bind`)."""
_PORT_TRIES = 3


class ServerIdentityError(RuntimeError):
    """The server answering at an engine's address is not the one started here, or does not check
    the API key it was given."""


def check_key_is_enforced(url: str, api_key: str, name: str) -> None:
    """Raise ServerIdentityError unless `url` accepts `api_key` and refuses another key (SGLang:
    `/model_info` is authenticated, `/health` is not: sglang/srt/utils/auth.py decide_request_auth)."""
    own = http_get_status(url + KEY_PROBE_PATH, api_key)
    other = http_get_status(url + KEY_PROBE_PATH, secrets.token_urlsafe(32))
    if own != 200 or other not in (401, 403):
        raise ServerIdentityError(
            f"{name}: the server at {url} answered GET {KEY_PROBE_PATH} with {own} to its API key and "
            f"{other} to another key: it is not the server started with that key (another process "
            "on its port?) or it does not check keys"
        )


KEY_PROBE_PATH = "/model_info"
"""An SGLang endpoint that needs the API key when the server has one."""


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
    key_probe: bool = True
    """Prove the key at start (`check_key_is_enforced`); the router has no SGLang endpoint for it."""
    health_with_key: bool = False
    """Send the key with the health check (SGLang's /health needs none: the key goes to proven
    servers only)."""

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
        """Wait until the server listens on its port, on a socket of its own process group, answers
        its health check and (with a key) proves the key; stop it and raise otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.proc.returncode} before it was healthy; "
                    f"log {self.process.log_path}:\n{self.process.log_tail()}"
                )
            # Health first: a dying server (killed, crashed) answers no more while its socket still
            # lingers outside its exiting group; only a listener that answers is judged by its owner.
            if self.is_healthy() and self._listens_on_own_socket():
                if self.api_key is not None and self.key_probe:
                    try:
                        check_key_is_enforced(self.url, self.api_key, self.name)
                    except ServerIdentityError:
                        self.stop()
                        raise
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

    def _listens_on_own_socket(self) -> bool:
        """Whether the port has a listener and every one is this server's; a listener of another
        process (one that bound the port between the free-port check and the server's bind: it
        would get the prompts, the key and the weight-sync group) stops the start."""
        listeners = listening_socket_inodes(self.port)
        if not listeners:
            return False
        foreign = listeners - socket_inodes_of(self.process.group_members())
        if foreign:
            self.stop()
            raise PortInUseError(
                f"{self.name}: port {self.port} on {self.host} was taken before the server bound it: "
                f"another process listens on port {self.port} (socket inode(s) {sorted(foreign)}, not "
                f"held by the server's process group), not trusted as the engine; log {self.process.log_path}"
            )
        return True

    def is_healthy(self, timeout_s: float = 5.0) -> bool:
        key = self.api_key if self.health_with_key else None
        return self.process.is_running() and http_get_ok(self.url + self.health_path, key, timeout_s)

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
        generate_key: bool = True,
        passive_wait: bool = False,
    ) -> None:
        """`port`: 0 takes `config.port` (0 there too: a free one). `cpu_cores`: the cores its
        processes run on (on CPU its own, one OpenMP thread each); `gpu_ids` (CUDA): its GPUs.
        `generate_key`: without `config.api_key_env`, the server gets `RUN_API_KEY` (False: no key,
        for `s2l serve` on loopback, whose clients know no key). `passive_wait`: see
        `build_server_env`."""
        self.model_path = str(model_path)
        self.config = config
        self.host = config.host
        self.api_key = config.api_key or (RUN_API_KEY if generate_key else None)
        self.auto_port = not (port or config.port)
        """The port was picked here: one taken before the server binds it is replaced."""
        self.port = port or config.port or find_free_port(config.host)
        self.gpu_ids = gpu_ids
        self.startup_timeout_s, self.stop_timeout_s = config.startup_timeout_s, config.stop_timeout_s
        self.name = name or f"sglang[{Path(self.model_path).name}:{self.port}]"
        self.key_file = None if self.api_key is None else private_dir() / f"{self.name}-{id(self)}.yaml"
        cmd = build_server_command(self.model_path, config, self.port, self.key_file)
        if config.resolved_device() == "cpu":
            check_cpu_server_site(config.server_site_dirs)
        device = config.resolved_device()
        env = build_server_env(device, config.server_site_dirs, cpu_cores, gpu_ids, passive_wait)
        if "--enable-memory-saver" in cmd:
            # SGLang's /health generates one token by default; on a server that has released its
            # memory (colocated mode: megatron_s2l.rollout.colocate) that would run on unmapped memory.
            env["SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION"] = "false"
            # CUDA graphs inside the memory saver too, so releasing the `cuda_graph` tag frees them
            # (SGLang reads this at capture; slime's slime/ray/rollout.py sets it for its engines).
            env["SGLANG_MEMORY_SAVER_CUDA_GRAPH"] = "true"
        files = {} if self.key_file is None else {self.key_file: key_file_text(self.api_key)}
        self.process = ManagedProcess(
            self.name, cmd, env, log_path, cpu_cores, secrets=(self.api_key or "",), private_files=files
        )

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
                self.process.cmd = build_server_command(
                    self.model_path, self.config, self.port, self.key_file
                )
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
    key_probe = False
    health_with_key = True  # once its socket is proven its own

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
        # The router reads its key from no file or variable: router_launch.py reads the key file and
        # hands the key to sglang_router in its own memory (launch_router.parse_router_args).
        cmd = [sys.executable, "-m", "megatron_s2l.rollout.router_launch"]
        files = {}
        if api_key is not None:
            key_file = private_dir() / f"router-{self.port}-{id(self)}.yaml"
            files[key_file] = key_file_text(api_key)
            cmd += ["--api-key-file", str(key_file)]
        cmd += ["--host", host, "--port", str(self.port), "--policy", policy, "--worker-urls", *worker_urls]
        # The router imports SGLang's Python side too, which needs the same stand-ins on CPU.
        env = build_server_env(device)
        self.process = ManagedProcess(
            self.name, cmd, env, log_path, secrets=(api_key or "",), private_files=files
        )


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
        if self.api_key is not None:  # a server that takes any key would be anyone's
            check_key_is_enforced(self.url, self.api_key, self.name)
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
