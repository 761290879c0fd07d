"""Per-step weight sync from the learner into the learner engines (never the explorer).

    sync = WeightSync(config.sync, endpoints=pool_endpoints(learner_pool))       # on every learner rank
    result = sync.update(iter_hf_weights(...), version=step, endpoints=...)    # after each step

`update` is collective over the learner's ranks when torch.distributed is initialised: every rank
drives the (collective) export iterator; only the rank 0 of each pipeline stage (`is_sender`) sends
its stage's tensors, and only the driver (`is_controller`, global rank 0, which also owns the pool)
talks to the engines about the update as a whole, in this order:

    pause generation (retract: in-flight requests resume later, on the new weights) -> flush cache
    -> [begin_weight_update] -> the senders send their buckets, stage 0 first, one stage at a
    time -> [apply, end_weight_update] -> continue generation

Ranks with nothing to send wait at all-reduces (after the pause, each stage's turn, the apply) that
double as barriers and agree on failure: a rank that fails (engine unreachable, a tensor not in the
engine's manifest, a send that keeps failing, an apply the engines refuse) still drives the export
to its end, and then every rank raises WeightSyncError instead of one rank leaving the others
waiting. A bucket that fails is retried first (after dropping engines
that no longer answer /health from this update).
The sync knows endpoints, not engine pools: it returns what it did (`SyncResult.updated`, `.missed`)
and the caller keeps the pool's weight versions (`megatron_s2l.train.sync_learner_engines`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from megatron_s2l.learner.parallel import any_rank
from megatron_s2l.rollout.http import EngineEndpoint, EngineRequestError, http_get_ok
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.sync.buckets import Bucket, iter_buckets
from megatron_s2l.sync.config import SyncConfig
from megatron_s2l.sync.manifest import WeightManifestError, check_against_manifest
from megatron_s2l.sync.transports import (
    BrokenSyncGroupError,
    DiskTransport,
    DistributedTransport,
    TensorTransport,
    Transport,
)

logger = logging.getLogger(__name__)


class WeightSyncError(RuntimeError):
    """The engines could not be brought to the new weights."""


@dataclass(slots=True)
class SyncResult:
    version: str
    seconds: float
    bytes_sent: int
    buckets: int
    retries: int = 0
    updated: list[str] = field(default_factory=list)
    """Engine URLs that hold the new weights (on the controller; the senders' own view elsewhere)."""
    missed: list[str] = field(default_factory=list)
    """Engine URLs dropped from this update because they stopped answering (stale until next one)."""

    @property
    def gb_per_s(self) -> float:
        return self.bytes_sent / max(self.seconds, 1e-9) / 1e9


def pool_endpoints(pool: EnginePool) -> list[EngineEndpoint]:
    """The endpoints of a pool's servers (the learner pool's; never pass the explorer's)."""
    return [EngineEndpoint(s.url, s.config.tp, s.api_key) for s in pool.servers]


def build_transport(config: SyncConfig, stage: int) -> Transport:
    if config.transport == "disk":
        if config.disk_dir is None:
            raise ValueError("sync.disk_dir is unset (a run places it in its directory: RunDir.resolve)")
        return DiskTransport(config.disk_dir, stage, config.timeout_s)
    if config.transport == "tensor":
        return TensorTransport(config.timeout_s)
    return DistributedTransport(
        stage=stage, master_address=config.master_address, backend=config.backend, timeout_s=config.timeout_s
    )


def _capture(action) -> BaseException | None:
    """Run `action`; return its sync-level failure instead of raising it (the ranks agree first)."""
    try:
        action()
    except (WeightSyncError, EngineRequestError, WeightManifestError, RuntimeError) as error:
        return error
    return None


def _raise_if_any_rank_failed(error: BaseException | None, what: str) -> None:
    """A barrier that also agrees on failure, so no rank waits forever for one that gave up."""
    failed = any_rank(error is not None)
    if error is not None:
        raise error if isinstance(error, WeightSyncError) else WeightSyncError(f"{what}: {error}") from error
    if failed:
        raise WeightSyncError(f"weight sync failed on another learner rank while {what}")


class WeightSync:
    """Sends each new version of the learner's weights to the learner engines."""

    def __init__(
        self,
        config: SyncConfig,
        *,
        endpoints: list[EngineEndpoint],
        is_sender: bool = True,
        is_controller: bool = True,
        stage: int = 0,
        num_stages: int = 1,
        manifest: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        if is_controller and not endpoints:
            raise ValueError("the controller needs the learner engines' endpoints")
        self.config, self.endpoints = config, list(endpoints)
        self.is_sender, self.is_controller = is_sender, is_controller
        self.stage, self.num_stages = stage, num_stages
        self.manifest = manifest
        """{hf_name: shape} the engines serve; every tensor sent is checked against it (None: no check)."""
        self.transport = build_transport(config, stage) if is_sender or is_controller else None

    def update(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        version: str | int,
        endpoints: list[EngineEndpoint] | None = None,
    ) -> SyncResult:
        """Send one version of the weights; every learner rank calls this (see the module doc).
        `endpoints` (the controller's): the engines to update now, when they changed since the last
        update (a pool that dropped or restarted a server)."""
        version = str(version)
        started = time.perf_counter()
        result = SyncResult(version=version, seconds=0.0, bytes_sent=0, buckets=0)
        if endpoints is not None:
            self.endpoints = list(endpoints)
        endpoints = list(self.endpoints)
        tensors = iter(named_tensors)
        error: BaseException | None = None
        try:
            if self.is_controller:
                error = _capture(lambda: self._prepare_engines(endpoints))
            _raise_if_any_rank_failed(error, "pausing the engines")  # nothing exported yet
            for stage in range(self.num_stages):  # one stage after another: see _send_stage_turn
                error = self._send_stage_turn(stage, tensors, endpoints, version, result)
                _raise_if_any_rank_failed(error, f"sending stage {stage}'s weights")
            if self.is_controller and self.transport is not None:
                transport = self.transport
                error = _capture(
                    lambda: self._with_retries(lambda: transport.apply(endpoints, version), endpoints, result)
                )
            _raise_if_any_rank_failed(error, "applying the weights")  # every rank raises, not only rank 0
        finally:
            if self.is_controller:
                self._release_engines(endpoints)
        result.updated = [e.url for e in endpoints]
        result.missed = [e.url for e in self.endpoints if e not in endpoints]
        result.seconds = time.perf_counter() - started
        return result

    def _send_stage_turn(
        self,
        stage: int,
        tensors: Iterator[tuple[str, torch.Tensor]],
        endpoints: list[EngineEndpoint],
        version: str,
        result: SyncResult,
    ) -> BaseException | None:
        """Stage `stage`'s turn: its ranks drive their export (collective inside the stage) and its
        sender sends; the other stages' ranks wait at the barrier that follows. Stages never send
        at once: each SGLang engine serves one update request at a time, so with two stages
        sending, engine 1 could serve stage 1's broadcast while engine 2 serves stage 0's, each
        waiting for the other (NCCL also blocks each sender in its lazy communicator set-up at the
        first broadcast). slime holds one lock across stages around every bucket for this reason
        (`UpdateWeightFromDistributed._update_bucket_weights_from_distributed`); taking turns by
        stage gives the same guarantee in PP order, at the cost of not overlapping one stage's
        export with another's send. The export has no cross-stage collective (TP all-gathers only),
        so the waiting stages can drive theirs in their own turn."""
        if stage != self.stage:
            return None
        error = None
        if self.is_sender:
            error = _capture(lambda: self._send_all(tensors, endpoints, version, result))
        for _ in tensors:  # the export is collective: every rank drives it to the end, even on failure
            pass
        return error

    def _send_all(
        self,
        tensors: Iterator[tuple[str, torch.Tensor]],
        endpoints: list[EngineEndpoint],
        version: str,
        result: SyncResult,
    ) -> None:
        sent: set[str] = set()
        assert self.transport is not None
        self.transport.begin(endpoints)
        for bucket in iter_buckets(self._checked(tensors, sent), self.config.bucket_mb * 2**20):
            self._send_with_retries(bucket, endpoints, version, result)
        self._check_complete(sent)

    def _checked(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], sent: set[str]
    ) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in named_tensors:
            if self.manifest is not None:
                try:
                    check_against_manifest(name, tuple(tensor.shape), self.manifest)
                except WeightManifestError as error:
                    raise WeightSyncError(f"{error}; nothing more is sent in this update") from error
            if name in sent:
                raise WeightSyncError(f"weight {name!r} appears twice in the learner's export")
            sent.add(name)
            yield name, tensor

    def _check_complete(self, sent: set[str]) -> None:
        """With one pipeline stage this sender had every weight: none of the engine's may be missing."""
        if self.manifest is None or self.num_stages != 1:
            return
        missing = sorted(set(self.manifest) - sent)
        if missing:
            raise WeightSyncError(
                f"the learner's export lacks {len(missing)} engine weights, e.g. {missing[:3]}"
            )

    def _prepare_engines(self, endpoints: list[EngineEndpoint]) -> None:
        timeout = self.config.timeout_s
        for endpoint in endpoints:
            endpoint.post("/pause_generation", {"mode": self.config.pause_mode}, timeout)
            if self.config.pause_mode != "in_place":  # in-place keeps running requests' KV cache
                endpoint.flush_cache(timeout)
            if self.transport is None or self.transport.needs_weight_update_window:
                endpoint.post("/begin_weight_update", {}, timeout)

    def _release_engines(self, endpoints: list[EngineEndpoint]) -> None:
        for endpoint in endpoints:
            try:
                if self.transport is None or self.transport.needs_weight_update_window:
                    endpoint.post("/end_weight_update", {}, self.config.timeout_s)
                endpoint.post("/continue_generation", {}, self.config.timeout_s)
            except EngineRequestError as error:
                logger.error("could not resume %s after the weight update: %s", endpoint.url, error)

    def _send_with_retries(
        self, bucket: Bucket, endpoints: list[EngineEndpoint], version: str, result: SyncResult
    ) -> None:
        assert self.transport is not None
        self._with_retries(lambda: self.transport.send(bucket, endpoints, version), endpoints, result)
        result.bytes_sent += bucket.nbytes
        result.buckets += 1

    def _with_retries(self, action, endpoints: list[EngineEndpoint], result: SyncResult) -> None:
        """Run `action`; on failure drop dead engines from `endpoints` (in place) and try again."""
        for attempt in range(self.config.max_retries + 1):
            try:
                action()
                return
            except BrokenSyncGroupError as error:  # engines may be stuck in the broadcast: no retry
                raise WeightSyncError(str(error)) from error
            except (EngineRequestError, RuntimeError) as error:
                if attempt == self.config.max_retries:
                    raise WeightSyncError(
                        f"{self.config.transport} weight sync failed after {attempt + 1} tries: {error}"
                    ) from error
                result.retries += 1
                dead = [e for e in endpoints if not http_get_ok(e.url + "/health", e.api_key, 5.0)]
                logger.warning(
                    "weight sync try %d failed (%s); dropping dead engines %s",
                    attempt + 1,
                    error,
                    [e.url for e in dead],
                )
                for endpoint in dead:
                    endpoints.remove(endpoint)
                if not endpoints:
                    raise WeightSyncError(f"no learner engine left to update: {error}") from error

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
