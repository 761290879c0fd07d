"""Colocated mode (`rollout.colocate: true`): the learner engines share the learner ranks' GPUs and
hand their memory to the learner while it computes, as the paper's authors ran (one 8-GPU node).

The step loop (`megatron_s2l.train`) calls one method of `Colocation` at each phase boundary; each
is a no-op when colocate is off, so the loop reads the same either way:

    rollout (engines hold weights, KV cache, CUDA graphs)
    -> release()          driver: waits until every learner engine is idle (`/flush_cache` answers
                          200), then each releases its KV cache, weights and CUDA graphs; every rank
                          meets at a barrier and takes its offloaded learner state back
    -> log-probs, training (the learner has the GPUs to itself)
    -> resume_weights()   every rank offloads its gradients and optimizer state (with
                          `learner.offload_during_rollout`) and empties its CUDA cache, all ranks
                          meet at a barrier, then the driver has the engines take their weights back
    -> weight sync        (into the resumed weight memory; the KV cache is still released)
    -> resume_kv_cache()  every rank empties its CUDA cache (the sync's buffers), a barrier, then the
                          driver has the engines take their KV cache and CUDA graphs back

What SGLang 0.5.23 does with these requests (measured on CPU and read in its scheduler,
`scheduler_components/weight_updater.py`), and so what this module guards against:
- `--enable-memory-saver` needs the `torch_memory_saver` package (CUDA virtual-memory tricks); without
  it the server exits at start-up (`ModuleNotFoundError`), which is why colocate is refused on CPU.
- Without the memory saver, `POST /release_memory_occupation` and `/resume_memory_occupation` answer
  200 with the JSON body `null` and free nothing (generation keeps working).
- Release with a request running kills the server (its scheduler asserts it is idle:
  `WeightUpdater.release_memory_occupation`); so does a resume of a tag that was not released
  (`KeyError` in the scheduler). The pool's in-flight count is not enough: a request the client
  gave up on (its time-out) still runs in the server. So before releasing, the driver polls
  `/flush_cache` until it answers 200 (SGLang's `Scheduler.flush_cache` succeeds only when no
  request runs or waits), bounded by `idle_timeout_s`, as slime does
  (`slime/backends/sglang_utils/sglang_engine.py`: `release_memory_occupation` calls `flush_cache`,
  which retries 60 times a second apart); and it resumes only what it released.
- Three tags: `kv_cache`, `weights`, `cuda_graph` (`sglang/srt/constants.py`). The CUDA graphs' pool
  is inside the memory saver only with `SGLANG_MEMORY_SAVER_CUDA_GRAPH=true` in the server's
  environment (`megatron_s2l.rollout.server` sets it beside `--enable-memory-saver`, as slime's
  `slime/ray/rollout.py` does); it is released with the rest and resumed with the KV cache (slime's
  `onload_kv` resumes `[kv_cache, cuda_graph]`).
- A released server does not refuse requests: a generate would run on unmapped memory. Nothing may
  reach the learner engines between release and the KV resume: the explorer (the only pool the
  prefetch uses) is never colocated, and colocated servers get a `/health` that does not generate
  (`megatron_s2l.rollout.server`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from megatron_s2l.rollout.config import EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.http import EngineEndpoint, EngineRequestError

if TYPE_CHECKING:
    from megatron_s2l.learner.offload import LearnerOffload
    from megatron_s2l.rollout.pool import EnginePool

logger = logging.getLogger(__name__)

MEMORY_SAVER_FLAG = "--enable-memory-saver"
WEIGHTS, KV_CACHE, CUDA_GRAPH = "weights", "kv_cache", "cuda_graph"
RELEASE_ORDER = (KV_CACHE, WEIGHTS, CUDA_GRAPH)
"""What `release` frees, in this order (as SGLang's own release of all tags)."""
KV_RESUME = (KV_CACHE, CUDA_GRAPH)
"""What `resume_kv_cache` takes back (slime: `onload_kv`); `resume_weights` takes the weights."""
RELEASE_PATH, RESUME_PATH = "/release_memory_occupation", "/resume_memory_occupation"


def colocated_pool(pool: EnginePoolConfig) -> EnginePoolConfig:
    """A copy of the learner pool's config whose servers start with SGLang's memory saver (needed for
    the release/resume endpoints to free anything); the user's config object is left unchanged."""
    extra = list(pool.engine.extra_args)
    if MEMORY_SAVER_FLAG not in extra:
        extra.append(MEMORY_SAVER_FLAG)
    return replace(pool, engine=replace(pool.engine, extra_args=extra))


def colocate_config_errors(config: RolloutConfig, *, sync_transport: str | None = None) -> list[str]:
    """Why `config` cannot run colocated (empty when it can, or when colocate is off); the pre-flight
    check raises these before any rank or server starts. `sync_transport` (`sync.transport`): None
    skips that check (the engines' own check, which does not see the sync section)."""
    if not config.colocate:
        return []
    errors = []
    if config.learner.engine.resolved_device() != "cuda":
        errors.append(
            "rollout.colocate needs CUDA: SGLang's memory saver (torch_memory_saver) only works on GPUs, "
            "and a CPU server started with --enable-memory-saver exits at start-up; set "
            "rollout.colocate=false on CPU"
        )
    if sync_transport == "distributed":
        errors.append(
            "rollout.colocate with sync.transport=distributed: the broadcast group would put the "
            "learner's rank 0 and an engine on the same GPU, which NCCL refuses; use sync.transport=tensor "
            "(or disk)"
        )
    return errors


class Colocation:
    """The memory hand-over between colocated learner engines and the learner, one call per phase
    boundary (see the module doc). Every learner rank makes the same calls (each is collective when
    colocate is on); only the driver's instance (the one given the pool) talks to the engines."""

    def __init__(
        self,
        pool: EnginePool | None,
        *,
        enabled: bool,
        timeout_s: float = 120.0,
        learner: LearnerOffload | None = None,
        idle_timeout_s: float = 60.0,
    ) -> None:
        """`pool`: the learner engine pool on the driver, None on the other ranks; `enabled`:
        `rollout.colocate`; `timeout_s`: per release/resume request; `learner`: this rank's offloader
        (`learner.offload_during_rollout`), None to keep the learner's state on the GPU;
        `idle_timeout_s`: how long to wait for an engine to finish requests nobody waits for."""
        self.pool, self.enabled, self.timeout_s = pool, enabled, timeout_s
        self.learner, self.idle_timeout_s = learner, idle_timeout_s
        self.released: dict[str, set[str]] = {}
        """Per server URL, the memory tags it has released and not yet resumed (never resume a tag
        that was not released: SGLang's scheduler dies of it)."""
        self.seconds: dict[str, float] = {}
        """Duration of the last release / resume per kind (for the logs)."""

    def release(self) -> None:
        """After the rollout, before the learner's log-prob pass (every rank): the driver waits until
        every learner engine is idle, then has each release its KV cache, weights and CUDA graphs;
        the ranks meet at a barrier (nobody allocates before the engines have let go) and take their
        offloaded state back."""
        if not self.enabled:
            return
        if self.pool is not None:
            self._release_engines()
        _barrier()
        if self.learner is not None:
            self.learner.reload()

    def _release_engines(self) -> None:
        busy = {url: n for url, n in self.pool.in_flight.items() if n}
        if busy:
            raise RuntimeError(
                f"colocate: learner engines still have requests in flight ({busy}); releasing their "
                "memory now would kill them (SGLang asserts an idle scheduler)"
            )
        started = time.perf_counter()
        for server in self.pool.servers:
            self._wait_until_idle(server)
        for tag in RELEASE_ORDER:
            for server in self.pool.servers:
                if tag not in self.released.get(server.url, set()):
                    self._post(server, RELEASE_PATH, tag)
                    self.released.setdefault(server.url, set()).add(tag)
        self.seconds["release"] = time.perf_counter() - started
        logger.info(
            "colocate: %d learner engines released their KV cache and weights (%.2f s)",
            len(self.pool.servers),
            self.seconds["release"],
        )

    def _wait_until_idle(self, server) -> None:
        """Poll `/flush_cache` until it answers 200: SGLang flushes only when no request runs or
        waits, so a 200 means a release cannot meet a running request (one the client abandoned)."""
        endpoint = EngineEndpoint(server.url, api_key=server.api_key)
        try:
            endpoint.flush_cache(self.idle_timeout_s)
        except EngineRequestError as error:
            raise EngineRequestError(
                f"colocate: {server.url} still runs requests after {self.idle_timeout_s:g} s (requests the "
                f"client gave up on run on in the server); not releasing its memory: {error}"
            ) from error

    def resume_weights(self) -> None:
        """After training, before the weight sync (every rank): each rank offloads its gradients and
        optimizer state (when configured) and hands its cached CUDA blocks back to the device, the
        ranks meet at a barrier (so that no rank still holds the memory the engines are about to
        map), then the driver has the engines take their weights back; the sync then writes the new
        weights into that memory."""
        if not self.enabled:
            return
        if self.learner is not None:
            self.learner.offload()
        _empty_cache_and_meet()
        self._resume((WEIGHTS,))

    def resume_kv_cache(self) -> None:
        """After the weight sync (every rank): the sync's buffers go back to the device, the ranks
        meet, then the driver has the engines take their KV cache and CUDA graphs back, so generation
        (evaluation, the next rollout) can run."""
        if not self.enabled:
            return
        _empty_cache_and_meet()
        self._resume(KV_RESUME)

    def _resume(self, tags: tuple[str, ...]) -> None:
        if self.pool is None:
            return
        started = time.perf_counter()
        live = {server.url: server for server in self.pool.servers}
        for tag in tags:
            for url in list(self.released):
                if url not in live:  # dropped from the pool since: nothing to resume there
                    del self.released[url]
                elif tag in self.released[url]:
                    self._post(live[url], RESUME_PATH, tag)
                    self.released[url].discard(tag)
                    if not self.released[url]:
                        del self.released[url]
        kind = tags[0]
        self.seconds[f"resume_{kind}"] = time.perf_counter() - started
        logger.info(
            "colocate: learner engines resumed their %s (%.2f s)", kind, self.seconds[f"resume_{kind}"]
        )

    def _post(self, server, path: str, tag: str) -> None:
        """POST `{"tags": [tag]}` to `path` (SGLang answers 200 with a `null` body on success)."""
        endpoint = EngineEndpoint(server.url, api_key=server.api_key)
        try:
            endpoint.post(path, {"tags": [tag]}, self.timeout_s)
        except EngineRequestError as error:
            raise EngineRequestError(
                f"colocate: {tag}: {error} (a dropped connection here is the server exiting: see its log)"
            ) from error
        logger.debug("colocate: %s%s %s", server.url, path, tag)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _empty_cache_and_meet() -> None:
    """Every rank gives its cached, unused CUDA blocks back to the device, then all ranks meet: after
    this, memory the learner freed is free for the engines on every GPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _barrier()
