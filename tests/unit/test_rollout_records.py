"""Sampling config, group assembly, explorer cache and tokenizer check (no server)."""

from __future__ import annotations

import pytest

from megatron_s2l.demo.tiny import make_tokenizer
from megatron_s2l.rollout.explorer_cache import (
    ExplorerCache,
    ExplorerCacheExhaustedError,
    write_explorer_cache,
)
from megatron_s2l.rollout.records import Prompt, RolloutRecord
from megatron_s2l.rollout.sampler import _assemble_groups
from megatron_s2l.rollout.sampling_params import SamplingConfig, default_explorer_sampling
from megatron_s2l.rollout.tokenizer_check import TokenizerMismatchError, check_same_tokenizer


def _record(
    prompt_id: str, index: int, source: str = "explorer", tokens: list[int] | None = None
) -> RolloutRecord:
    return RolloutRecord(
        prompt_id=prompt_id,
        sample_index=index,
        source=source,
        prompt_ids=[1, 2],
        response_ids=tokens or [index, 9],
        logprobs=[-0.5, -0.1],
        finish_reason="stop",
        weight_version="default",
    )


def test_sampling_config_to_sglang_and_validation() -> None:
    params = SamplingConfig(temperature=0.0, top_k=5, max_new_tokens=7, stop=["\n\n"]).to_sglang()
    assert params == {"temperature": 0.0, "top_p": 1.0, "top_k": 5, "max_new_tokens": 7, "stop": ["\n\n"]}
    explorer = default_explorer_sampling()
    assert (explorer.temperature, explorer.top_p) == (0.7, 0.95)
    for kwargs, field in (
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"temperature": -1}, "temperature"),
    ):
        with pytest.raises(ValueError, match=field):
            SamplingConfig(**kwargs)


def test_assemble_groups_rejects_missing_or_duplicate_samples() -> None:
    prompts = [Prompt("a", [1, 2]), Prompt("b", [1, 2])]
    explorer = [_record("a", 0), _record("b", 0)]
    learner = [
        _record("a", 0, "learner"),
        _record("a", 1, "learner"),
        _record("b", 0, "learner"),
        _record("b", 1, "learner"),
    ]
    groups = _assemble_groups(prompts, explorer, learner, 1, 2)
    assert [
        (g.prompt_id, *(sum(r.source == s for r in g.records) for s in ("explorer", "learner")))
        for g in groups
    ] == [
        ("a", 1, 2),
        ("b", 1, 2),
    ]
    with pytest.raises(RuntimeError, match="learner samples"):
        _assemble_groups(prompts, explorer, [*learner[:3], _record("b", 0, "learner")], 1, 2)  # b: 0 twice
    with pytest.raises(RuntimeError, match="explorer samples"):
        _assemble_groups(prompts, explorer[:1], learner, 1, 2)


def test_explorer_cache_draws_without_replacement(tmp_path) -> None:
    path = tmp_path / "cache.jsonl"
    write_explorer_cache(path, [_record("a", i, tokens=[100 + i]) for i in range(5)] + [_record("b", 0)])
    cache = ExplorerCache(path, seed=3)
    first = cache.draw("a", [1, 2], 2)
    second = cache.draw("a", [1, 2], 3)
    drawn = [r.response_ids[0] for r in [*first, *second]]
    assert sorted(drawn) == [100, 101, 102, 103, 104]  # each cached sample exactly once
    assert [r.sample_index for r in second] == [0, 1, 2] and all(r.source == "explorer" for r in second)
    with pytest.raises(ExplorerCacheExhaustedError, match="0 unused samples of prompt 'a'"):
        cache.draw("a", [1, 2], 1)
    with pytest.raises(ValueError, match="other tokens"):
        cache.draw("b", [7, 7], 1)


def test_explorer_cache_position_survives_a_restart(tmp_path) -> None:
    """A cache rebuilt from the same file and seed, given the saved position, draws exactly the
    samples the first one had not drawn (twice in a row); a file that changed since is refused."""
    path = tmp_path / "cache.jsonl"
    write_explorer_cache(
        path, [_record(p, i, tokens=[100 * n + i]) for n, p in enumerate("ab") for i in range(6)]
    )
    cache = ExplorerCache(path, seed=5)
    before = [r.response_ids[0] for r in cache.draw("a", [1, 2], 2) + cache.draw("b", [1, 2], 1)]
    state = cache.state_dict()
    for _ in range(2):
        resumed = ExplorerCache(path, seed=5)
        resumed.load_state_dict(state)
        assert (resumed.remaining("a"), resumed.remaining("b")) == (4, 5)
        after = [r.response_ids[0] for r in resumed.draw("a", [1, 2], 4) + resumed.draw("b", [1, 2], 5)]
        assert sorted(before + after) == [*range(6), *range(100, 106)]  # each sample exactly once
        with pytest.raises(ExplorerCacheExhaustedError):
            resumed.draw("a", [1, 2], 1)
    write_explorer_cache(path, [_record("a", 9)])
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        ExplorerCache(path, seed=5).load_state_dict(state)


def test_tokenizer_check(tmp_path) -> None:
    make_tokenizer(tmp_path / "a", seed=0)
    make_tokenizer(tmp_path / "same", seed=0)
    make_tokenizer(tmp_path / "other", vocab_size=400, seed=0)
    check_same_tokenizer(tmp_path / "a", tmp_path / "same")
    with pytest.raises(TokenizerMismatchError, match="vocabulary: sizes 512 vs 400"):
        check_same_tokenizer(tmp_path / "a", tmp_path / "other")


def test_sampling_round_is_part_of_the_sample_seed() -> None:
    """A prompt drawn again in a later dynamic-sampling round of the same step gets new samples."""
    from megatron_s2l.rollout.records import sample_seed

    first = sample_seed(7, 3, 0, "learner", "train-5", 1)
    assert first == sample_seed(7, 3, 0, "learner", "train-5", 1)  # stable (resume, re-sends)
    assert first != sample_seed(7, 3, 1, "learner", "train-5", 1)
    assert 0 <= first < 2**63


def test_round_metrics_add_counts_and_keep_counters_and_flags() -> None:
    """Dynamic sampling merges its rounds: sample counts add up, while a cumulative counter (server
    restarts so far) and a 0/1 flag keep their last value instead of being summed."""
    from megatron_s2l.rollout.sampler import merge_round_metrics

    rounds = [
        {
            "rollout/learner_samples": 8.0,
            "rollout/explorer_samples": 4.0,
            "rollout/learner_resent_batches": 1.0,
            "rollout/stale_learner_samples": 0.0,
            "rollout/learner_server_restarts": 2.0,
            "rollout/explorer_from_cache": 1.0,
        },
        {
            "rollout/learner_samples": 8.0,
            "rollout/explorer_samples": 4.0,
            "rollout/learner_resent_batches": 0.0,
            "rollout/stale_learner_samples": 3.0,
            "rollout/learner_server_restarts": 3.0,
            "rollout/explorer_from_cache": 1.0,
        },
    ]
    merged = merge_round_metrics(rounds)
    assert merged["rollout/learner_samples"] == 16 and merged["rollout/explorer_samples"] == 8
    assert merged["rollout/learner_resent_batches"] == 1 and merged["rollout/stale_learner_samples"] == 3
    assert merged["rollout/learner_server_restarts"] == 3.0  # cumulative: the last value, not 5
    assert merged["rollout/explorer_from_cache"] == 1.0  # a flag: not 2
