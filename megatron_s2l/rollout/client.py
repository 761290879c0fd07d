"""Async client for SGLang's `/generate` over a pool of servers: batched, bounded, retried.

Samples are sent in batches (one POST carries up to `batch_size` samples as a list of `input_ids`,
each with its own request id). A batch counts only when its whole answer arrives, so a batch lost to
a dead or silent server is re-sent in full elsewhere and no sample is lost or counted twice. Samples
that come back with finish reason `abort` (a server that aborted them, e.g. on shutdown) are re-sent
too; only `stop` and `length` reach the caller.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from megatron_s2l.rollout.config import ClientConfig
from megatron_s2l.rollout.http import async_session
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.rollout.records import RolloutRecord, SampleRequest, Source
from megatron_s2l.rollout.sampling_params import SamplingConfig

logger = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """A batch of samples could not be generated within the allowed retries."""


class _ServerFailure(Exception):
    """The server did not answer this request properly (connection error, time-out, 5xx)."""


@dataclass(slots=True)
class ClientStats:
    requests: int = 0
    resent_batches: int = 0


class RolloutClient:
    """Generates `SampleRequest`s on one pool and returns `RolloutRecord`s in request order."""

    def __init__(self, pool: EnginePool, source: Source, config: ClientConfig) -> None:
        self.pool, self.source, self.config = pool, source, config
        self.stats = ClientStats()
        self._semaphore = asyncio.Semaphore(config.max_concurrency)

    async def generate(self, requests: list[SampleRequest], sampling: SamplingConfig) -> list[RolloutRecord]:
        """All `requests`, each answered once with a finished (stop/length) response."""
        if not requests:
            return []
        size = self.config.batch_size
        chunks = [requests[i : i + size] for i in range(0, len(requests), size)]
        async with async_session(self.pool.api_key, self.config.request_timeout_s) as session:
            answers = await asyncio.gather(*(self._generate_chunk(session, c, sampling) for c in chunks))
        return [record for chunk in answers for record in chunk]

    async def _generate_chunk(
        self, session: httpx.AsyncClient, chunk: list[SampleRequest], sampling: SamplingConfig
    ) -> list[RolloutRecord]:
        done: dict[int, RolloutRecord] = {}
        pending = list(range(len(chunk)))
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.stats.resent_batches += 1
            server, generation = self.pool.pick()
            batch = [chunk[i] for i in pending]
            try:
                async with self._semaphore:
                    self.pool.in_flight[server.url] += 1
                    try:
                        outputs = await self._post(session, server.url, batch, sampling)
                    finally:
                        self.pool.in_flight[server.url] -= 1
            except _ServerFailure as error:
                logger.warning("%s: batch of %d failed on %s: %s", self.source, len(batch), server.url, error)
                await self.pool.handle_failure(server, generation, error)
                continue
            aborted = []
            for index, request, output in zip(pending, batch, outputs, strict=True):
                record = self._to_record(request, output)
                if record.finish_reason == "abort":
                    aborted.append(index)
                else:
                    done[index] = record
            pending = aborted
            if not pending:
                return [done[i] for i in range(len(chunk))]
        raise GenerationError(
            f"{self.source}: {len(pending)} of {len(chunk)} samples not generated after "
            f"{self.config.max_retries} retries (pool {self.pool.name}: {self.pool.urls})"
        )

    async def _post(
        self, session: httpx.AsyncClient, url: str, batch: list[SampleRequest], sampling: SamplingConfig
    ) -> list[dict[str, Any]]:
        payload = {
            "input_ids": [request.input_ids for request in batch],
            "sampling_params": [sampling.to_sglang(seed=request.seed) for request in batch],
            "return_logprob": True,
            "logprob_start_len": -1,
            "rid": [uuid.uuid4().hex for _ in batch],
        }
        self.stats.requests += 1
        try:
            response = await session.post(url + "/generate", json=payload)
        except httpx.HTTPError as error:  # time-outs, refused or dropped connections
            raise _ServerFailure(f"{type(error).__name__}: {error}") from error
        if response.status_code >= 500:
            raise _ServerFailure(f"HTTP {response.status_code}: {response.text[:300]}")
        if response.status_code != 200:
            # A 4xx is our request's fault: re-sending it elsewhere would not help.
            raise GenerationError(f"{url}/generate answered {response.status_code}: {response.text}")
        try:
            outputs = response.json()
        except ValueError as error:  # a truncated body
            raise _ServerFailure(f"unreadable answer: {error}") from error
        if len(outputs) != len(batch):
            raise _ServerFailure(f"{len(outputs)} answers for {len(batch)} samples")
        return outputs

    def _to_record(self, request: SampleRequest, output: dict[str, Any]) -> RolloutRecord:
        meta = output["meta_info"]
        finish = meta.get("finish_reason") or {"type": "abort"}
        token_logprobs = meta.get("output_token_logprobs") or []
        return RolloutRecord(
            prompt_id=request.prompt_id,
            sample_index=request.sample_index,
            source=self.source,
            prompt_ids=list(request.input_ids),
            response_ids=list(output["output_ids"]),
            logprobs=[float(entry[0]) for entry in token_logprobs],
            finish_reason=finish["type"],
            weight_version=str(meta.get("weight_version", "")),
        )
