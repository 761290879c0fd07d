"""Start the explorer and learner pools of a run, after checking that they share a tokenizer.

with RolloutEngines(config.rollout, explorer_model=..., learner_model=...) as engines:
    sampler = engines.build_sampler(t_mix=..., group_size=...)
    batch = engines.run(sampler.sample(prompts, step))

The engines own the one event loop on which every request of the run is made (`run`): the clients'
concurrency limits and the pools' failure locks are asyncio primitives, which belong to the loop
that first waits on them, so a fresh loop per call (`asyncio.run`) breaks them on the second call
that has to wait.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.colocate import colocate_config_errors, colocated_pool
from megatron_s2l.rollout.config import EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.explorer_cache import ExplorerCache
from megatron_s2l.rollout.loop_thread import LoopThread
from megatron_s2l.rollout.placement import plan_cpu_cores, plan_engine_gpus, visible_gpus
from megatron_s2l.rollout.pool import EnginePool, start_side_by_side
from megatron_s2l.rollout.sampler import S2LGroupSampler
from megatron_s2l.rollout.tokenizer_check import check_same_tokenizer

T = TypeVar("T")


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


class RolloutEngines:
    """The explorer pool (absent when a cache replaces it) and the learner pool of one run."""

    def __init__(
        self,
        config: RolloutConfig,
        *,
        explorer_model: str | Path | None,
        learner_model: str | Path,
        learner_ranks: int | None = None,
    ) -> None:
        """`learner_ranks`: learner ranks on this node, whose GPUs engines skip (None: this
        process's torchrun count, `_learner_gpus`; 0 where no learner runs)."""
        self.config = config
        self.explorer_model = explorer_model
        if config.log_dir is None:
            raise ValueError("rollout.log_dir is unset (a run places it in its directory: RunDir.resolve)")
        log_dir = Path(config.log_dir)
        live_explorer = explorer_model is not None and config.explorer_cache_path is None
        learner_pool = config.learner
        if config.colocate:
            errors = colocate_config_errors(config)  # before a server that cannot work starts
            if errors:
                raise ValueError("; ".join(errors))
            learner_pool = colocated_pool(config.learner)
        pools = {"learner": learner_pool, **({"explorer": config.explorer} if live_explorer else {})}
        local = {name: pool for name, pool in pools.items() if not pool.external_urls}
        # CPU engines of the run get disjoint cores (placement.py: they would thrash otherwise).
        on_cpu = [name for name, pool in local.items() if pool.engine.resolved_device() == "cpu"]
        cores = dict(zip(on_cpu, plan_cpu_cores([local[name].num_engines for name in on_cpu]), strict=True))
        # GPU engines get GPUs of their own after the learner ranks'; colocated learner engines take
        # the learner ranks' GPUs instead (the explorer is never colocated).
        colocated = config.colocate and "learner" not in on_cpu
        gpus = {"learner": _gpus_of_the_learner(learner_pool, learner_ranks)} if colocated else {}
        on_gpu = [name for name in local if name not in on_cpu and name not in gpus]
        beside = _gpus_beside_the_learner([local[name] for name in on_gpu], learner_ranks)
        gpus |= dict(zip(on_gpu, beside, strict=True))
        self.explorer = (
            EnginePool(
                "explorer",
                explorer_model,
                config.explorer,
                log_dir,
                cores.get("explorer"),
                gpus.get("explorer"),
            )
            if live_explorer
            else None
        )
        self.learner = EnginePool(
            "learner", learner_model, learner_pool, log_dir, cores.get("learner"), gpus.get("learner")
        )
        self.startup_seconds: dict[str, list[float]] = {}
        self._runner: asyncio.Runner | None = None
        self.explorer_loop = LoopThread("s2l-explorer") if self.explorer is not None else None
        """Where every explorer request runs (loop_thread.py: prefetch while the trainer trains)."""

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` to completion on the engines' event loop (the same loop every call)."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(coroutine)

    def start(self) -> RolloutEngines:
        if self.explorer_model is not None:
            # Before any server starts: a mismatch is a configuration error, found in seconds.
            check_same_tokenizer(self.explorer_model, self.learner.model_path)
        pools = {"explorer": self.explorer, "learner": self.learner}
        pools = {name: pool for name, pool in pools.items() if pool is not None}
        try:  # the pools start side by side: their engines have GPUs (or cores) of their own
            self.startup_seconds = dict(
                zip(pools, start_side_by_side([p.start for p in pools.values()]), strict=True)
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.explorer_loop is not None:
            self.explorer_loop.close()
        for pool in (self.learner, self.explorer):
            if pool is not None:
                pool.stop()
        if self._runner is not None:
            self._runner.close()
            self._runner = None

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
            t_mix=t_mix,
            group_size=group_size,
            explorer_loop=self.explorer_loop,
            explorer_cache=cache,
            seed=seed,
        )
