"""S2L group sampler on real CPU SGLang servers: exact G_w/G_s per prompt, each sample from its pool."""

from __future__ import annotations

import dataclasses
import random

import pytest
from rollout_reference import LOGPROB_ATOL, hf_token_logprobs

from megatron_s2l.algo.schedule import s2l_split
from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.rollout.records import Prompt
from megatron_s2l.rollout.sampler import S2LGroupSampler
from megatron_s2l.rollout.sampling_params import SamplingConfig
from megatron_s2l.rollout.tokenizer_check import TokenizerMismatchError

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

T_MIX, GROUP_SIZE = 4, 5


def _prompts(count: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    return [Prompt(f"p{i}", [rng.randrange(3, 400) for _ in range(rng.randint(3, 9))]) for i in range(count)]


def test_sampler_returns_exact_split_at_each_step(rollout_engines: RolloutEngines) -> None:
    sampler = rollout_engines.build_sampler(t_mix=T_MIX, group_size=GROUP_SIZE)
    prompts = _prompts(3, seed=random.randrange(10**6))
    for step in (1, 2, 3, T_MIX, T_MIX + 2):
        g_explorer, g_learner = s2l_split(step, T_MIX, GROUP_SIZE)
        batch = rollout_engines.run(sampler.sample(prompts, step))
        assert (batch.g_explorer, batch.g_learner) == (g_explorer, g_learner)
        assert [group.prompt_id for group in batch.groups] == [p.prompt_id for p in prompts]
        for prompt, group in zip(prompts, batch.groups, strict=True):
            assert len(group.records) == GROUP_SIZE
            for source, count in (("explorer", g_explorer), ("learner", g_learner)):
                indices = sorted(r.sample_index for r in group.records if r.source == source)
                assert indices == list(range(count)), (step, source)
            for record in group.records:
                assert record.prompt_ids == prompt.input_ids
                assert record.finish_reason in ("stop", "length")
                assert 1 <= len(record.response_ids) <= 8
                assert len(record.logprobs) == len(record.response_ids)
        assert batch.metrics["rollout/explorer_samples"] == g_explorer * len(prompts)
        assert batch.metrics["rollout/learner_samples"] == g_learner * len(prompts)
        assert batch.metrics["rollout/stale_learner_samples"] == 0


def test_prefetched_explorer_samples_are_made_in_the_background_and_used(
    rollout_engines: RolloutEngines,
) -> None:
    """`prefetch_explorer` generates a step's explorer samples on the explorer's own loop while
    this thread runs no event loop at all (as while the learner trains); `sample` then uses exactly
    those samples (they are not generated again) and completes the groups with learner samples. Two
    steps in a row at 4x the client's limit; a prefetch made for other prompts is dropped."""
    client = rollout_engines.config.client
    limit = client.batch_size * client.max_concurrency
    prompts = _prompts(8, seed=random.randrange(10**6))
    sampler = rollout_engines.build_sampler(t_mix=3, group_size=16, seed=11)
    for step in (1, 2):
        g_w, g_s = s2l_split(step, 3, 16)
        assert g_w * len(prompts) >= 4 * limit
        sampler.prefetch_explorer(prompts, step)
        ahead = sampler._prefetched[2].result(timeout=300)  # made with no loop running on this thread
        batch = rollout_engines.run(sampler.sample(prompts, step))
        assert sampler._prefetched is None  # taken
        explorer = [r for g in batch.groups for r in g.records if r.source == "explorer"]
        assert len(explorer) == g_w * len(prompts) and all(
            a is b for a, b in zip(explorer, ahead, strict=True)
        )
        assert batch.metrics["rollout/learner_samples"] == g_s * len(prompts)
    other = _prompts(2, seed=1)
    sampler.prefetch_explorer(prompts, 2)
    batch = rollout_engines.run(sampler.sample(other, 2))
    assert {r.prompt_id for g in batch.groups for r in g.records} == {p.prompt_id for p in other}
    assert sampler._prefetched is None


def test_consecutive_steps_far_past_the_client_limits(rollout_engines: RolloutEngines) -> None:
    """Each pool gets at least 4x batch_size x max_concurrency samples, in two steps in a row: the
    concurrency limit has to wait in both, on the engines' one event loop."""
    client = rollout_engines.config.client
    limit = client.batch_size * client.max_concurrency
    sampler = rollout_engines.build_sampler(t_mix=3, group_size=16)
    prompts = _prompts(8, seed=random.randrange(10**6))
    for step, (g_w, g_s) in ((2, (8, 8)), (4, (0, 16))):
        assert s2l_split(step, 3, 16) == (g_w, g_s)
        assert all(count * len(prompts) >= 4 * limit for count in (g_w, g_s) if count)
        batch = rollout_engines.run(sampler.sample(prompts, step))
        assert batch.metrics["rollout/explorer_samples"] == g_w * len(prompts)
        assert batch.metrics["rollout/learner_samples"] == g_s * len(prompts)
        for group in batch.groups:
            assert len(group.records) == 16
            for source, count in (("explorer", g_w), ("learner", g_s)):
                assert sorted(r.sample_index for r in group.records if r.source == source) == list(
                    range(count)
                )


def test_each_sample_comes_from_its_own_model(rollout_engines: RolloutEngines, tiny_models) -> None:
    """An engine's log-probs (temperature 1, no truncation) equal its own model's, not the other's."""
    config = dataclasses.replace(
        rollout_engines.config,
        explorer_sampling=SamplingConfig(temperature=1.0, max_new_tokens=6),
        learner_sampling=SamplingConfig(temperature=1.0, max_new_tokens=6),
    )
    live = rollout_engines.build_sampler(t_mix=3, group_size=4)
    sampler = S2LGroupSampler(
        live.explorer, live.learner, config, t_mix=3, group_size=4, explorer_loop=live.explorer_loop
    )
    prompts = _prompts(2, seed=random.randrange(10**6))
    batch = rollout_engines.run(sampler.sample(prompts, step=2))  # G_w = 2, G_s = 2
    for group in batch.groups:
        for record in group.records:
            own = tiny_models[record.source]
            other = tiny_models["learner" if record.source == "explorer" else "explorer"]
            expected = hf_token_logprobs(own, record.prompt_ids, record.response_ids)
            assert record.logprobs == pytest.approx(expected, abs=LOGPROB_ATOL), record.source
            wrong = hf_token_logprobs(other, record.prompt_ids, record.response_ids)
            assert max(abs(a - b) for a, b in zip(record.logprobs, wrong, strict=True)) > 1e-2


def test_mismatched_tokenizers_fail_before_any_server_starts(rollout_engines, tiny_models, tmp_path) -> None:
    engines = RolloutEngines(
        dataclasses.replace(rollout_engines.config, log_dir=str(tmp_path)),
        explorer_model=tiny_models["mismatched"],
        learner_model=tiny_models["learner"],
    )
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ in their vocabulary"):
        engines.start()
    assert all(server.pid is None for server in [*engines.explorer.servers, *engines.learner.servers])
