"""A pool of SGLang servers serving one model (the explorer's or the learner's), with failure handling.

The client asks the pool for the least busy live server; when a request to a server fails, the pool
decides once per failure whether that server is dead or hung (process gone, or /health silent), and
then drops it (if others remain and dropping is allowed) or restarts it (a server started elsewhere,
`external_urls`, is waited for instead). A restarted learner server
comes back with the weights of its model path, not the latest synced ones: the pool marks it stale
(its records then carry the old weight version, which the sampler counts in the metrics) until the
next weight sync reaches it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from megatron_s2l.rollout.config import EnginePoolConfig
from megatron_s2l.rollout.http import http_get_json
from megatron_s2l.rollout.server import RUN_API_KEY, EngineServer, ExternalServer, RouterServer, Server

logger = logging.getLogger(__name__)
T = TypeVar("T")


def start_side_by_side(starts: Sequence[Callable[[], T]]) -> list[T]:
    """Call every `start` in a thread of its own and return their results in order. Servers load
    side by side (minutes each for large models on a cluster); an error is raised only once every
    call has returned, so that the caller can stop whatever did start."""
    if len(starts) <= 1:
        return [start() for start in starts]
    with concurrent.futures.ThreadPoolExecutor(len(starts), thread_name_prefix="s2l-start") as executor:
        futures = [executor.submit(start) for start in starts]
    for future in futures:
        if future.exception() is not None:
            raise future.exception()
    return [future.result() for future in futures]


class EnginePool:
    """Servers of one model, the requests in flight on each, and their weight versions."""

    def __init__(
        self,
        name: str,
        model_path: str | Path,
        config: EnginePoolConfig,
        log_dir: str | Path,
        cpu_cores: list[frozenset[int]] | None = None,
        gpu_ids: list[list[str]] | None = None,
        generate_key: bool = True,
        passive_wait: bool = False,
    ) -> None:
        """`cpu_cores` / `gpu_ids`: each server's cores (on CUDA those its processes run on) and GPUs
        (`megatron_s2l.rollout.placement`); None: all it sees. With `config.external_urls` the pool
        attaches to those servers instead of starting its own. `generate_key`: servers started here
        without `engine.api_key_env` get this process's random key (`server.RUN_API_KEY`).
        `passive_wait`: its CPU servers share cores with another pool's (`build_server_env`)."""
        self.name, self.model_path, self.config = name, str(model_path), config
        self.passive_wait = passive_wait
        self.log_dir = Path(log_dir)
        self._next_index = len(config.external_urls)
        """Index of the next server started here (after any attached ones: names and log files stay
        unique as servers come)."""
        self._started = False
        self.api_key = config.engine.api_key
        """The key every server of the pool takes (the client and the weight sync send it)."""
        if self.api_key is None and generate_key and not config.external_urls:
            self.api_key = RUN_API_KEY
        self.servers: list[Server] = (
            [
                ExternalServer(url, model_path, config.engine, name=f"{name}{i}")
                for i, url in enumerate(config.external_urls)
            ]
            if config.external_urls
            else [
                self._engine_server(cpu_cores[i] if cpu_cores else None, gpu_ids[i] if gpu_ids else None)
                for i in range(config.num_engines)
            ]
        )
        self.router: RouterServer | None = None
        self.in_flight: dict[str, int] = {}
        self.weight_version: str = "default"
        """The version every server should hold (set by the weight sync)."""
        self.restarts = 0
        self._generation: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _engine_server(self, cpu_cores: frozenset[int] | None, gpu_ids: list[str] | None) -> EngineServer:
        index, self._next_index = self._next_index, self._next_index + 1
        port = self.config.engine.port and self.config.engine.port + index
        return EngineServer(
            self.model_path,
            self.config.engine,
            self.log_dir / f"{self.name}{index}.log",
            name=f"{self.name}{index}",
            port=port,
            cpu_cores=cpu_cores,
            gpu_ids=gpu_ids,
            generate_key=self.api_key is not None,  # the pool's key (an attached pool's may be none)
            passive_wait=self.passive_wait,
        )

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def add_engines(
        self,
        count: int,
        cpu_cores: list[frozenset[int]] | None = None,
        gpu_ids: list[list[str]] | None = None,
    ) -> list[EngineServer]:
        """`count` more servers of the pool's model and engine config, server i on `cpu_cores[i]` /
        `gpu_ids[i]` (None: all it sees). A started pool starts them now, side by side, and picks
        them for requests once all are healthy (a failed start stops them and raises); otherwise
        `start` starts them with the others. They hold the model path's weights: sync them."""
        servers = [
            self._engine_server(cpu_cores[i] if cpu_cores else None, gpu_ids[i] if gpu_ids else None)
            for i in range(count)
        ]
        if self._started:
            try:
                start_side_by_side([server.start for server in servers])
            except BaseException:
                for server in servers:
                    server.stop()
                raise
            for server in servers:
                self._register(server)
            if self.router is not None:  # launched with its workers (adding one puts the key in a URL)
                logger.warning("pool %s: its router does not front %s", self.name, [s.url for s in servers])
        self.servers.extend(servers)
        return servers

    def start(self) -> list[float]:
        """Start every server, side by side (each on its own GPUs or cores); returns seconds per server."""
        self._started = True
        try:
            seconds = start_side_by_side([server.start for server in self.servers])
            for server in self.servers:
                self._register(server)
            if self.config.use_router:
                self.router = RouterServer(
                    self.urls,
                    self.log_dir / f"{self.name}-router.log",
                    host=self.config.engine.host,
                    api_key=self.api_key,
                    device=self.config.engine.resolved_device(),
                )
                self.router.start()
        except BaseException:
            self.stop()
            raise
        return seconds

    def _register(self, server: Server) -> None:
        self.in_flight.setdefault(server.url, 0)
        self._generation[server.url] = self._generation.get(server.url, -1) + 1

    def stop(self) -> None:
        self._started = False
        if self.router is not None:
            self.router.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> EnginePool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_weight_versions(self) -> None:
        """Raise unless every server reports the pool's weight version (call after a sync): a server
        that another trainer also syncs, or one that missed the sync, shows here."""
        for server in self.servers:
            reported = http_get_json(server.url + "/model_info", server.api_key).get("weight_version")
            if str(reported) != self.weight_version:
                raise RuntimeError(
                    f"pool {self.name}: {server.name} ({server.url}) reports weight version {reported!r} "
                    f"after the sync to {self.weight_version!r} (does another run sync the same servers?)"
                )

    def pick(self) -> tuple[Server, int]:
        """The live server with the fewest requests in flight, and its generation (restart count)."""
        if not self.servers:
            raise RuntimeError(f"pool {self.name} has no servers left")
        server = min(self.servers, key=lambda s: self.in_flight[s.url])
        return server, self._generation[server.url]

    async def handle_failure(self, server: Server, generation: int, error: BaseException) -> None:
        """After a failed request on `server` (as of `generation`): restart or drop it if it is down."""
        lock = self._locks.setdefault(server.url, asyncio.Lock())
        async with lock:
            if server not in self.servers or self._generation[server.url] != generation:
                return  # another request already handled this server's failure
            if await asyncio.to_thread(server.is_healthy, 5.0):
                return  # a transient error (e.g. a time-out under load): the caller retries
            logger.warning("pool %s: server %s is down (%s)", self.name, server.url, error)
            if self.config.on_failure == "drop" and len(self.servers) > 1:
                await asyncio.to_thread(server.stop)
                self.servers.remove(server)
                return
            await asyncio.to_thread(server.restart)
            self._register(server)
            self.restarts += 1
