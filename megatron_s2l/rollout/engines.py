"""Start the explorer and learner pools of a run, after checking that they share a tokenizer.

with RolloutEngines(config.rollout, explorer_model=..., learner_model=...) as engines:
    sampler = engines.build_sampler(t_mix=..., group_size=...)
    batch = engines.run(sampler.sample(prompts, step))

The engines own the one event loop on which every learner request of the run is made (`run`,
`submit`): the clients' concurrency limits and the pools' failure locks are asyncio primitives,
which belong to the loop that first waits on them, so a fresh loop per call (`asyncio.run`) breaks
them on the second call that has to wait. The loop runs in a thread of its own (loop_thread.py), so
that a rollout can be generated while the trainer's thread trains (`rollout.overlap`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.colocate import colocate_config_errors, colocated_pool
from megatron_s2l.rollout.config import EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.explorer_cache import ExplorerCache
from megatron_s2l.rollout.http import EngineEndpoint, EngineRequestError
from megatron_s2l.rollout.loop_thread import LoopThread
from megatron_s2l.rollout.placement import (
    placement_errors,
    plan_engine_cores,
    plan_engine_gpus,
    regroup_gpus,
    share_gpus,
    visible_gpus,
)
from megatron_s2l.rollout.pool import EnginePool, start_side_by_side
from megatron_s2l.rollout.sampler import S2LGroupSampler
from megatron_s2l.rollout.tokenizer_check import check_same_tokenizer

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _learner_gpus(learner_ranks: int | None) -> tuple[list[str], int]:
    """This node's visible GPUs and how many of them its learner ranks use (local rank i: GPU i).
    `learner_ranks` None: a training process, whose learner ranks torchrun (or spawn_local_ranks)
    counted in LOCAL_WORLD_SIZE / WORLD_SIZE; a process without learner ranks (the measured bench)
    passes 0 rather than let an unset WORLD_SIZE reserve GPU 0 for a rank that does not exist."""
    if learner_ranks is None:
        learner_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return visible_gpus(), learner_ranks


def _gpus_beside_the_learner(
    pools: list[EnginePoolConfig], learner_ranks: int | None
) -> list[list[list[str]]]:
    """GPUs for engines started on the driver's node: those after the learner ranks' (local rank i
    uses GPU i), so that no engine shares a GPU with a learner rank."""
    if not pools:
        return []
    gpus, learner_ranks = _learner_gpus(learner_ranks)
    try:
        return plan_engine_gpus([[pool.engine.tp] * pool.num_engines for pool in pools], gpus[learner_ranks:])
    except ValueError as error:
        raise ValueError(
            f"rollout: {error}: this node has {len(gpus)} GPUs and {learner_ranks} learner ranks use the "
            "first of them; start the engines on other nodes with `s2l serve` and list them in "
            "rollout.<pool>.external_urls (`s2l launch --dry-run` prints the commands)"
        ) from error


def _gpus_of_the_learner(pool: EnginePoolConfig, learner_ranks: int | None) -> list[list[str]]:
    """GPUs for colocated learner engines (rollout.colocate): the learner ranks' own, engine i of TP
    t on the next t of them, so each engine shares its GPUs with learner ranks only."""
    gpus, learner_ranks = _learner_gpus(learner_ranks)
    try:
        return plan_engine_gpus([[pool.engine.tp] * pool.num_engines], gpus[:learner_ranks])[0]
    except ValueError as error:
        raise ValueError(
            f"rollout.colocate: {error}: colocated learner engines share the GPUs of this node's "
            f"{learner_ranks} learner ranks, so num_engines x tp must not exceed {learner_ranks}"
        ) from error


@dataclass(slots=True)
class HandOver:
    """What `RolloutEngines.hand_over_explorer` did, by server URL."""

    stopped: list[str] = field(default_factory=list)
    """Explorer servers started by this run, now stopped."""
    released: list[str] = field(default_factory=list)
    """Attached explorer servers (`external_urls`) that released their memory."""
    started: list[str] = field(default_factory=list)
    """Learner servers started on the stopped ones' cores or GPUs (base weights: sync them)."""


def release_attached(pool: EnginePool, timeout_s: float = 60.0) -> list[str]:
    """Ask every server of `pool` (attached: not ours to stop) to release its memory (SGLang 0.5.23
    `POST /release_memory_occupation` with no tags: KV cache, weights and CUDA graphs, as its
    `WeightUpdater.release_memory_occupation` reads an empty tag list); the URLs of
    those that did. A server is asked only once idle (`/flush_cache` answers 200: a release with a
    request running kills it); one still busy after `timeout_s` (another run's requests) or that
    refuses is left as it is and logged: this run needs none of them any more. Only a server started
    with `--enable-memory-saver` frees anything; others answer 200 and keep their memory."""
    released = []
    for server in pool.servers:
        endpoint = EngineEndpoint(server.url, api_key=server.api_key)
        if not server.is_healthy():  # gone already: nothing to release, no idle to wait for
            logger.warning("%s (%s) does not answer: no memory to release", server.name, server.url)
            continue
        try:
            endpoint.flush_cache(timeout_s)
            endpoint.post("/release_memory_occupation", {}, timeout_s)
            released.append(server.url)
        except EngineRequestError as error:
            logger.warning("%s (%s) kept its memory: %s", server.name, server.url, error)
    return released


class RolloutEngines:
    """The explorer pool (absent when a cache replaces it, or once handed over) and the learner pool
    of one run."""

    def __init__(
        self,
        config: RolloutConfig,
        *,
        explorer_model: str | Path | None,
        learner_model: str | Path,
        learner_ranks: int | None = None,
        explorer_retired: bool = False,
        cores: Iterable[int] | None = None,
        learner_cores: list[int] | None = None,
    ) -> None:
        """`learner_ranks`: learner ranks on this node, whose GPUs engines skip (None: this
        process's torchrun count, `_learner_gpus`; 0 where no learner runs). `explorer_retired`:
        start in the layout after `hand_over_explorer` (a run resumed after its last step with
        explorer samples): no explorer engines, and the learner pool has their successors from the
        start. `cores`: the cores the engines are placed on (None: this process's affinity mask; a
        learner rank pinned by `learner_cores` passes the mask it had before); `learner_cores`
        (learner.cpu_cores): the learner ranks' cores, which no engine takes."""
        self.config = config
        self.explorer_model = explorer_model
        if config.log_dir is None:
            raise ValueError("rollout.log_dir is unset (a run places it in its directory: RunDir.resolve)")
        log_dir = Path(config.log_dir)
        live_explorer = explorer_model is not None and config.explorer_cache_path is None
        learner_pool = config.learner
        # Before a server that cannot work starts.
        errors = placement_errors(config, live_explorer=live_explorer)
        if config.colocate:
            errors += colocate_config_errors(config)
            learner_pool = colocated_pool(config.learner)
        if errors:
            raise ValueError("; ".join(errors))
        pools = {"learner": learner_pool, **({"explorer": config.explorer} if live_explorer else {})}
        local = {name: pool for name, pool in pools.items() if not pool.external_urls}
        # CPU engines get cores of their own (placement.py: they would thrash otherwise), or the
        # learner engines' when the explorer shares them; GPU engines' servers the cores left over.
        available = os.sched_getaffinity(0) if cores is None else cores
        cores_of = plan_engine_cores(local, available, learner_cores or ())
        on_cpu = [name for name, pool in local.items() if pool.engine.resolved_device() == "cpu"]
        # GPU engines get GPUs of their own after the learner ranks'; colocated learner engines take
        # the learner ranks' GPUs instead (the explorer is never colocated); a shared explorer the
        # learner engines' (placement.share_gpus).
        colocated = config.colocate and "learner" not in on_cpu
        gpus = {"learner": _gpus_of_the_learner(learner_pool, learner_ranks)} if colocated else {}
        shared = "explorer" in local and config.explorer.placement == "shared"
        self._shares_gpus = shared and "explorer" not in on_cpu
        beside = [
            name
            for name in local
            if name not in on_cpu and name not in gpus and not (self._shares_gpus and name == "explorer")
        ]
        beside_gpus = _gpus_beside_the_learner([local[name] for name in beside], learner_ranks)
        gpus |= dict(zip(beside, beside_gpus, strict=True))
        if self._shares_gpus:
            explorer = config.explorer
            gpus["explorer"] = share_gpus(gpus["learner"], explorer.engine.tp, explorer.num_engines)
        # The explorer's place is planned even when retired, so the learner's engines keep theirs.
        self._explorer_cores, self._explorer_gpus = cores_of.get("explorer"), gpus.get("explorer")
        self.explorer_retired = live_explorer and explorer_retired
        # Engines sharing cores: OpenMP threads that wait sleep instead of spinning on the cores the
        # other pool's engine needs (tools/bench_cpu_engines.py, docs/rollout.md).
        passive = shared and "explorer" in on_cpu and not self.explorer_retired
        self.explorer = (
            EnginePool(
                "explorer",
                explorer_model,
                config.explorer,
                log_dir,
                self._explorer_cores,
                self._explorer_gpus,
                passive_wait=passive,
            )
            if live_explorer and not explorer_retired
            else None
        )
        self.learner = EnginePool(
            "learner",
            learner_model,
            learner_pool,
            log_dir,
            cores_of.get("learner"),
            gpus.get("learner"),
            passive_wait=passive,
        )
        if self.explorer_retired and not config.explorer.external_urls:
            self.learner.add_engines(*self._successors())  # `start` starts them with the learner's own
        self.startup_seconds: dict[str, list[float]] = {}
        self._loop: LoopThread | None = None
        self.explorer_loop = LoopThread("s2l-explorer") if self.explorer is not None else None
        """Where every explorer request runs (loop_thread.py: prefetch while the trainer trains)."""

    def _successors(self) -> tuple[int, list[frozenset[int]] | None, list[list[str]] | None]:
        """The learner engines that take over the explorer engines' place (this run's, not attached
        ones): (how many, their cores, their GPUs). On CPU one per explorer engine, on its cores; on
        GPU as many as the explorer's GPUs hold at the learner's TP (the rest stay idle). None when
        the explorer shared the learner engines' devices (they have them already), when the learner's
        engines are colocated (they share the learner's GPUs, with another transport) or run on
        another kind of device."""
        device, tp = self.learner.config.engine.resolved_device(), self.learner.config.engine.tp
        explorer_device = self.config.explorer.engine.resolved_device()
        if self.config.explorer.placement == "shared":
            logger.info("explorer hand-over: the learner engines run on the explorer's devices already")
        elif self.config.colocate:
            logger.info("explorer hand-over: colocated learner engines take none of the explorer's GPUs")
        elif device != explorer_device:
            logger.info("explorer hand-over: the learner engines run on %s, the explorer's did not", device)
        elif device == "cpu":
            return len(self._explorer_cores), self._explorer_cores, None
        else:
            blocks = regroup_gpus(self._explorer_gpus, tp)
            idle = sum(map(len, self._explorer_gpus)) - len(blocks) * tp
            if idle:
                logger.info(
                    "explorer hand-over: the explorer's GPUs hold %d learner engines at TP %d; %d GPUs "
                    "stay idle",
                    len(blocks),
                    tp,
                    idle,
                )
            return len(blocks), None, blocks
        return 0, None, None

    def hand_over_explorer(self) -> HandOver:
        """After the run's last step with explorer samples, with no request in flight: stop the
        explorer engines this run started and start learner engines in their place (`_successors`),
        which the learner pool picks from its next request on; attached explorer servers
        (`external_urls`) are asked to release their memory instead (`release_attached`) and get no
        more requests. The new engines hold the learner's base weights: sync them before the next
        rollout. Nothing to do without a live explorer (an explorer cache, no explorer, or handed over
        already)."""
        if self.explorer is None:
            return HandOver()
        busy = {url: n for url, n in self.learner.in_flight.items() if n}
        if busy:  # the pool's server list changes below: no request may be picking from it
            raise RuntimeError(f"explorer hand-over with learner requests in flight ({busy})")
        assert self.explorer_loop is not None
        self.explorer_loop.close()  # cancels whatever still runs there (the prefetch stops before)
        explorer, self.explorer, self.explorer_loop = self.explorer, None, None
        self.explorer_retired = True
        if explorer.config.external_urls:
            return HandOver(released=release_attached(explorer))
        explorer.stop()
        started = self.learner.add_engines(*self._successors())
        return HandOver(stopped=explorer.urls, started=[server.url for server in started])

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` to completion on the engines' event loop (the same loop every call)."""
        return self.submit(coroutine).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coroutine` on the engines' event loop and return at once (`rollout.overlap`)."""
        if self._loop is None:
            self._loop = LoopThread("s2l-rollout")
        return self._loop.submit(coroutine)

    def start(self) -> RolloutEngines:
        if self.explorer_model is not None:
            # Before any server starts: a mismatch is a configuration error, found in seconds.
            check_same_tokenizer(self.explorer_model, self.learner.model_path)
        pools = {"explorer": self.explorer, "learner": self.learner}
        pools = {name: pool for name, pool in pools.items() if pool is not None}
        try:
            if self._shares_gpus and self.explorer is not None:
                # SGLang sizes a server's memory pool from the GPU memory free when it starts
                # (sglang/srt/distributed/bootstrap.py measure_pre_model_load_memory; KV budget in
                # sglang/srt/mem_cache/kv_cache_configurator.py _profile_available_bytes), so two
                # servers on one GPU start one after the other: the explorer's mem_fraction_static is
                # of what the learner's leaves. Learner first: the explorer's TP may cover only part
                # of a learner engine's GPUs, which SGLang's TP memory-balance check would refuse.
                self.startup_seconds = {"learner": self.learner.start(), "explorer": self.explorer.start()}
            else:  # side by side: their engines have GPUs (or cores) of their own
                self.startup_seconds = dict(
                    zip(pools, start_side_by_side([p.start for p in pools.values()]), strict=True)
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._loop is not None:  # first: a rollout still in flight stops before its engines do
            self._loop.close()
            self._loop = None
        if self.explorer_loop is not None:
            self.explorer_loop.close()
        for pool in (self.learner, self.explorer):
            if pool is not None:
                pool.stop()

    def __enter__(self) -> RolloutEngines:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def build_sampler(self, *, t_mix: int, group_size: int, seed: int | None = None) -> S2LGroupSampler:
        client_config = self.config.client
        explorer = None if self.explorer is None else RolloutClient(self.explorer, "explorer", client_config)
        learner = RolloutClient(self.learner, "learner", client_config)
        cache = None
        if self.config.explorer_cache_path is not None:
            cache = ExplorerCache.for_run(self.config, seed=seed or 0, group_size=group_size)
        return S2LGroupSampler(
            explorer,
            learner,
            self.config,
            # Retired: no step left has explorer samples, so Algorithm 1's split at t_mix 0 is theirs.
            t_mix=0 if self.explorer_retired else t_mix,
            group_size=group_size,
            explorer_loop=self.explorer_loop,
            explorer_cache=cache,
            seed=seed,
        )
