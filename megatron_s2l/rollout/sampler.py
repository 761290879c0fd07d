"""The S2L-PO group sampler: per prompt, G_w explorer and G_s learner samples, both pools at once.

    sampler = S2LGroupSampler(explorer_client, learner_client, rollout_config, t_mix=T_MIX, group_size=G)
    batch = engines.run(sampler.sample(prompts, step))   # RolloutBatch of complete groups of G

`sample` is a coroutine: run it on the event loop of the `RolloutEngines` that own the pools
(`engines.run`), the one loop every client and pool of a run uses.

G_w and G_s come from `megatron_s2l.algo.s2l_split(step, t_mix, group_size)`. Explorer samples come
from the explorer pool, or from a pre-filled `ExplorerCache` when one is given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from megatron_s2l.algo.schedule import s2l_split
from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.config import RolloutConfig
from megatron_s2l.rollout.explorer_cache import ExplorerCache
from megatron_s2l.rollout.loop_thread import LoopThread
from megatron_s2l.rollout.records import (
    Prompt,
    RolloutBatch,
    RolloutGroup,
    RolloutRecord,
    SampleRequest,
    sample_seed,
)


class S2LGroupSampler:
    """Builds complete groups of G samples per prompt for one training step."""

    def __init__(
        self,
        explorer: RolloutClient | None,
        learner: RolloutClient,
        config: RolloutConfig,
        *,
        t_mix: int,
        group_size: int,
        explorer_loop: LoopThread | None = None,
        explorer_cache: ExplorerCache | None = None,
        seed: int | None = None,
    ) -> None:
        if explorer is None and explorer_cache is None and t_mix > 0:
            raise ValueError("t_mix > 0 needs an explorer pool or an explorer cache")
        if (explorer is None) != (explorer_loop is None):
            raise ValueError("an explorer pool's requests run on its own loop: give explorer_loop with it")
        self.explorer, self.learner, self.config = explorer, learner, config
        self.explorer_loop = explorer_loop
        self._prefetched: tuple[int, list[str], concurrent.futures.Future[list[RolloutRecord]]] | None = None
        """(step, prompt ids, explorer samples being generated) of `prefetch_explorer`."""
        self.t_mix, self.group_size = t_mix, group_size
        self.explorer_cache = explorer_cache
        self.seed = seed
        """Run seed of per-sample sampling seeds (None: unseeded sampling)."""

    async def sample(
        self,
        prompts: list[Prompt],
        step: int,
        sampling_round: int = 0,
        counts: tuple[int, int] | None = None,
    ) -> RolloutBatch:
        """Complete groups for `prompts` at `step` (`sampling_round`: the dynamic-sampling round of
        the step, which the sampling seeds include). `counts`: (G_w, G_s) per prompt, e.g. one
        half-step of `schedule.mode: alternating`; by default Algorithm 1's split of the step."""
        g_explorer, g_learner = counts or s2l_split(step, self.t_mix, self.group_size)
        learner_stats_before = self.learner.stats.resent_batches
        explorer_task = self._explorer_samples(prompts, g_explorer, step, sampling_round)
        learner_requests = self._requests(prompts, g_learner, "learner", step, sampling_round)
        learner_task = self.learner.generate(learner_requests, self.config.learner_sampling)
        explorer_records, learner_records = await asyncio.gather(explorer_task, learner_task)
        groups = _assemble_groups(prompts, explorer_records, learner_records, g_explorer, g_learner)
        pool = self.learner.pool
        stale = sum(record.weight_version != pool.weight_version for record in learner_records)
        metrics = {
            "rollout/explorer_samples": float(len(explorer_records)),
            "rollout/learner_samples": float(len(learner_records)),
            "rollout/stale_learner_samples": float(stale),
            "rollout/learner_resent_batches": float(self.learner.stats.resent_batches - learner_stats_before),
            "rollout/learner_server_restarts": float(pool.restarts),
            "rollout/explorer_from_cache": float(self.explorer_cache is not None and g_explorer > 0),
            # Every response token generated this round, kept in the batch or not (rollout compute).
            "rollout/generated_tokens_explorer": float(sum(len(r.response_ids) for r in explorer_records)),
            "rollout/generated_tokens_learner": float(sum(len(r.response_ids) for r in learner_records)),
        }
        return RolloutBatch(
            step=step, g_explorer=g_explorer, g_learner=g_learner, groups=groups, metrics=metrics
        )

    def prefetch_explorer(self, prompts: list[Prompt], step: int, count: int | None = None) -> None:
        """Start generating the explorer samples of `step`'s first sampling round for `prompts` now,
        on the explorer's loop, so that `sample(prompts, step)` finds them (or waits for the rest).
        The same requests and seeds as without prefetch: the samples do not depend on when they are
        made (the explorer is frozen). A no-op without a live explorer or explorer samples at `step`.
        `count`: G_w per prompt, by default Algorithm 1's."""
        count = s2l_split(step, self.t_mix, self.group_size)[0] if count is None else count
        if self.explorer is None or count == 0:
            return
        self._drop_prefetch()
        future = self._submit_explorer(prompts, count, step, 0)
        self._prefetched = (step, [p.prompt_id for p in prompts], future)

    def _drop_prefetch(self) -> None:
        if self._prefetched is not None:
            self._prefetched[2].cancel()
            self._prefetched = None

    def _submit_explorer(
        self, prompts: list[Prompt], count: int, step: int, sampling_round: int
    ) -> concurrent.futures.Future[list[RolloutRecord]]:
        assert self.explorer is not None and self.explorer_loop is not None
        requests = self._requests(prompts, count, "explorer", step, sampling_round)
        return self.explorer_loop.submit(self.explorer.generate(requests, self.config.explorer_sampling))

    async def _explorer_samples(
        self, prompts: list[Prompt], count: int, step: int, sampling_round: int
    ) -> list[RolloutRecord]:
        if count == 0:
            return []
        if self.explorer_cache is not None:
            return [r for p in prompts for r in self.explorer_cache.draw(p.prompt_id, p.input_ids, count)]
        key = (step, [p.prompt_id for p in prompts])
        if sampling_round == 0 and self._prefetched is not None and self._prefetched[:2] == key:
            future, self._prefetched = self._prefetched[2], None
        else:
            self._drop_prefetch()  # made for other prompts or another step: never used
            future = self._submit_explorer(prompts, count, step, sampling_round)
        return await asyncio.wrap_future(future)

    def _requests(
        self, prompts: list[Prompt], count: int, source: str, step: int, sampling_round: int
    ) -> list[SampleRequest]:
        seed = self.seed
        return [
            SampleRequest(
                p.prompt_id,
                i,
                p.input_ids,
                None if seed is None else sample_seed(seed, step, sampling_round, source, p.prompt_id, i),
            )
            for p in prompts
            for i in range(count)
        ]


ADDITIVE_METRICS = frozenset(
    {
        "rollout/explorer_samples",
        "rollout/learner_samples",
        "rollout/stale_learner_samples",
        "rollout/learner_resent_batches",
        "rollout/generated_tokens_explorer",
        "rollout/generated_tokens_learner",
    }
)
"""Per-round counts: a step's value is their sum over its sampling rounds. The other rollout metrics
(cumulative counters such as server restarts, 0/1 flags) take the last round's value."""


def merge_round_metrics(rounds: list[dict[str, float]]) -> dict[str, float]:
    """One step's rollout metrics from those of its sampling rounds (dynamic sampling)."""
    merged = dict(rounds[-1])
    for key in ADDITIVE_METRICS & merged.keys():
        merged[key] = sum(r.get(key, 0.0) for r in rounds)
    return merged


def _assemble_groups(
    prompts: list[Prompt],
    explorer_records: list[RolloutRecord],
    learner_records: list[RolloutRecord],
    g_explorer: int,
    g_learner: int,
) -> list[RolloutGroup]:
    """Group by prompt and check every group is complete, each sample exactly once."""
    by_prompt: dict[str, list[RolloutRecord]] = {p.prompt_id: [] for p in prompts}
    if len(by_prompt) != len(prompts):
        raise ValueError("prompt ids in one batch must be unique")
    for record in [*explorer_records, *learner_records]:
        by_prompt[record.prompt_id].append(record)
    groups = []
    for prompt_id, records in by_prompt.items():
        for source, expected in (("explorer", g_explorer), ("learner", g_learner)):
            indices = sorted(r.sample_index for r in records if r.source == source)
            if indices != list(range(expected)):
                raise RuntimeError(
                    f"prompt {prompt_id!r}: {source} samples {indices}, expected 0..{expected - 1}"
                )
        groups.append(RolloutGroup(prompt_id, records))
    return groups
