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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.config import RolloutConfig
from megatron_s2l.rollout.explorer_cache import ExplorerCache
from megatron_s2l.rollout.loop_thread import LoopThread
from megatron_s2l.rollout.placement import plan_cpu_cores
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.rollout.sampler import S2LGroupSampler
from megatron_s2l.rollout.tokenizer_check import check_same_tokenizer

T = TypeVar("T")


class RolloutEngines:
    """The explorer pool (absent when a cache replaces it) and the learner pool of one run."""

    def __init__(
        self, config: RolloutConfig, *, explorer_model: str | Path | None, learner_model: str | Path
    ) -> None:
        self.config = config
        self.explorer_model = explorer_model
        if config.log_dir is None:
            raise ValueError("rollout.log_dir is unset (a run places it in its directory: RunDir.resolve)")
        log_dir = Path(config.log_dir)
        live_explorer = explorer_model is not None and config.explorer_cache_path is None
        # CPU engines of the run get disjoint cores (placement.py: they would thrash otherwise).
        pools = {"learner": config.learner, **({"explorer": config.explorer} if live_explorer else {})}
        on_cpu = [name for name, pool in pools.items() if pool.engine.resolved_device() == "cpu"]
        cores = dict(zip(on_cpu, plan_cpu_cores([pools[name].num_engines for name in on_cpu]), strict=True))
        self.explorer = (
            EnginePool("explorer", explorer_model, config.explorer, log_dir, cores.get("explorer"))
            if live_explorer
            else None
        )
        self.learner = EnginePool("learner", learner_model, config.learner, log_dir, cores.get("learner"))
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
        try:
            if self.explorer is not None:
                self.startup_seconds["explorer"] = self.explorer.start()
            self.startup_seconds["learner"] = self.learner.start()
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
            cache = ExplorerCache(self.config.explorer_cache_path, seed=seed or 0)
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
